"""Teacher-forced log-probs of sampled completions, computed with no wasted work.

A GRPO group is one prompt and G completions of it. We lay a group out as one row,
``prompt | c_1 | c_2 | ... | c_G``: each completion sees the prompt and its own earlier tokens, never another
completion. So

- the prompt is computed once per group, not G times (its gradient is the sum over the G completions, as
  it should be);
- there is no padding inside a row (rows of one micro-batch are padded to the longest only);
- the LM head runs only at the positions that predict a completion token.

:func:`pack_samples` does the same for SFT: several independent ``prompt | response`` samples share a row,
laid out as ``prefix | rest_1 | rest_2 | ...`` where ``prefix`` is the longest start their prompts have in
common (a chat template's system prompt and instruction), computed once, and ``rest_k`` is the remainder of
sample k; each rest attends to the prefix and to itself, with positions continuing from the prefix, so every
log-prob is exactly that of the sample alone. Only response tokens are scored (the loss is on assistant tokens
only).

Both describe a row the same way, as :attr:`Packed.segments`: ``(start, end, shared)``, tokens ``[start, end)``
attend causally to themselves and to the row's first ``shared`` tokens (a GRPO row is ``(0, P, 0)`` for the
prompt, then ``(start, end, P)`` per completion). No (L, L) mask is ever built: :func:`packed_attention` picks
the kernel by device, on CUDA compiled flex attention with a block-sparse mask made from the segments (one kernel
per layer, blocks no token may see are skipped), elsewhere one causal SDPA call per segment (measured fastest
on CPU). Attention work and memory follow the segments, not the square of the row.

The LM head never holds more than a budget of logits (:class:`LinearLogSoftmax`): above it, log-softmax is
computed a chunk of rows at a time and recomputed in the backward pass; below it, the plain head and
:class:`SelectiveLogSoftmax` run as before (no recompute, bit-identical results).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

Segment = tuple[int, int, int]  # (start, end, shared)

FLEX_BLOCK = 128  # flex attention's sparse block; on CUDA a row is padded to a multiple of it inside attention
LOGITS_BUDGET = {"cuda": 256 << 20}  # bytes of fp32 logits the LM head may hold at once, per device type
DEFAULT_LOGITS_BUDGET = 1 << 30  # elsewhere (CPU): one chunk covers today's workloads, so nothing is recomputed


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    score_index: torch.Tensor  # (N,) flat index into R*L of the position that predicts each target
    targets: torch.Tensor  # (N,) the target tokens, in order: row by row, sequence by sequence
    lengths: list[int]  # scored tokens of each sequence, same order
    segments: list[list[Segment]]  # per row, tiling it from 0: (start, end, shared): tokens [start, end) attend
    # causally to themselves and to the row's first ``shared`` tokens; tokens after the last segment are padding
    attention_mask: None = None  # no dense mask is built any more (``segments`` says who sees whom)


def pack(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> Packed:
    """Pack ``[(prompt_ids, [completion_ids, ...]), ...]`` into rows, one group a row.

    A group with an empty prompt is a set of independent sequences: each completion's first token is then not
    scored (nothing predicts it).

    >>> p = pack([([1, 2], [[3, 4], [5]])], pad_id=0)
    >>> p.input_ids.tolist(), p.position_ids.tolist(), p.segments
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 3, 2]], [[(0, 2, 0), (2, 4, 2), (4, 5, 2)]])
    >>> p.targets.tolist(), p.score_index.tolist()   # 5 is predicted by the prompt's last token, as 3 is
    ([3, 4, 5], [1, 2, 1])
    """
    width = max(len(prompt) + sum(len(c) for c in completions) for prompt, completions in groups)
    R = len(groups)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    flat_index, targets, lengths, segments = [], [], [], []
    for r, (prompt, completions) in enumerate(groups):
        P = len(prompt)
        ids, positions = list(prompt), list(range(P))
        row_segments = [(0, P, 0)] if P else []
        for completion in completions:
            start = len(ids)
            ids.extend(completion)
            positions.extend(range(P, P + len(completion)))
            if completion:
                row_segments.append((start, len(ids), P))
            first = 0 if P else 1  # nothing predicts the first token of an independent sequence
            flat_index.extend(r * width + (P - 1 if j == 0 else start + j - 1) for j in range(first, len(completion)))
            targets.extend(completion[first:])
            lengths.append(max(0, len(completion) - first))
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        position_ids[r, :len(ids)] = torch.tensor(positions, dtype=torch.long)
        segments.append(row_segments)
    return Packed(input_ids, position_ids, torch.tensor(flat_index, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), lengths, segments)


def pack_samples(rows: list[list[tuple[list[int], list[int]]]], pad_id: int) -> Packed:
    """Pack rows of ``(prompt_ids, response_ids)`` samples; targets are every response token, in order. A row's
    shared prompt prefix is laid out once (see the module docstring).

    >>> p = pack_samples([[([1, 2, 5], [7, 8]), ([1, 2, 9], [10])]], pad_id=0)
    >>> p.input_ids.tolist(), p.position_ids.tolist(), p.segments
    ([[1, 2, 5, 7, 8, 9, 10]], [[0, 1, 2, 3, 4, 2, 3]], [[(0, 2, 0), (2, 5, 2), (5, 7, 2)]])
    >>> p.targets.tolist(), p.score_index.tolist()   # 10 is predicted by 9, which sees 1 2 9 and nothing else
    ([7, 8, 10], [2, 3, 5])
    """
    width = max(_shared_row_length(row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    flat_index, targets, lengths, segments = [], [], [], []
    for r, row in enumerate(rows):
        shared = common_prefix([prompt for prompt, _ in row])
        ids, positions = list(row[0][0][:shared]), list(range(shared))
        row_segments = [(0, shared, 0)] if shared else []
        for prompt, response in row:
            start = len(ids)
            sample = list(prompt) + list(response)
            ids.extend(sample[shared:])
            positions.extend(range(shared, len(sample)))
            if len(ids) > start:
                row_segments.append((start, len(ids), shared))
            scored = 0
            for j in range(len(prompt), len(sample)):
                if j == 0:
                    continue  # nothing predicts a sample's very first token
                predictor = j - 1 if j - 1 < shared else start + j - 1 - shared  # where token j-1 sits in the row
                flat_index.append(r * width + predictor)
                targets.append(sample[j])
                scored += 1
            lengths.append(scored)
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        position_ids[r, :len(ids)] = torch.tensor(positions, dtype=torch.long)
        segments.append(row_segments)
    return Packed(input_ids, position_ids, torch.tensor(flat_index, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), lengths, segments)


def common_prefix(sequences: list[list[int]]) -> int:
    """Length of the longest start all ``sequences`` share (a single sequence shares all of itself).

    >>> common_prefix([[1, 2, 3], [1, 2, 4, 5]]), common_prefix([[1, 2]]), common_prefix([[1], [2]])
    (2, 2, 0)
    """
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for s in sequences[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _shared_row_length(row: list[tuple[list[int], list[int]]]) -> int:
    """Tokens :func:`pack_samples` lays out for a row: the shared prompt prefix once, then each sample's rest."""
    shared = common_prefix([prompt for prompt, _ in row])
    return shared + sum(len(p) + len(r) - shared for p, r in row)


# ------------------------------------------------------------------------------------------------ log-probs
def token_logprobs(model, packed: Packed, temperature: float = 1.0, logits_budget: int | None = None,
                   entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token under ``model`` (logits divided by ``temperature``), shape ``(N,)``; with
    ``entropy``, ``(log-probs, entropies)``: also the entropy of each position's whole next-token distribution,
    ``(N,)``, computed from the same logits a chunk of rows at a time (never a second (N, V) tensor) and
    differentiable (for an entropy bonus).

    ``logits_budget``: bytes of fp32 logits the LM head may hold at once (default: :data:`LOGITS_BUDGET` for the
    model's device type, else :data:`DEFAULT_LOGITS_BUDGET`). An FSDP model (:func:`r1lab.sharding.shard`) runs it
    as a forward method of its own, so that its embedding and head are gathered for it."""
    forward = getattr(model, SHARDED_FORWARD, None)
    if forward is not None:
        return forward(packed, temperature, logits_budget, entropy)
    return unsharded_token_logprobs(model, packed, temperature, logits_budget, entropy)


#: the method :func:`r1lab.sharding.shard` gives a sharded model: :func:`unsharded_token_logprobs` within its hooks
SHARDED_FORWARD = "r1lab_token_logprobs"


def unsharded_token_logprobs(model, packed: Packed, temperature: float = 1.0, logits_budget: int | None = None,
                             entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs`, reading the weights as they are: the whole computation for a plain model."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    attend = packed_attention(packed.segments, packed.input_ids.shape[1], device)
    with _attention(decoder, "r1lab_segments"):  # an implementation with no mask function: no (L, L) mask is made
        hidden = decoder(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                         use_cache=False, r1lab_segments=attend).last_hidden_state  # (R, L, H)
    h = hidden.reshape(-1, hidden.shape[-1])[packed.score_index.to(device)]  # (N, H)
    targets = packed.targets.to(device)  # (N,)
    head = model.get_output_embeddings()
    budget = logits_budget or LOGITS_BUDGET.get(device.type, DEFAULT_LOGITS_BUDGET)
    bias = getattr(head, "bias", None)
    if type(head) is torch.nn.Linear and h.shape[0] * head.out_features * 4 > budget:
        rows = max(1, budget // (4 * head.out_features))
        if temperature != 1.0:  # logits / T = (h / T) W^T + b / T; scaling (N, H) is cheaper than (N, V)
            h, bias = h / temperature, None if bias is None else bias / temperature
        logprobs, entropies = LinearLogSoftmax.apply(h, head.weight, bias, targets, rows, entropy)
    else:
        if bias is not None and temperature != 1.0:
            logits = head(h).float() / temperature  # (N, V)
        else:
            logits = head(h if temperature == 1.0 else h / temperature).float()  # (N, V)
        logprobs, entropies = SelectiveLogSoftmax.apply(logits, targets, entropy)
    return (logprobs, entropies) if entropy else logprobs


# ------------------------------------------------------------------------------------------------ attention
def packed_attention(segments: list[list[Segment]], width: int, device: torch.device) -> Callable:
    """The attention kernel packed rows of ``width`` tokens run through on ``device``, with what it needs (masks)
    built once for every layer: ``attend(query, key, value, scaling, dropout) -> (R, L, heads, head_dim)``.

    CUDA: compiled flex attention over a block mask made from the segments. Elsewhere: one SDPA call per segment,
    measured faster on CPU than one flex or dense-mask call per layer (flex has no CPU backward here anyway)."""
    if device.type == "cuda":
        return functools.partial(_flex_attention, block_mask=segment_block_mask(segments, width, device))
    return functools.partial(_sdpa_per_segment, segments=_with_masks(segments, device))


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, r1lab_segments=None,
                      **kwargs):
    """A Hugging Face attention function for packed rows: with ``r1lab_segments`` (an ``attend`` from
    :func:`packed_attention`) it runs that kernel, without it HF's SDPA attention. ``query``:
    (R, heads, L, head_dim), ``key`` and ``value``: (R, kv_heads, L, head_dim); returns (R, L, heads, head_dim).

    It is registered as ``r1lab_segments`` (which :func:`token_logprobs` selects for its forward pass) and in
    place of ``sdpa``: gradient checkpointing recomputes each layer in the backward pass, after the model's own
    implementation is back, and the recomputed layer must still see the segments it was given."""
    if r1lab_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    return r1lab_segments(query, key, value, scaling, dropout), None


AttentionInterface.register("r1lab_segments", segment_attention)
AttentionInterface.register("sdpa", segment_attention)


def _sdpa_per_segment(query, key, value, scaling, dropout, segments):
    """One causal ``scaled_dot_product_attention`` per segment (``segments`` from :func:`_with_masks`), over its
    own keys and those of the prefix it shares; padding gets zeros. Rows and segments are cut with ``split``
    (its backward is one ``cat``; a slice's backward writes a zero tensor of the whole input, per slice)."""
    gqa = key.shape[1] != query.shape[1]  # grouped-query: SDPA shares each key head, no repeat_kv copy
    rows = []
    for row, q_row, k_row, v_row in zip(segments, query.split(1), key.split(1), value.split(1)):  # (1, heads, L, d)
        sizes = [end - start for start, end, _, _ in row]
        sizes.append(query.shape[2] - sum(sizes))  # padding
        qs, ks, vs = (x.split(sizes, dim=2) for x in (q_row, k_row, v_row))
        ends = {end: i for i, (_, end, _, _) in enumerate(row)}
        parts = []
        for i, (_, _, shared, mask) in enumerate(row):
            k, v = ks[i], vs[i]
            if shared:  # the prefix is whole segments (as both packers lay it out) or else a slice
                prefix_k = ks[:ends[shared] + 1] if shared in ends else [k_row[:, :, :shared]]
                prefix_v = vs[:ends[shared] + 1] if shared in ends else [v_row[:, :, :shared]]
                k, v = torch.cat([*prefix_k, k], dim=2), torch.cat([*prefix_v, v], dim=2)  # (1, kv, shared + n, d)
            parts.append(F.scaled_dot_product_attention(qs[i], k, v, attn_mask=mask, is_causal=mask is None,
                                                        dropout_p=dropout, scale=scaling, enable_gqa=gqa))
        if sizes[-1]:
            parts.append(q_row.new_zeros(1, query.shape[1], sizes[-1], query.shape[3]))  # padding
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous()


def _with_masks(segments: list[list[Segment]], device) -> list[list[tuple]]:
    """Each segment with its (n, shared + n) bool mask (True = may attend): the whole shared prefix, then causal
    within the segment; ``None`` (plain causal) for a segment that shares nothing. One mask per shape."""
    masks: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for row in segments:
        out.append([])
        for start, end, shared in row:
            n = end - start
            if shared and (n, shared) not in masks:
                masks[n, shared] = torch.ones(n, shared + n, dtype=torch.bool, device=device).tril(diagonal=shared)
            out[-1].append((start, end, shared, masks[n, shared] if shared else None))
    return out


def _flex_attention(query, key, value, scaling, dropout, block_mask):
    """Flex attention over ``block_mask`` (:func:`segment_block_mask`): the row is padded to the mask's length
    (a multiple of :data:`FLEX_BLOCK`), q, k and v are cast to one dtype (the autocast dtype when autocast is on:
    flex attention is not an autocast op, and under autocast rotary embeddings leave q and k in fp32)."""
    if dropout:
        raise NotImplementedError("flex attention has no dropout: train with attention_dropout=0")
    device_type, L = query.device.type, query.shape[2]
    dtype = _autocast_dtype(device_type) or value.dtype
    pad = block_mask.seq_lengths[0] - L
    q, k, v = (F.pad(x.to(dtype), (0, 0, 0, pad)) for x in (query, key, value))  # (R, heads, L + pad, head_dim)
    with _autocast_off(device_type):
        out = _flex(device_type)(q, k, v, block_mask=block_mask, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    return out[:, :, :L].transpose(1, 2).contiguous()  # (R, L, heads, head_dim)


@functools.cache
def _flex(device_type: str) -> Callable:
    """``flex_attention``, compiled once per process on CUDA (dynamic shapes: a new row length does not recompile);
    eager elsewhere (a slow reference that materialises the scores, used by the CPU tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if device_type == "cuda" else flex_attention


def segment_block_mask(segments: list[list[Segment]], width: int, device, block: int = FLEX_BLOCK):
    """A flex-attention ``BlockMask`` for rows of segments, over ``width`` rounded up to a multiple of ``block``.

    Token q of segment ``(start, end, shared)`` may see key k when ``k <= q and (k >= start or k < shared)``;
    padding (after the last segment, including the rounding) is one more segment, so every query sees at least
    itself. The block structure comes straight from each token's two intervals ``[0, shared)`` and
    ``[start, q]``, compared with each key block: (R, L, L / block) booleans, never (L, L)."""
    from torch.nn.attention.flex_attention import BlockMask

    n_blocks = -(-max(width, 1) // block)
    L, R = n_blocks * block, len(segments)
    spans = torch.tensor([seg for row in segments for seg in [*row, (row[-1][1] if row else 0, L, 0)]],
                         dtype=torch.long, device=device)  # (S, 3) every row's segments, then its padding
    sizes = spans[:, 1] - spans[:, 0]
    start, shared = (torch.repeat_interleave(spans[:, i], sizes, output_size=R * L).view(R, L).to(torch.int32)
                     for i in (0, 2))  # (R, L) each token's segment start and shared prefix

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((kv_idx >= start[b, q_idx]) | (kv_idx < shared[b, q_idx]))

    q = torch.arange(L, device=device, dtype=torch.int32)[None, :, None]  # (1, L, 1)
    first = torch.arange(0, L, block, device=device, dtype=torch.int32)[None, None, :]  # (1, 1, n) key block
    last = first + (block - 1)  # holds keys [first, last]
    s, sh = start[:, :, None], shared[:, :, None]  # (R, L, 1)
    touches = (first < sh) | ((first <= q) & (last >= s))  # (R, L, n): query q sees some key of the block
    covers = (last < sh) | ((first >= torch.where(sh >= s, 0, s)) & (last <= q))  # ... sees all of them
    touches = touches.view(R, n_blocks, block, n_blocks).any(2)  # (R, n, n) per (query block, key block)
    full = covers.view(R, n_blocks, block, n_blocks).all(2)
    partial = touches & ~full

    def ordered(dense):  # as flex attention's create_block_mask lays them out: counts, then indices, used first
        dense = dense[:, None].to(torch.int32)  # (R, 1, n, n)
        return (dense.sum(-1).to(torch.int32),
                torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32).contiguous())

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(L, L))


@contextmanager
def _attention(decoder, implementation: str):
    """Within the block, ``decoder``'s layers use the registered attention function ``implementation``."""
    saved = decoder.config._attn_implementation
    if saved != "sdpa" and any(getattr(m, "gradient_checkpointing", False) and m.training for m in decoder.modules()):
        raise ValueError(f"gradient checkpointing with attn_implementation={saved!r}: the layers it recomputes would "
                         "not see the packing (load the model with 'sdpa')")
    decoder.config._attn_implementation = implementation
    try:
        yield
    finally:
        decoder.config._attn_implementation = saved


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs products in on ``device_type``; None when it is off (or unknown there: meta)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast_off(device_type: str):
    """A block where autocast does not touch ``device_type``'s ops (inputs are cast by hand)."""
    return torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext()


# ------------------------------------------------------------------------------------------------ LM head
class SelectiveLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits)[i, targets[i]]`` with a backward pass that touches the (N, V) logits three times
    (autograd's logsumexp + gather backward makes about seven full passes and a zero-filled buffer).

    Returns ``(logprobs, entropies)``, the entropies (``-sum p log p`` of each row) only when ``entropy`` is true,
    else None; their gradient is ``dH/dz = -p (log p + H)``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, entropy: bool = False):
        ctx.set_materialize_grads(False)
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        ent = _entropies(logits, lse) if entropy else None  # (N,)
        ctx.save_for_backward(logits, lse, targets, ent)
        return logits.gather(-1, targets[:, None])[:, 0] - lse, ent

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        logits, lse, targets, ent = ctx.saved_tensors
        if grad is None and grad_entropy is None:
            return None, None, None
        return _logits_grad(logits, lse, targets, grad, grad_entropy, ent), None, None


#: rows of logits an entropy is computed over at once (its temporaries are this many rows of the vocabulary)
ENTROPY_ROWS = 256


def _entropies(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``-sum_v p log p`` of each row of ``logits`` (with log-sum-exp ``lse``): ``lse - sum_v p z``, a chunk of
    :data:`ENTROPY_ROWS` rows at a time.

    >>> z = torch.tensor([[0.0, 0.0], [0.0, -1e9], [0.0, -float("inf")]])
    >>> [round(h, 4) for h in _entropies(z, torch.logsumexp(z, -1)).tolist()]   # uniform over 2, then certain
    [0.6931, 0.0, 0.0]
    """
    out = torch.empty_like(lse)
    for i in range(0, logits.shape[0], ENTROPY_ROWS):
        z, m = logits[i:i + ENTROPY_ROWS], lse[i:i + ENTROPY_ROWS, None]
        p_log_p = (torch.exp(z - m) * (z - m)).nan_to_num_(nan=0.0)  # 0 where p = 0 (0 * -inf)
        out[i:i + ENTROPY_ROWS] = 0.0 - p_log_p.sum(-1)
    return out


def _logits_grad(logits, lse, targets, grad, grad_entropy, ent) -> torch.Tensor:
    """The gradient on ``logits`` (n, V) of the log-probs, ``g (onehot - p)``, plus that of the entropies,
    ``-g_H p (log p + H)``; ``grad`` or ``grad_entropy`` is None when that output was not used."""
    acc = lse.dtype
    out = torch.sub(logits, lse[:, None])  # log p, (n, V)
    if grad_entropy is None:
        out.exp_().mul_(-grad[:, None].to(acc))  # -g p
    else:
        p = out.exp()
        out.add_(ent[:, None]).mul_(p).nan_to_num_(nan=0.0).mul_(-grad_entropy[:, None].to(acc))  # -g_H p (log p + H)
        if grad is not None:
            out.sub_(p.mul_(grad[:, None].to(acc)))  # - g p
    if grad is not None:
        out.scatter_add_(-1, targets[:, None], grad[:, None].to(acc))  # + g onehot
    return out


class LinearLogSoftmax(torch.autograd.Function):
    """``log_softmax(h W^T + b)[i, targets[i]]``, ``rows`` rows of logits at a time: the forward pass keeps only
    h, W, b and the (N,) log-sum-exp (and entropies); the backward pass recomputes each chunk's logits and
    accumulates ``dh = dl W`` and ``dW = dl^T h`` (``dl`` as :func:`_logits_grad`), dW in fp32. Returns
    ``(logprobs, entropies or None)`` as :class:`SelectiveLogSoftmax` does.

    Under autocast the products run in the autocast dtype (fp32 master weights, bf16 matmuls), as ``nn.Linear``
    would; logits and log-sum-exp are fp32. A tied embedding gets this gradient added to its other one."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, rows: int, entropy: bool = False):
        ctx.set_materialize_grads(False)
        device_type = h.device.type
        dtype = _autocast_dtype(device_type) or weight.dtype  # the products' dtype
        acc = torch.promote_types(dtype, torch.float32)  # logits, log-sum-exp and sums: fp32 at least
        N = h.shape[0]
        out = torch.empty(N, dtype=acc, device=h.device)  # (N,)
        lse = torch.empty(N, dtype=acc, device=h.device)  # (N,)
        ent = torch.empty(N, dtype=acc, device=h.device) if entropy else None  # (N,)
        with _autocast_off(device_type):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)  # (V, H), (V,)
            for i in range(0, N, rows):
                logits = F.linear(h[i:i + rows].to(dtype), w, b).to(acc)  # (n, V)
                lse[i:i + rows] = torch.logsumexp(logits, dim=-1)
                out[i:i + rows] = logits.gather(-1, targets[i:i + rows, None])[:, 0] - lse[i:i + rows]
                if entropy:
                    ent[i:i + rows] = _entropies(logits, lse[i:i + rows])
        ctx.save_for_backward(h, weight, bias, targets, lse, ent)
        ctx.dtype, ctx.rows = dtype, rows
        return out, ent

    @staticmethod
    def backward(ctx, grad, grad_entropy):
        h, weight, bias, targets, lse, ent = ctx.saved_tensors
        if grad is None and grad_entropy is None:
            return None, None, None, None, None, None
        dtype, rows, acc = ctx.dtype, ctx.rows, lse.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None  # (N, H)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # (V, H)
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None  # (V,)
        with _autocast_off(h.device.type):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for i in range(0, h.shape[0], rows):
                part = slice(i, i + rows)
                hc = h[part].to(dtype)  # (n, H)
                logits = F.linear(hc, w, b).to(acc)  # (n, V)
                dl = _logits_grad(logits, lse[part], targets[part], None if grad is None else grad[part],
                                  None if grad_entropy is None else grad_entropy[part],
                                  None if ent is None else ent[part])
                if need_b:
                    grad_b += dl.sum(0)
                dl = dl.to(dtype)
                if need_h:
                    grad_h[part] = dl @ w
                if need_w:
                    if dtype == acc:
                        grad_w.addmm_(dl.t(), hc)
                    else:
                        grad_w += dl.t() @ hc  # the product in the compute dtype, the sum in fp32
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)
