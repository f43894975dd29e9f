"""Advantage estimators: pure functions from a batch's rewards to advantages, chosen by name (``--advantage``).

Each takes ``rewards`` of shape ``(P, G)`` (P prompts, G samples each: the whole batch, every process's prompts) and
``lengths``, the completions' token counts ``(P, G)`` (read only by the estimators whose statistics are over tokens),
and returns ``(P, G)``. A NaN reward is a completion no reward could judge: it is left out of every mean and std and
its advantage is 0 (TRL likewise turns an unjudged reward into NaN and leaves it out of its group's statistics).

Group estimators compare a completion with the other samples of its prompt; batch estimators also scale (or centre)
by the whole batch, which is why the trainer gives them every process's rewards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}
#: one line per estimator, for ``r1lab zero --help``
ADVANTAGE_HELP: dict[str, str] = {}


def _register(name: str, help: str):
    def wrap(fn):
        ADVANTAGES[name], ADVANTAGE_HELP[name] = fn, help
        return fn
    return wrap


@_register("grpo", "(r - group mean) / group std (DeepSeekMath, R1)")
def group_zscore(rewards: torch.Tensor, eps: float = 1e-4, **_) -> torch.Tensor:
    """GRPO (DeepSeekMath, R1): A_i = (r_i - mean(r)) / (std(r) + eps) within each group (sample std).

    >>> [round(a, 4) for a in group_zscore(torch.tensor([[1., 0., 0., 1.]]), eps=0)[0].tolist()]
    [0.866, -0.866, -0.866, 0.866]
    """
    if rewards.isnan().any():
        return _skipping_unjudged(group_zscore, rewards, eps=eps)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


@_register("drgrpo", "r - group mean, no std (Dr. GRPO, Liu et al. 2025)")
def group_mean(rewards: torch.Tensor, **_) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean(r), no division by the
    group's std (which up-weights prompts that are nearly always or nearly never solved).

    >>> group_mean(torch.tensor([[1., 0., 0., 0.]])).tolist()
    [[0.75, -0.25, -0.25, -0.25]]
    """
    if rewards.isnan().any():
        return _skipping_unjudged(group_mean, rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)


@_register("rloo", "r - mean of the group's other samples (RLOO, Ahmadian et al. 2024)")
def leave_one_out(rewards: torch.Tensor, **_) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"; verl's ``rloo``): each sample's baseline is the
    mean of the *other* samples of its prompt, A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean(r)). A group
    of one judged sample has no other to compare with: 0.

    >>> leave_one_out(torch.tensor([[1., 0., 0., 0.]])).tolist()   # 1 - 0;  0 - 1/3
    [[1.0, -0.3333333432674408, -0.3333333432674408, -0.3333333432674408]]
    """
    if rewards.isnan().any():
        return _skipping_unjudged(leave_one_out, rewards)
    G = rewards.shape[1]
    if G < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean(dim=1, keepdim=True)) * G / (G - 1)


@_register("batch_std", "(r - group mean) / std of the batch's rewards (Lite PPO; TRL scale_rewards='batch')")
def batch_zscore(rewards: torch.Tensor, eps: float = 1e-4, **_) -> torch.Tensor:
    """Group mean as the baseline, the standard deviation of the whole batch's *rewards* as the scale: "group-level
    mean, batch-level std" of Lite PPO (Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM Reasoning"),
    which is TRL's ``scale_rewards="batch"``. (REINFORCE++'s normalisation is another thing: the mean and std of the
    advantages themselves, over the batch's tokens: :func:`reinforce_plus_plus`.)

    >>> [round(a, 4) for a in batch_zscore(torch.tensor([[1., 0.], [1., 1.]]), eps=0).flatten().tolist()]
    [1.0, -1.0, 0.0, 0.0]
    """
    judged = ~rewards.isnan()
    kept = rewards[judged]
    scale = kept.std() + eps if kept.numel() > 1 else torch.tensor(1.0)
    return group_mean(rewards) / scale


@_register("reinforce_plus_plus", "(r - batch mean) / batch std, over the batch's tokens (REINFORCE++, Hu 2025)")
def reinforce_plus_plus(rewards: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-8,
                        **_) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262; verl's ``reinforce_plus_plus``) with an outcome reward and no KL in the
    reward: every token of a completion has the return r, and the advantages are whitened over the global batch,
    A = (r - mean) / sqrt(var + eps), mean and (unbiased) variance taken over the batch's *tokens* (a completion of n
    tokens counts n times, as verl's ``masked_whiten``; each counts once without ``lengths``). No group baseline.

    >>> [round(a, 4) for a in reinforce_plus_plus(torch.tensor([[1., 0.], [1., 1.]]), eps=0).flatten().tolist()]
    [0.5, -1.5, 0.5, 0.5]
    >>> [round(a, 4) for a in reinforce_plus_plus(torch.tensor([[1., 0.]]), torch.tensor([[2, 1]]), eps=0)[0].tolist()]
    [0.5774, -1.1547]
    """
    return _whiten(rewards, lengths, eps)


@_register("reinforce_plus_plus_baseline",
           "r - group mean, then whitened over the batch's tokens (REINFORCE++-baseline, Hu 2025)")
def reinforce_plus_plus_baseline(rewards: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-8,
                                 **_) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, for several samples per prompt; verl's ``reinforce_plus_plus_baseline``): the
    group mean is subtracted first, then the result is whitened over the batch's tokens as
    :func:`reinforce_plus_plus` does.

    >>> r = torch.tensor([[1., 0.], [1., 1.]])
    >>> [round(a, 4) for a in reinforce_plus_plus_baseline(r, eps=0).flatten().tolist()]
    [1.2247, -1.2247, 0.0, 0.0]
    """
    centred = group_mean(rewards).masked_fill(rewards.isnan(), float("nan"))  # the unjudged stay out of the batch
    return _whiten(centred, lengths, eps)


def _whiten(values: torch.Tensor, lengths: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``(values - mean) / sqrt(var + eps)`` over the judged entries, each weighted by its token count (unbiased
    variance over the tokens); unjudged (NaN) entries get 0."""
    judged = ~values.isnan()
    weights = (torch.ones_like(values) if lengths is None else lengths.to(values.dtype).clamp(min=1))[judged]
    kept, n = values[judged], weights.sum()
    if n <= 1:
        return torch.zeros_like(values)
    mean = (kept * weights).sum() / n
    var = ((kept - mean) ** 2 * weights).sum() / n * n / (n - 1)
    out = torch.zeros_like(values)
    out[judged] = (kept - mean) / torch.sqrt(var + eps)
    return out


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
