"""Teacher-forced log-probs of sampled completions, computed with no wasted work.

A GRPO group is one prompt and G completions of it. We lay a group out as one row,
``prompt | c_1 | c_2 | ... | c_G``, with a block attention mask: each completion sees the prompt and its own
earlier tokens, never another completion. So

- the prompt is computed once per group, not G times (its gradient is the sum over the G completions, as
  it should be);
- there is no padding inside a row (rows of one micro-batch are padded to the longest only);
- the LM head runs only at the positions that predict a completion token.

:func:`pack_samples` does the same for SFT: several independent ``prompt | response`` samples share a row
(first-fit by length, so padding is rare), each attends only to itself, positions restart at each sample,
and only response tokens are scored (the loss is on assistant tokens only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool, True = may attend
    score_index: torch.Tensor  # (N,) flat index into R*L of the position that predicts each target
    targets: torch.Tensor  # (N,) the completion tokens, in order: row by row, completion by completion
    lengths: list[int]  # tokens of each completion, same order


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
    """Pack rows of ``(prompt_ids, response_ids)`` samples; targets are every response token, in order.

    >>> p = pack_samples([[([5, 6], [7, 8]), ([9], [10])]], pad_id=0)
    >>> p.input_ids.tolist(), p.position_ids.tolist(), p.targets.tolist(), p.score_index.tolist()
    ([[5, 6, 7, 8, 9, 10]], [[0, 1, 2, 3, 0, 1]], [7, 8, 10], [1, 2, 4])
    >>> p.attention_mask[0, 0, 4].tolist()   # the second sample's first token sees only itself
    [False, False, False, False, True, False]
    """
    width = max(sum(len(a) + len(b) for a, b in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    seg_ids = torch.full((R, width), -1, dtype=torch.long)
    flat_index, targets, lengths = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for k, (prompt, response) in enumerate(row):
            ids = list(prompt) + list(response)
            n = len(ids)
            input_ids[r, start:start + n] = torch.tensor(ids)
            position_ids[r, start:start + n] = torch.arange(n)
            seg_ids[r, start:start + n] = k
            scored = 0
            for j in range(len(prompt), n):
                if j == 0:
                    continue  # nothing predicts a sample's very first token
                flat_index.append(r * width + start + j - 1)
                targets.append(ids[j])
                scored += 1
            lengths.append(scored)
            start += n
    return Packed(input_ids, position_ids, _segment_mask(seg_ids, shared=None),
                  torch.tensor(flat_index, dtype=torch.long), torch.tensor(targets, dtype=torch.long), lengths)


def _segment_mask(seg_ids: torch.Tensor, shared: int | None) -> torch.Tensor:
    """(R, 1, L, L) causal attention within a segment (and to segment ``shared``, a prompt all completions
    see); -1 marks padding, which attends only to itself so no row of the softmax is empty."""
    width = seg_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (L, L)
    q, k = seg_ids[:, :, None], seg_ids[:, None, :]  # (R, L, 1), (R, 1, L)
    allowed = (k == q) if shared is None else (k == q) | (k == shared)
    pad = (q == -1) | (k == -1)
    eye = torch.eye(width, dtype=torch.bool)
    return ((causal & allowed & ~pad) | eye)[:, None]


def token_logprobs(model, packed: Packed, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each target token under ``model`` (logits divided by ``temperature``), shape ``(N,)``."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    hidden = decoder(input_ids=packed.input_ids.to(device), attention_mask=packed.attention_mask.to(device),
                     position_ids=packed.position_ids.to(device), use_cache=False).last_hidden_state  # (R, L, H)
    h = hidden.reshape(-1, hidden.shape[-1])[packed.score_index.to(device)]  # (N, H)
    if temperature != 1.0:
        h = h / temperature  # the LM head is linear: scaling (N, H) is cheaper than scaling (N, V) logits
    logits = model.get_output_embeddings()(h).float()  # (N, V)
    return SelectiveLogSoftmax.apply(logits, packed.targets.to(device))


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
