"""Decoding for throughput on a GPU: static buffers, CUDA graphs, sampling on the device, a host sync per block.

The dynamic path of :class:`r1lab.engine.TorchEngine` reads every sampled token back to the host before it feeds
it: one sync and hundreds of small kernel launches per token, so on a GPU a small model's decode is bound by
launches, not by memory bandwidth. Here every row's state lives on the device at fixed addresses
(:class:`Buffers`) and one decode step is a fixed sequence of kernels without data-dependent Python:

1. sample each row's next token from its logits with the uniform pre-drawn for this step (all steps' uniforms are
   drawn at once from the seeded generator, so the step holds no RNG; :func:`r1lab.engine.sampling.sample` with
   ``sync_free=True``: no ``.item()``, no ``.any()``, top-k/top-p by a full sort);
2. mask the tokens of rows already done (they keep running: their token is the pad id and is never kept), write
   token and log-prob into the output buffers, mark rows that sampled a stop id as done;
3. feed the tokens through the snapshot decoder (:class:`r1lab.engine.fast_decode.FastDecoder`): K/V go into column
   ``col`` of the static cache, attention reads the first ``window`` columns under an additive bias (B, capacity)
   that is 0 where a row attends (its prompt, not its left padding, and every fed token) and -inf elsewhere;
4. advance positions and counters on the device.

On CUDA that step is captured as a CUDA graph per (batch bucket, attention window, sampling mode) after a few eager
warm-up steps, and replayed; graphs are kept across calls (the buffers stay allocated) and dropped when the
decoder is rebuilt; an in-place refresh after an optimizer step keeps them. Every ``sync_every`` steps the host
copies the block's tokens back once, and only then applies what needs it: stop strings, ``on_token`` callbacks
(streaming arrives in blocks; an abort keeps nothing after the aborting token) and "are all rows done". Rows
that the host ended are marked done on the device. When the rows still running fit a smaller batch bucket, they
move to the front (only the rows that move are copied) and later steps run the smaller graph.

Shapes are bucketed so graphs are reused: rows pad up to a batch bucket (padding rows are done from the start);
the cache holds prompt width + new tokens rounded up to ``CAPACITY_STEP`` columns, reserving at most the engine's
``reserve`` new tokens up front and doubling when a generation needs more; attention reads ``CAPACITY_STEP * 2**k``
columns, the fewest that cover the columns filled so far, not the whole capacity.

The same code runs eagerly on any device (graphs are captured only on CUDA), which is how the CPU tests check it.
Prefill is the HF model's own forward (SDPA over the real lengths); its K/V are copied into the static cache.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter, OrderedDict
from functools import partial

import torch

from r1lab.engine import fast_decode
from r1lab.engine.base import SamplingParams
from r1lab.engine.fast_decode import FastDecoder
from r1lab.engine.kv_cache import compaction_moves
from r1lab.engine.sampling import sample
from r1lab.engine.transcript import Transcript

CAPACITY_STEP = 256  # cache columns are allocated, and attention windows sized, in multiples of this
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)  # beyond 128 rows: multiples of 64
WARMUP_STEPS = 2  # eager steps of a new graph key before it is captured (lazy CUDA/cuBLAS set-up happens there)
MAX_GRAPHS = 64  # captured graphs kept; the least recently used go first


def supports(model) -> bool:
    """The fast decoder applies and the rotary embedding does not depend on the sequence length seen so far
    (HF's "dynamic" and "longrope" scaling read the largest position on the host)."""
    if not fast_decode.supports(model):
        return False
    rope = str(getattr(model.model.rotary_emb, "rope_type", "default"))
    return "dynamic" not in rope and rope != "longrope"


def batch_bucket(rows: int) -> int:
    """The batch size a graph is captured for: ``rows`` padded up to the next bucket.

    >>> batch_bucket(1), batch_bucket(20), batch_bucket(65), batch_bucket(200)
    (1, 24, 96, 256)
    """
    return next((b for b in BATCH_BUCKETS if rows <= b), -(-rows // 64) * 64)


def attention_window(columns: int, capacity: int) -> int:
    """The cache columns a step attends over when ``columns`` are filled: a power-of-two multiple of
    ``CAPACITY_STEP``, at most the capacity.

    >>> attention_window(1, 1280), attention_window(300, 1280), attention_window(1100, 1280)
    (256, 512, 1280)
    """
    window = CAPACITY_STEP
    while window < columns:
        window *= 2
    return min(window, capacity)


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


class Buffers:
    """One batch's decoding state on the device, at the addresses that captured graphs read and write."""

    def __init__(self, rows: int, capacity: int, decoder: FastDecoder, sync_every: int, device: torch.device):
        L, KV, D = len(decoder.layers), decoder.n_kv, decoder.head_dim
        self.rows, self.capacity, self.device = rows, capacity, device
        long, f32 = dict(dtype=torch.long, device=device), dict(dtype=torch.float32, device=device)
        self.k = torch.zeros((L, rows, KV, capacity, D), dtype=decoder.dtype, device=device)  # (L, B, KV, C, D)
        self.v = torch.zeros_like(self.k)
        self.bias = torch.full((rows, capacity), float("-inf"), **f32)  # (B, C): 0 where the row attends
        self.logits = torch.zeros((rows, decoder.vocab), **f32)  # (B, V): each row's next-token logits
        self.pos = torch.zeros(rows, **long)  # (B,) position of the token fed next
        self.done = torch.ones(rows, dtype=torch.bool, device=device)  # (B,)
        self.col = torch.zeros(1, **long)  # the cache column the token fed next writes
        self.t = torch.zeros(1, **long)  # steps taken; t % sync_every is the slot of the step in a block
        self.uniform = torch.zeros((sync_every, rows), **f32)  # (S, B) this block's uniforms
        self.out_token = torch.zeros((rows, sync_every), **long)  # (B, S)
        self.out_logprob = torch.zeros((rows, sync_every), **f32)  # (B, S)
        self.stop = torch.zeros(decoder.vocab, dtype=torch.bool, device=device)  # (V,) token ids that end a row

    def grown(self, capacity: int, decoder: FastDecoder, sync_every: int) -> Buffers:
        """A copy with room for ``capacity`` columns."""
        new = Buffers(self.rows, capacity, decoder, sync_every, self.device)
        new.k[..., :self.capacity, :] = self.k
        new.v[..., :self.capacity, :] = self.v
        new.bias[:, :self.capacity] = self.bias
        for name in ("logits", "pos", "done", "col", "t", "stop"):
            getattr(new, name).copy_(getattr(self, name))
        return new


class StaticDecoding:
    """The static path's buffers and captured graphs, kept across ``generate`` calls so later calls replay."""

    def __init__(self, sync_every: int = 32, cuda_graphs: bool = True):
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.sync_every, self.cuda_graphs = sync_every, cuda_graphs
        self.decoder: FastDecoder | None = None  # what the buffers and graphs were made for
        self.buffers: Buffers | None = None
        self.graphs: OrderedDict[tuple, torch.cuda.CUDAGraph | None] = OrderedDict()  # None: runs eagerly
        self.warm: Counter[tuple] = Counter()
        self._pool = self._stream = None

    def decode(self, decoder: FastDecoder, prefill: list[tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor,
               lengths: list[int], width: int, params: SamplingParams, uniforms: torch.Tensor,
               transcript: Transcript, pad_id: int, reserve: int) -> None:
        """Decode the prompts of one chunk into ``transcript``.

        ``prefill``: each layer's (keys, values) of the left-padded prompts (P, KV, width, D); ``logits`` (P, V) fp32:
        each prompt's next-token logits; ``lengths``: the prompts' lengths; ``uniforms`` (max_new_tokens, P * n): the
        draw of output row r at step s; ``reserve``: new tokens to make room for before growing."""
        device, S, steps = logits.device, self.sync_every, params.max_new_tokens
        rows = len(lengths) * params.n
        pad_id = pad_id if 0 <= pad_id < decoder.vocab else 0  # done rows are fed it: it must embed
        B = batch_bucket(rows)
        full = _round_up(width + steps, CAPACITY_STEP)  # the last step feeds its token too: width + steps columns
        buf = self._buffers(decoder, B, min(full, _round_up(width + min(steps, reserve), CAPACITY_STEP)), device)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            self._load(buf, prefill, logits, lengths, width, params.n, B, transcript.stop_ids)
            slots: list[int | None] = list(range(rows)) + [None] * (B - rows)  # the output row of each batch row
            s = 0
            while True:
                block = min(S, steps - s)
                if width + s + block > buf.capacity:
                    buf = self._grow(decoder, min(full, _round_up(max(2 * buf.capacity, width + s + block),
                                                                  CAPACITY_STEP)))
                source = torch.tensor([r or 0 for r in slots], device=device)  # (B,) padding rows draw row 0's
                buf.uniform[:block, :B] = uniforms[s:s + block].index_select(1, source)
                for j in range(block):
                    self._step(buf, B, attention_window(width + s + j + 1, buf.capacity), params, pad_id)
                tokens, logprobs = buf.out_token[:B, :block].tolist(), buf.out_logprob[:B, :block].tolist()  # sync
                for b, row in enumerate(slots):
                    if row is not None and not transcript.ended(row):
                        transcript.add_block(row, tokens[b], logprobs[b])
                s += block
                live = [b for b, row in enumerate(slots) if row is not None and not transcript.ended(row)]
                if not live or s >= steps:
                    return
                ended = [row is None or transcript.ended(row) for row in slots]
                buf.done[:B] = torch.tensor(ended, device=device)  # with the rows the host ended
                if batch_bucket(len(live)) < B:
                    slots, B = self._compact(buf, slots, live)

    def _buffers(self, decoder: FastDecoder, rows: int, capacity: int, device: torch.device) -> Buffers:
        """Buffers with room for ``rows`` x ``capacity``: the current ones where they fit, else larger ones (and the
        graphs, which point into the old ones, go)."""
        old = self.buffers if decoder is self.decoder else None
        if old is not None and old.rows >= rows and old.capacity >= capacity and old.device == device:
            return old
        self._forget(decoder)
        rows, capacity = (max(rows, old.rows), max(capacity, old.capacity)) if old is not None else (rows, capacity)
        del old  # freed before the new ones are allocated
        self.buffers = Buffers(rows, capacity, decoder, self.sync_every, device)
        return self.buffers

    def _grow(self, decoder: FastDecoder, capacity: int) -> Buffers:
        grown = self.buffers.grown(capacity, decoder, self.sync_every)
        self._forget(decoder)
        self.buffers = grown
        return grown

    def _forget(self, decoder: FastDecoder) -> None:
        self.graphs.clear()
        self.warm.clear()
        self.buffers, self.decoder = None, decoder

    @staticmethod
    def _load(buf: Buffers, prefill, logits: torch.Tensor, lengths: list[int], width: int, n: int, B: int,
              stop_ids: set[int]) -> None:
        """Fill rows [0, B) for a new chunk: prompt K/V (each prompt's for its ``n`` rows), bias, logits, positions,
        counters; padding rows (past the real ones) are done from the start and attend like a full-width row."""
        device, rows = buf.device, len(lengths) * n
        prompt_of = torch.arange(rows, device=device) // n  # (rows,)
        for i, (keys, values) in enumerate(prefill):  # (P, KV, width, D)
            buf.k[i, :rows, :, :width] = keys.index_select(0, prompt_of)
            buf.v[i, :rows, :, :width] = values.index_select(0, prompt_of)
        length = torch.tensor([lengths[r // n] for r in range(rows)] + [width] * (B - rows), device=device)  # (B,)
        columns = torch.arange(buf.capacity, device=device)  # (C,)
        attends = (columns >= (width - length)[:, None]) & (columns < width)  # (B, C) the prompt, not its padding
        buf.bias[:B] = torch.where(attends, 0.0, float("-inf"))
        buf.logits[:rows] = logits.index_select(0, prompt_of)
        buf.logits[rows:B] = 0
        buf.pos[:B] = length
        buf.done[:B] = torch.arange(B, device=device) >= rows
        buf.col.fill_(width)
        buf.t.zero_()
        buf.stop.zero_()
        ids = sorted(i for i in stop_ids if 0 <= i < buf.stop.shape[0])
        if ids:
            buf.stop[torch.tensor(ids, device=device)] = True

    def _step(self, buf: Buffers, B: int, window: int, params: SamplingParams, pad_id: int) -> None:
        step = partial(self._decode_step, self.decoder, buf, B, window, params, pad_id)
        if not self._captures(buf):
            return step()
        key = (B, window, params.temperature, params.top_k, params.top_p)
        if key in self.graphs:
            self.graphs.move_to_end(key)
            graph = self.graphs[key]
            return graph.replay() if graph is not None else step()
        if self.warm[key] < WARMUP_STEPS:
            self.warm[key] += 1
            return self._on_side_stream(step)
        self.graphs[key] = graph = self._capture(step, key)
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graph.replay() if graph is not None else step()

    def _captures(self, buf: Buffers) -> bool:
        return self.cuda_graphs and buf.device.type == "cuda"

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream, self._pool = torch.cuda.Stream(), torch.cuda.graph_pool_handle()
        return self._stream

    def _on_side_stream(self, step) -> None:
        """Run ``step`` on the stream graphs are captured on, as PyTorch's CUDA-graph notes advise for warm-up."""
        stream, main = self._side_stream(), torch.cuda.current_stream()
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            step()
        main.wait_stream(stream)

    def _capture(self, step, key: tuple) -> torch.cuda.CUDAGraph | None:
        """Record ``step`` (nothing runs while recording). All graphs share one memory pool: each step writes its
        results into the buffers, so nothing a graph allocates outlives its replay."""
        stream = self._side_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                step()
        except RuntimeError as e:  # an op that cannot be captured: keep decoding, eagerly, and say so
            warnings.warn(f"CUDA graph capture failed for batch/window/sampling {key}; this shape runs eagerly: {e}",
                          stacklevel=2)
            return None
        return graph

    def _decode_step(self, decoder: FastDecoder, buf: Buffers, B: int, window: int, params: SamplingParams,
                     pad_id: int) -> None:
        """One step for rows [0, B), entirely on the device (this is what a graph records)."""
        slot = buf.t % self.sync_every  # (1,)
        token, logprob = sample(buf.logits[:B], params, buf.uniform.index_select(0, slot)[0, :B], sync_free=True)
        done = buf.done[:B]  # (B,)
        token = token.masked_fill(done, pad_id)
        buf.out_token[:B].index_copy_(1, slot, token[:, None])
        buf.out_logprob[:B].index_copy_(1, slot, logprob.masked_fill(done, 0.0)[:, None])
        done.logical_or_(buf.stop.index_select(0, token))
        bias = buf.bias[:B]
        bias.index_fill_(1, buf.col, 0.0)  # every row attends to the token it is fed now
        k, v = buf.k[:, :B], buf.v[:, :B]  # (L, B, KV, C, D)

        def kv(i: int, key: torch.Tensor, value: torch.Tensor):
            k[i].index_copy_(2, buf.col, key)
            v[i].index_copy_(2, buf.col, value)
            return k[i, :, :, :window], v[i, :, :, :window]

        buf.logits[:B] = decoder.forward(token, buf.pos[:B], kv, bias[:, :window])
        buf.pos[:B].add_(1)
        buf.col.add_(1)
        buf.t.add_(1)

    def _compact(self, buf: Buffers, slots: list[int | None], live: list[int]) -> tuple[list[int | None], int]:
        """Move the live rows to the front (rows beyond the new count move into the holes, the rest stay) and
        return the new slot map and batch bucket."""
        src, dst = compaction_moves(live)
        if src:
            src_t, dst_t = torch.tensor(src, device=buf.device), torch.tensor(dst, device=buf.device)
            for cache in (buf.k, buf.v):
                cache[:, dst_t] = cache[:, src_t]
            for state in (buf.bias, buf.logits, buf.pos, buf.done):
                state[dst_t] = state[src_t]
        moved = slots[:len(live)]
        for s, d in zip(src, dst):
            moved[d] = slots[s]
        B = batch_bucket(len(live))
        buf.done[len(live):B] = True  # rows past the live ones hold finished or moved rows: padding now
        return moved + [None] * (B - len(live)), B
