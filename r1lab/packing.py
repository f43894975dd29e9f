"""Teacher-forced log-probs of sampled completions, computed with no wasted work.

A GRPO group is one prompt and G completions of it. We lay a group out as one row,
``prompt | c_1 | c_2 | ... | c_G``, with a block attention mask: each completion sees the prompt and its own
earlier tokens, never another completion. So

- the prompt is computed once per group, not G times (its gradient is the sum over the G completions, as
  it should be);
- there is no padding inside a row (rows of one micro-batch are padded to the longest only);
- the LM head runs only at the positions that predict a completion token.

:func:`pack_samples` does the same for SFT: several independent ``prompt | response`` samples share a row,
laid out as ``prefix | rest_1 | rest_2 | ...`` where ``prefix`` is the longest start their prompts have in
common (a chat template's system prompt and instruction), computed once, and ``rest_k`` is the remainder of
sample k; each rest attends to the prefix and to itself, with positions continuing from the prefix, so every
log-prob is exactly that of the sample alone. Only response tokens are scored (the loss is on assistant tokens
only). Its rows carry no (L, L) mask: :func:`segment_attention` runs one causal attention per segment, so the
cost and memory of attention follow the segments' lengths, not the square of the row's.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor | None  # (R, 1, L, L) bool, True = may attend; None: ``segments`` says who sees whom
    score_index: torch.Tensor  # (N,) flat index into R*L of the position that predicts each target
    targets: torch.Tensor  # (N,) the completion tokens, in order: row by row, completion by completion
    lengths: list[int]  # tokens of each completion, same order
    segments: list[list[tuple[int, int, int]]] | None = None  # per row, in order: (start, end, shared): tokens
    # [start, end) attend causally to themselves and to the row's first ``shared`` tokens; the rest is padding


def pack(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> Packed:
    """Pack ``[(prompt_ids, [completion_ids, ...]), ...]`` into rows, one group a row.

    A group with an empty prompt is a set of independent sequences (SFT): each completion's first
    token is then not scored (nothing predicts it).
    """
    rows, segments, positions, score, targets, lengths = [], [], [], [], [], []
    for prompt, completions in groups:
        ids, seg, pos = list(prompt), [0] * len(prompt), list(range(len(prompt)))
        row_score = []
        for k, completion in enumerate(completions, start=1):
            start = len(ids)
            for j, token in enumerate(completion):
                predictor = (len(prompt) - 1 if j == 0 else start + j - 1)
                if predictor < start and not prompt:
                    continue  # nothing predicts the first token of an independent sequence
                row_score.append((predictor, token))
            ids.extend(completion)
            seg.extend([k] * len(completion))
            pos.extend(range(len(prompt), len(prompt) + len(completion)))
            lengths.append(len(completion) - (0 if prompt else min(1, len(completion))))
        rows.append(ids)
        segments.append(seg)
        positions.append(pos)
        score.append(row_score)
    width = max(len(r) for r in rows)
    R = len(rows)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    seg_ids = torch.full((R, width), -1, dtype=torch.long)
    flat_index = []
    for r in range(R):
        n = len(rows[r])
        input_ids[r, :n] = torch.tensor(rows[r])
        position_ids[r, :n] = torch.tensor(positions[r])
        seg_ids[r, :n] = torch.tensor(segments[r])
        for predictor, token in score[r]:
            flat_index.append(r * width + predictor)
            targets.append(token)
    return Packed(input_ids, position_ids, _segment_mask(seg_ids, shared=0), torch.tensor(flat_index, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), lengths)


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
    return Packed(input_ids, position_ids, None, torch.tensor(flat_index, dtype=torch.long),
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


def _segment_mask(seg_ids: torch.Tensor, shared: int) -> torch.Tensor:
    """(R, 1, L, L) causal attention within a segment and to segment ``shared``, a prompt all completions see;
    -1 marks padding, which attends only to itself so no row of the softmax is empty."""
    width = seg_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (L, L)
    q, k = seg_ids[:, :, None], seg_ids[:, None, :]  # (R, L, 1), (R, 1, L)
    allowed = (k == q) | (k == shared)
    pad = (q == -1) | (k == -1)
    eye = torch.eye(width, dtype=torch.bool)
    return ((causal & allowed & ~pad) | eye)[:, None]


def token_logprobs(model, packed: Packed, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each target token under ``model`` (logits divided by ``temperature``), shape ``(N,)``."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    if packed.segments is None:
        hidden = decoder(input_ids=packed.input_ids.to(device), attention_mask=packed.attention_mask.to(device),
                         position_ids=packed.position_ids.to(device), use_cache=False).last_hidden_state  # (R, L, H)
    else:
        with _attention(decoder, "r1lab_segments"):
            hidden = decoder(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                             use_cache=False, r1lab_segments=_with_masks(packed.segments, device)).last_hidden_state
    h = hidden.reshape(-1, hidden.shape[-1])[packed.score_index.to(device)]  # (N, H)
    if temperature != 1.0:
        h = h / temperature  # the LM head is linear: scaling (N, H) is cheaper than scaling (N, V) logits
    logits = model.get_output_embeddings()(h).float()  # (N, V)
    return SelectiveLogSoftmax.apply(logits, packed.targets.to(device))


def segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, r1lab_segments=None,
                      **kwargs):
    """A Hugging Face attention function for rows made of segments (:attr:`Packed.segments`, masks added by
    :func:`_with_masks`): one ``scaled_dot_product_attention`` per segment, over its own keys and those of the
    prefix it shares. Work and memory follow the segments, and no (L, L) mask is built. Without segments it is
    HF's SDPA attention. ``query``: (R, heads, L, head_dim), ``key`` and ``value``: (R, kv_heads, L, head_dim);
    returns (R, L, heads, head_dim) as HF expects."""
    if r1lab_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    gqa = key.shape[1] != query.shape[1]  # grouped-query: SDPA shares each key head, no repeat_kv copy
    rows = []
    for r, segments in enumerate(r1lab_segments):
        parts = []
        for start, end, shared, mask in segments:
            q, k, v = (x[r:r + 1, :, start:end] for x in (query, key, value))
            if shared:
                k = torch.cat([key[r:r + 1, :, :shared], k], dim=2)  # (1, heads, shared + n, head_dim)
                v = torch.cat([value[r:r + 1, :, :shared], v], dim=2)
            parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                        dropout_p=dropout, scale=scaling, enable_gqa=gqa))
        covered = segments[-1][1] if segments else 0
        if covered < query.shape[2]:
            parts.append(query.new_zeros(1, query.shape[1], query.shape[2] - covered, query.shape[3]))  # padding
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


AttentionInterface.register("r1lab_segments", segment_attention)


def _with_masks(segments: list[list[tuple[int, int, int]]], device) -> list[list[tuple]]:
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


@contextmanager
def _attention(decoder, implementation: str):
    """Within the block, ``decoder``'s layers use the registered attention function ``implementation``."""
    saved = decoder.config._attn_implementation
    decoder.config._attn_implementation = implementation
    try:
        yield
    finally:
        decoder.config._attn_implementation = saved


class SelectiveLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits)[i, targets[i]]`` with a backward pass that touches the (N, V) logits three times
    (autograd's logsumexp + gather backward makes about seven full passes and a zero-filled buffer)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        ctx.save_for_backward(logits, lse, targets)
        return logits.gather(-1, targets[:, None])[:, 0] - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, targets = ctx.saved_tensors
        grad_logits = torch.sub(logits, lse[:, None]).exp_().mul_(-grad[:, None])  # -g * softmax
        grad_logits.scatter_add_(-1, targets[:, None], grad[:, None])  # + g * onehot
        return grad_logits, None
