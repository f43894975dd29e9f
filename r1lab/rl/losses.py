"""The GRPO objective as small pure functions over flat token tensors.

Tokens of every completion in a batch are laid out flat, shape ``(N,)``: the trainer packs sequences
without padding, so there is no ``(B, T)`` mask to carry; ``sequences`` ``(N,)`` says which completion each token
belongs to where a loss needs it (GSPO's sequence ratio, the off-policy mask). How tokens are averaged is folded
into a weight per token (:func:`token_weights`), so the loss is always ``sum(per_token_loss * weights)`` and
gradient accumulation over micro-batches is exact.

Two settings shape the loss, as in TRL and verl:

- ``loss_type`` (:data:`LOSS_TYPES`), the per-token objective: the PPO clipped ratio (GRPO), GSPO's sequence ratio,
  CISPO's clipped and detached importance weight on a REINFORCE term;
- ``loss_aggregation`` (:data:`LOSS_AGGREGATIONS`), how token losses become one number: TRL's ``loss_type`` values
  ``dapo``, ``grpo``, ``dr_grpo`` and ``bnpo`` are ``token``, ``sequence``, ``constant`` and ``micro_batch`` here.

On top: a KL term (beta), truncated importance sampling against the sampler (TIS), DeepSeek-V3.2's off-policy
sequence mask, the high-entropy token mask (only the top share of tokens by entropy get gradient) and an entropy
bonus; all in :func:`grpo_loss`, with the settings in one :class:`Objective`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


# ------------------------------------------------------------------------------------------- the objectives
def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float, sequences: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a per-token loss (to minimise), with DAPO's separate clip bounds (``grpo``).

    Shapes: all ``(N,)``; ``advantages`` is the sequence's advantage repeated on each of its tokens.
    Returns ``(loss, clipped)`` where ``clipped`` marks tokens whose clipped term was the active one.

    >>> loss, clipped = clipped_surrogate(torch.log(torch.tensor([1.5])), torch.zeros(1), torch.ones(1), 0.2, 0.28)
    >>> round(loss.item(), 4), clipped.tolist()   # ratio 1.5 is clipped to 1.28 for a positive advantage
    (-1.28, [True])
    """
    return _clipped(torch.exp(logprobs - old_logprobs), advantages, clip_low, clip_high)


def _clipped(ratio, advantages, clip_low, clip_high):
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def sequence_ratio_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                             clip_low: float, clip_high: float, sequences: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (Zheng et al. 2025, Qwen3, arXiv 2507.18071; TRL's ``importance_sampling_level="sequence"``): the
    importance ratio of a whole completion, s_i = exp(mean_t (log pi - log pi_old)) (length-normalised), clipped as
    PPO clips a token's. Every token of completion i carries its sequence's loss; the ``sequence`` aggregation
    then counts each completion once, as the paper's objective does. The paper's clip range is tiny (3e-4, 4e-4).

    >>> lp, old = torch.log(torch.tensor([1.5, 1.0, 0.9])), torch.zeros(3)
    >>> loss, _ = sequence_ratio_surrogate(lp, old, torch.tensor([1., 1., 1.]), 0.2, 0.2, torch.tensor([0, 0, 1]))
    >>> [round(x, 4) for x in loss.tolist()]   # s_0 = sqrt(1.5) = 1.2247 clipped to 1.2; s_1 = 0.9
    [-1.2, -1.2, -0.9]
    """
    if sequences is None:
        raise ValueError("the sequence-level ratio (gspo) needs each token's sequence")
    log_ratio = _sequence_means(logprobs - old_logprobs, sequences)  # (N,) each token its sequence's mean
    return _clipped(torch.exp(log_ratio), advantages, clip_low, clip_high)


def clipped_weight_reinforce(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                             clip_low: float, clip_high: float, sequences: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585; TRL's ``cispo``): a REINFORCE term whose importance weight is clipped and
    detached, -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi. Unlike PPO's clip, no token loses its gradient:
    the weight is bounded, the token still learns. MiniMax sets no lower bound (``clip_low`` >= 1) and tunes the upper
    one; TRL's ``epsilon_high`` for cispo is the bound itself (5.0 there is ``clip_high`` 4.0 here).

    >>> lp = torch.log(torch.tensor([2.0, 1.0]))
    >>> loss, clipped = clipped_weight_reinforce(lp, torch.zeros(2), torch.tensor([1., -1.]), 1.0, 0.5)
    >>> [round(x, 4) for x in loss.tolist()], clipped.tolist()   # weight min(2, 1.5) = 1.5 on -log 2; 1 on +log 1
    ([-1.0397, 0.0], [True, False])
    """
    ratio = torch.exp(logprobs - old_logprobs)
    weight = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
    return -weight * advantages * logprobs, weight != ratio.detach()


#: loss_type -> the per-token objective; one line each for ``r1lab zero --help``
LOSS_TYPES = {"grpo": clipped_surrogate, "gspo": sequence_ratio_surrogate, "cispo": clipped_weight_reinforce}
LOSS_TYPE_HELP = {
    "grpo": "PPO's clipped token ratio, clip_low/clip_high (GRPO, DAPO)",
    "gspo": "the clipped length-normalised ratio of the whole sequence (GSPO, Qwen3)",
    "cispo": "REINFORCE weighted by the clipped, detached token ratio (CISPO, MiniMax-M1; clip_low 1: no lower bound)",
}


def _sequence_means(values: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """Each token's sequence's mean of ``values`` (differentiable), shape ``(N,)``.

    >>> _sequence_means(torch.tensor([1., 3., 5.]), torch.tensor([0, 0, 1])).tolist()
    [2.0, 2.0, 5.0]
    """
    count = int(sequences.max()) + 1 if sequences.numel() else 0
    sums = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, sequences, values)
    sizes = torch.bincount(sequences, minlength=count).clamp(min=1).to(values.dtype)
    return (sums / sizes)[sequences]


# ------------------------------------------------------------------------------------------------- weights
LOSS_AGGREGATIONS = ("token", "sequence", "constant", "micro_batch")
LOSS_AGGREGATION_HELP = {
    "token": "every token of the batch counts the same (DAPO; TRL's dapo)",
    "sequence": "mean within each completion, then over completions (GRPO's formula; TRL's grpo)",
    "constant": "sum / (completions x max_new_tokens) (Dr. GRPO; TRL's dr_grpo)",
    "micro_batch": "token mean within each micro-batch, then over micro-batches (TRL's bnpo)",
}


def token_weights(lengths: list[int], mode: str, kept: list[bool] | None = None, max_length: int | None = None,
                  micro_batches: list[int] | None = None) -> torch.Tensor:
    """Per-token weights that turn a sum into the chosen average over a batch of completions (``lengths`` tokens
    each); the tokens of a completion not ``kept`` (unjudged, or truncated under overlong filtering) weigh 0 and
    count in no average, except in ``constant``, whose normaliser is the batch's shape.

    ``token``: every token of the batch counts the same (DAPO); ``sequence``: average within each completion, then
    over completions (the original GRPO formula); ``constant``: 1 / (completions x ``max_length``) (Dr. GRPO);
    ``micro_batch``: a token average within each micro-batch (``micro_batches``: each completion's), then an
    average over micro-batches (TRL's ``bnpo``: the result depends on how the batch is cut).

    >>> token_weights([1, 3], "token").tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> token_weights([1, 3], "sequence").tolist()
    [0.5, 0.1666666716337204, 0.1666666716337204, 0.1666666716337204]
    >>> token_weights([1, 3], "constant", max_length=4).tolist()
    [0.125, 0.125, 0.125, 0.125]
    >>> token_weights([1, 3, 2], "micro_batch", micro_batches=[0, 0, 1]).tolist()   # (1/4) / 2, (1/2) / 2
    [0.125, 0.125, 0.125, 0.125, 0.25, 0.25]
    >>> token_weights([1, 3], "token", kept=[True, False]).tolist()
    [1.0, 0.0, 0.0, 0.0]
    """
    kept = [True] * len(lengths) if kept is None else kept
    per = _per_token_share(lengths, mode, kept, max_length, micro_batches)
    if not lengths:
        return torch.zeros(0)
    return torch.cat([torch.full((n,), share if keep else 0.0) for n, share, keep in zip(lengths, per, kept)])


def _per_token_share(lengths, mode, kept, max_length, micro_batches) -> list[float]:
    """The weight of one token of each completion (before the kept mask)."""
    counted = [n for n, keep in zip(lengths, kept) if keep]
    if mode == "token":
        return [1.0 / max(sum(counted), 1)] * len(lengths)
    if mode == "sequence":
        return [1.0 / (max(n, 1) * max(len(counted), 1)) for n in lengths]
    if mode == "constant":
        if not max_length:
            raise ValueError("the constant (Dr. GRPO) aggregation needs max_length (max_new_tokens)")
        return [1.0 / (max(len(lengths), 1) * max_length)] * len(lengths)
    if mode == "micro_batch":
        if micro_batches is None or len(micro_batches) != len(lengths):
            raise ValueError("the micro_batch aggregation needs each completion's micro-batch")
        tokens: dict[int, int] = {}
        for n, keep, part in zip(lengths, kept, micro_batches):
            tokens[part] = tokens.get(part, 0) + (n if keep else 0)
        return [1.0 / (max(tokens[part], 1) * len(tokens)) for part in micro_batches]
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


# --------------------------------------------------------------------------------------------------- masks
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


def off_policy_mask(advantages: torch.Tensor, logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                    sequences: torch.Tensor, threshold: float) -> torch.Tensor:
    """Off-policy sequence masking (DeepSeek-V3.2, arXiv 2512.02556; TRL's ``off_policy_mask_threshold``): a
    completion with a negative advantage whose mean per-token ``log pi_sampler - log pi`` exceeds ``threshold`` (the
    policy has drifted from what sampled it) is dropped from the loss; one with a non-negative advantage is kept.
    Returns a float mask ``(N,)``, detached.

    >>> adv, seq = torch.tensor([-1., -1., 1., 1.]), torch.tensor([0, 0, 1, 1])
    >>> off_policy_mask(adv, torch.full((4,), -2.0), torch.full((4,), -1.0), seq, 0.5).tolist()  # drift 1 > 0.5
    [0.0, 0.0, 1.0, 1.0]
    """
    drift = _sequence_means(sampler_logprobs - logprobs.detach(), sequences)  # (N,)
    return ((advantages >= 0) | (drift <= threshold)).to(logprobs.dtype)


def high_entropy_mask(entropies: torch.Tensor, counted: torch.Tensor, top: float) -> torch.Tensor:
    """"Beyond the 80/20 rule" (Wang et al. 2025, arXiv 2506.01939; TRL's ``top_entropy_quantile``): only the share
    ``top`` of tokens with the highest entropy (the "forking" tokens) get gradient; the threshold is the (1 - top)
    quantile of the ``counted`` tokens' entropies. Returns a float mask ``(N,)``; ``top`` 1 keeps every token.

    >>> high_entropy_mask(torch.tensor([0.1, 2.0, 0.5, 1.0, 3.0]), torch.ones(5, dtype=torch.bool), 0.4).tolist()
    [0.0, 1.0, 0.0, 0.0, 1.0]
    """
    if top >= 1 or not counted.any():
        return torch.ones_like(entropies)
    threshold = torch.quantile(entropies.detach()[counted].float(), 1 - top)
    return ((entropies.detach() >= threshold) & counted).to(entropies.dtype)


# ---------------------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class Objective:
    """The loss's settings, the fields of :class:`r1lab.config.ZeroConfig` of the same names."""

    loss_type: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.0
    tis_cap: float = 0.0
    off_policy_threshold: float = 0.0  # 0 = no off-policy sequence mask
    top_entropy: float = 1.0  # 1 = every token gets gradient
    entropy_coef: float = 0.0  # the entropy bonus: loss - coef * entropy

    @classmethod
    def of(cls, cfg) -> Objective:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @property
    def needs_entropy(self) -> bool:
        """Whether the loss reads the tokens' entropies (they are always computed for the metrics)."""
        return self.top_entropy < 1 or self.entropy_coef != 0


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
              objective: Objective, *, sequences: torch.Tensor | None = None,
              ref_logprobs: torch.Tensor | None = None, sampler_logprobs: torch.Tensor | None = None,
              entropies: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO-family loss of one micro-batch, ``sum(per_token * weights)``, and its detached statistics. Per token:

        objective term (``objective.loss_type``)  x TIS weight  x off-policy mask  x high-entropy mask
        + beta * KL(pi || pi_ref)  - entropy_coef * entropy

    All tensors ``(N,)``; ``sequences`` numbers each token's completion (for gspo and the off-policy mask).
    """
    o = objective
    if o.loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {o.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    per_token, clipped = LOSS_TYPES[o.loss_type](logprobs, old_logprobs, advantages, o.clip_low, o.clip_high,
                                                 sequences)
    stats = {"clip_frac": (clipped.float() * weights).sum().detach()}
    sampler = old_logprobs if sampler_logprobs is None else sampler_logprobs
    is_weights = truncated_is_weights(old_logprobs, sampler, o.tis_cap)
    if is_weights is not None:
        per_token = per_token * is_weights
    if o.off_policy_threshold:
        if sequences is None:
            raise ValueError("the off-policy sequence mask needs each token's sequence")
        kept = off_policy_mask(advantages, logprobs, sampler, sequences, o.off_policy_threshold)
        per_token = per_token * kept
        stats["off_policy_masked"] = ((1 - kept) * weights).sum().detach()
    if o.top_entropy < 1:
        per_token = per_token * high_entropy_mask(_needs(entropies, "top_entropy"), weights > 0, o.top_entropy)
    if o.beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + o.beta * kl
        stats["kl"] = (kl * weights).sum().detach()
    if o.entropy_coef:
        per_token = per_token - o.entropy_coef * _needs(entropies, "entropy_coef")
    return (per_token * weights).sum(), stats


def _needs(entropies, setting: str) -> torch.Tensor:
    if entropies is None:
        raise ValueError(f"{setting} needs the tokens' entropies")
    return entropies
