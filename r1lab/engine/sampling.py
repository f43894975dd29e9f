"""One token per row from logits, with its log-prob: temperature, top-k, top-p and an inverse-CDF draw.

The definitions (both implementations below follow them):

- the log-prob returned is the token's under the temperature-scaled distribution, before top-k/top-p filtering,
  which is what the trainer recomputes;
- top-k keeps the logits at least as large as the k-th largest (ties with it included);
- top-p keeps a token when the probability of the tokens more likely than it is at most ``top_p`` (the most
  likely token always survives);
- the token is drawn by inverting the CDF of the filtered distribution at one given U(0, 1) per row, so the
  caller owns the random stream and the same uniforms give the same tokens.

``sample(..., sync_free=False)`` is the dynamic path's: it may branch on the data (a nucleus search over the 256
most likely tokens that falls back to a full sort only for rows that need it). ``sync_free=True`` has fixed shapes
and no host synchronisation, so it can run inside a CUDA graph: it sorts every row in full for top-k/top-p and
repairs rare rounding misses of the inverse CDF with a second, exact search instead of a data-dependent redraw.
The two agree token for token except where ties or last-bit rounding decide a boundary.
"""

from __future__ import annotations

import torch

#: the nucleus is looked for among this many most likely tokens first (a top-k is ~20x cheaper than sorting a
#: 49k vocabulary per row); rows whose nucleus is wider fall back to the full sort
NUCLEUS_CANDIDATES = 256


def sample(logits: torch.Tensor, params, uniform: torch.Tensor,
           sync_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` (B, V) fp32 with ``uniform`` (B,), one U(0,1) draw per row; return
    ``(token, logprob)``, both (B,). ``params``: anything with ``temperature``, ``top_k`` and ``top_p``."""
    if params.temperature == 0:
        token = logits.argmax(dim=-1)
        logprob = torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]
        return token, logprob
    scaled = logits / params.temperature if params.temperature != 1 else logits  # (B, V)
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, 1)
    if params.top_k or params.top_p < 1:
        filtered = (top_k_top_p_sorted if sync_free else top_k_top_p)(scaled, params.top_k, params.top_p)
        probs = torch.exp(filtered - torch.logsumexp(filtered, dim=-1, keepdim=True))
    else:
        probs = torch.exp(scaled - lse)
    token = inverse_cdf(probs, uniform, sync_free=sync_free)
    return token, scaled.gather(-1, token[:, None])[:, 0] - lse[:, 0]


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, block: int = 128, sync_free: bool = False) -> torch.Tensor:
    """Sample one index per row from ``probs`` (B, V) with one uniform per row, in two levels: pick a block of
    ``block`` entries from the block sums, then an entry inside it. A full-length cumsum is sequential and was
    the slowest part of sampling on a CPU; this touches the (B, V) array once."""
    B, V = probs.shape
    pad = (-V) % block
    if pad:
        probs = torch.nn.functional.pad(probs, (0, pad))
    blocks = probs.view(B, -1, block)  # (B, V/block, block)
    block_cdf = blocks.sum(-1).cumsum(-1)  # (B, V/block)
    target = uniform[:, None].to(probs.dtype) * block_cdf[:, -1:]  # (B, 1)
    b = torch.searchsorted(block_cdf, target).clamp_(max=block_cdf.shape[1] - 1)  # (B, 1)
    before = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    inner_cdf = blocks.gather(1, b[:, :, None].expand(B, 1, block))[:, 0].cumsum(-1)  # (B, block)
    i = torch.searchsorted(inner_cdf, target - before).clamp_(max=block - 1)
    token = (b * block + i)[:, 0].clamp_(max=V - 1)
    # rounding between block sums and the inner cumsum can land on a zero-probability entry: redraw those rows
    bad = probs.gather(-1, token[:, None])[:, 0] <= 0
    if sync_free:
        return torch.where(bad, _exact_inverse_cdf(probs, uniform), token)
    if bad.any():
        token[bad] = torch.multinomial(probs[bad], 1)[:, 0]
    return token


def _exact_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The first index whose full-length CDF exceeds ``uniform * total``: never a zero-probability entry (the
    CDF does not rise there), and past the end it is the last entry with probability."""
    V = probs.shape[-1]
    cdf = probs.cumsum(-1)  # (B, V)
    token = torch.searchsorted(cdf, uniform[:, None].to(probs.dtype) * cdf[:, -1:], right=True)[:, 0]
    columns = torch.arange(V, device=probs.device).expand_as(probs)
    last = torch.where(probs > 0, columns, 0).amax(-1)  # (B,)
    return torch.minimum(token, last)


def top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (see the module docstring for the definitions)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p >= 1.0:
        return logits
    k = min(NUCLEUS_CANDIDATES, logits.shape[-1])
    top, order = torch.topk(logits, k, dim=-1)  # (B, k), most likely first
    probs = torch.exp(top - torch.logsumexp(logits, dim=-1, keepdim=True))
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely candidates
    wide = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    if k < logits.shape[-1]:
        wide = before[:, -1] + probs[:, -1] <= top_p
    out = torch.full_like(logits, float("-inf")).scatter_(-1, order, top.masked_fill(before > top_p, float("-inf")))
    if wide.any():  # the candidates hold no more than top_p: the nucleus may reach past them
        rows = wide.nonzero()[:, 0]
        sorted_logits, full_order = torch.sort(logits[rows], dim=-1, descending=True)
        p = torch.softmax(sorted_logits, dim=-1)
        drop = torch.zeros_like(p, dtype=torch.bool).scatter(-1, full_order, p.cumsum(dim=-1) - p > top_p)
        out[rows] = logits[rows].masked_fill(drop, float("-inf"))
    return out


def top_k_top_p_sorted(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """:func:`top_k_top_p` with fixed shapes and no host sync: one full sort per row serves both filters. The
    nucleus mass is computed as the candidate search computes it, so the two agree wherever that search does not
    fall back to its full sort."""
    V = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    if top_k and top_k < V:
        kth = sorted_logits[:, top_k - 1:top_k]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p >= 1.0:
        return logits
    probs = torch.exp(sorted_logits - torch.logsumexp(logits, dim=-1, keepdim=True))  # (B, V), most likely first
    before = probs.cumsum(dim=-1) - probs
    kept = sorted_logits.masked_fill(before > top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, kept)
