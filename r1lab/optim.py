"""The optimiser and learning-rate schedule shared by GRPO and SFT: AdamW over the trainable parameters, linear
warmup, then cosine or linear decay to a floor, or constant."""

from __future__ import annotations

import math
from functools import partial

import torch

LR_SCHEDULES = ("cosine", "linear", "constant")


def make_optimizer(model, lr: float, weight_decay: float, warmup: int, total: int, schedule: str):
    """``(optimizer, scheduler)``: AdamW (betas 0.9, 0.99) on the parameters that require grad, and the
    :func:`lr_factor` schedule over ``total`` steps (call ``scheduler.step()`` after each optimizer step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup, total=total,
                                                                     schedule=schedule))
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, total: int, schedule: str, floor: float = 0.1) -> float:
    """Linear warmup, then cosine or linear decay to ``floor`` of the peak, or constant.

    >>> [round(lr_factor(s, 2, 10, "cosine"), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.1]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def clip_and_step(model, optimizer, max_grad_norm: float) -> float:
    """Clip the gradient of the trainable parameters to ``max_grad_norm`` and take the optimizer step; returns the
    norm before clipping. The caller clears the gradients (``optimizer.zero_grad``) where its loop needs it."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    return float(norm)
