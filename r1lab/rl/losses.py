"""The GRPO objective as small pure functions over flat token tensors.

Tokens of every completion in a batch are laid out flat, shape ``(N,)``: the trainer packs sequences
without padding, so there is no ``(B, T)`` mask to carry. How tokens are averaged (per token over the
batch, or per sequence first) is folded into a weight per token, ``token_weights``, so the loss is always
``sum(per_token_loss * weights)`` and gradient accumulation over micro-batches is exact.
"""

from __future__ import annotations

import torch


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The R1 / DeepSeekMath KL estimator, per token: pi_ref/pi - log(pi_ref/pi) - 1 (>= 0, unbiased).

    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item()
    0.0
    >>> round(kl_k3(torch.tensor([0.0]), torch.tensor([-1.0])).item(), 6)  # e^-1 + 1 - 1
    0.367879
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a per-token loss (to minimise), with DAPO's separate clip bounds.

    Shapes: all ``(N,)``; ``advantages`` is the sequence's advantage repeated on each of its tokens.
    Returns ``(loss, clipped)`` where ``clipped`` marks tokens whose clipped term was the active one.

    >>> loss, clipped = clipped_surrogate(torch.log(torch.tensor([1.5])), torch.zeros(1), torch.ones(1), 0.2, 0.28)
    >>> round(loss.item(), 4), clipped.tolist()   # ratio 1.5 is clipped to 1.28 for a positive advantage
    (-1.28, [True])
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, clipped < unclipped


LOSS_AGGREGATIONS = ("token", "sequence")


def token_weights(lengths: list[int], mode: str) -> torch.Tensor:
    """Per-token weights that turn a sum into the chosen average over a batch of sequences.

    ``token``: every token of the batch counts the same (DAPO, Dr. GRPO); ``sequence``: average within each
    sequence, then over sequences (the original GRPO formula).

    >>> token_weights([1, 3], "token").tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> token_weights([1, 3], "sequence").tolist()
    [0.5, 0.1666666716337204, 0.1666666716337204, 0.1666666716337204]
    """
    total, count = sum(lengths), len(lengths)
    if mode == "token":
        return torch.full((total,), 1.0 / max(total, 1))
    if mode == "sequence":
        return torch.cat([torch.full((n,), 1.0 / (n * count)) for n in lengths]) if lengths else torch.zeros(0)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor | None:
    """Truncated importance sampling (TIS; Yao et al. 2025, as verl's ``tis_imp_ratio_cap``): the engine that
    sampled (bf16, other kernels) is not exactly the policy the trainer computes, so each token's surrogate is
    weighted by ``min(pi_old / pi_sampler, cap)``, detached. Shapes ``(N,)``; ``cap`` 0 turns it off (None).

    >>> truncated_is_weights(torch.tensor([-1.0, 0.0]), torch.tensor([-1.0, -2.0]), 2.0).tolist()
    [1.0, 2.0]
    """
    if not cap:
        return None
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              weights: torch.Tensor, clip_low: float, clip_high: float, beta: float = 0.0,
              ref_logprobs: torch.Tensor | None = None,
              sampler_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss = weighted sum of (clipped surrogate [x ``sampler_weights``, see :func:`truncated_is_weights`]
    + beta * KL); returns it with detached statistics."""
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low, clip_high)
    if sampler_weights is not None:
        per_token = per_token * sampler_weights
    stats = {"clip_frac": (clipped.float() * weights).sum().detach()}
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + beta * kl
        stats["kl"] = (kl * weights).sum().detach()
    return (per_token * weights).sum(), stats
