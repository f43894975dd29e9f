"""How GRPO and SFT train: AdamW over the trainable parameters, linear warmup then cosine or linear decay to a
floor (or constant), gradient clipping, and the precision a training pass computes in.

Precision is mixed in the standard way (PyTorch AMP, as TRL/accelerate and verl's FSDP workers do): the weights and
AdamW's state stay fp32 ("master weights") and the forward and backward passes run under ``torch.autocast`` in bf16
(or fp16, with a dynamic loss scale). bf16 gets the tensor cores; fp32 updates keep small steps (lr 1e-6 x a
weight near 1) from rounding away, which pure-bf16 weights would do. Training in fp32 on the CPU goes through
oneDNN's products instead (:mod:`r1lab.engine.onednn`).
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch

from r1lab.engine.onednn import onednn_linears

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


def loss_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """A dynamic loss scale for fp16 training (its small exponent range underflows gradients); for any other
    precision a disabled one, whose ``scale(loss)`` is ``loss`` and whose ``step`` is ``optimizer.step()``."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


@contextlib.contextmanager
def precision(model, dtype: torch.dtype):
    """Within the block, the training passes of ``model`` (fp32 weights) compute in ``dtype``: autocast for bf16 and
    fp16; for fp32, oneDNN's products on the CPU (2x MKL's on AMD) and plain fp32 elsewhere."""
    device_type = next(model.parameters()).device.type
    if dtype == torch.float32:
        with onednn_linears(model):
            yield
    else:
        with torch.autocast(device_type, dtype=dtype):
            yield


def clip_and_step(model, optimizer, max_grad_norm: float, scaler: torch.amp.GradScaler | None = None) -> float:
    """Clip the gradient of the trainable parameters to ``max_grad_norm`` and take the optimizer step; returns the
    norm before clipping. With an enabled ``scaler`` (fp16) the gradients are unscaled first, and a step whose
    gradients overflowed is skipped. The caller clears the gradients (``optimizer.zero_grad``) where its loop
    needs it."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: the norm over every shard
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(norm)
