"""Advantage estimators: pure functions from group rewards to advantages, chosen by name.

Each takes ``rewards`` of shape ``(P, G)`` (P prompts, G samples each) and returns ``(P, G)``. A NaN reward is a
completion no reward could judge: it is left out of every mean and std and its advantage is 0 (TRL likewise turns
an unjudged reward into NaN and leaves it out of its group's statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def _register(name):
    def wrap(fn):
        ADVANTAGES[name] = fn
        return fn
    return wrap


@_register("grpo")
def group_zscore(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (DeepSeekMath, R1): A_i = (r_i - mean(r)) / std(r) within each group (sample std).

    >>> [round(a, 4) for a in group_zscore(torch.tensor([[1., 0., 0., 1.]]), eps=0)[0].tolist()]
    [0.866, -0.866, -0.866, 0.866]
    """
    if rewards.isnan().any():
        return _skipping_unjudged(group_zscore, rewards, eps=eps)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


@_register("drgrpo")
def group_mean(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: A_i = r_i - mean(r), no division by the group's std (which up-weights easy/hard prompts).

    >>> group_mean(torch.tensor([[1., 0., 0., 0.]])).tolist()
    [[0.75, -0.25, -0.25, -0.25]]
    """
    if rewards.isnan().any():
        return _skipping_unjudged(group_mean, rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)


@_register("batch_std")
def batch_zscore(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group mean as baseline, scaled by the std of the whole batch ("Lite PPO" / REINFORCE++ style).

    >>> [round(a, 4) for a in batch_zscore(torch.tensor([[1., 0.], [1., 1.]]), eps=0).flatten().tolist()]
    [1.2247, -1.2247, 0.0, 0.0]
    """
    judged = ~rewards.isnan()
    if not judged.all():
        centred = _skipping_unjudged(group_mean, rewards)
        kept = centred[judged]
        return centred / (kept.std() + eps) if kept.numel() > 1 else centred
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (centred.std() + eps) if centred.numel() > 1 else centred


def _skipping_unjudged(estimator, rewards: torch.Tensor, **kwargs) -> torch.Tensor:
    """A group estimator over each group's judged rewards alone (the NaNs left out), 0 for the unjudged.

    >>> [round(a, 3) for a in group_zscore(torch.tensor([[1., 0., float("nan")]]), eps=0)[0].tolist()]
    [0.707, -0.707, 0.0]
    """
    out = torch.zeros_like(rewards)
    for i, row in enumerate(rewards):  # (G,)
        judged = ~row.isnan()
        if judged.any():
            out[i, judged] = estimator(row[judged].unsqueeze(0), **kwargs)[0]
    return out


def get_advantage(name: str) -> Callable[..., torch.Tensor]:
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {', '.join(ADVANTAGES)}")
    return ADVANTAGES[name]
