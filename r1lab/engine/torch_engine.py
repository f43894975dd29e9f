"""In-process generation with torch: batched sampling over a KV cache, for any HF causal LM.

What it does that a plain ``model.generate`` loop does not:

- **Shared prefill.** Each prompt is run through the model once; its KV cache is then copied to its ``n``
  samples. ``generate(num_return_sequences=n)`` recomputes the prompt ``n`` times.
- **Finished rows stop costing compute.** When rows hit a stop, the batch shrinks to the rows still running:
  live rows from the end move into the finished rows' slots, so only the moved rows' cache is copied.
- **A lean decode step** for Llama-family models (:mod:`r1lab.engine.fast_decode`): fused projections,
  attention straight over a preallocated KV buffer.
- **Log-probs for free.** The log-prob of every sampled token under the temperature-scaled policy (before
  top-k/top-p filtering) comes back with the tokens, so GRPO with one update per batch needs no extra
  forward pass for its "old" log-probs.
- **A compute precision of its own.** ``dtype`` (default: the weights') is what decoding computes in: fp32
  master weights can roll out in bf16 (a bf16 snapshot of the decoder's weights; autocast for the HF forward).
- **Continuous batching** (dynamic path). At most ``max_rows`` rows decode at once; rows wait in a queue and are
  admitted into the slots finished rows leave (once an eighth of the budget is free), their prompt's K/V copied
  into the slot right-aligned with the column every row writes next. A long row no longer holds its whole chunk
  of rows, so a run's time follows its total tokens. Cache columns no live row attends to are dropped as rows leave.
- **Two decode paths, one result.** ``decode="dynamic"`` (the default off CUDA) syncs with the host every token
  and shrinks the batch as rows finish; ``decode="static"`` (the default on CUDA, :mod:`r1lab.engine.static_decode`)
  keeps all state on the device, replays CUDA graphs and syncs every ``sync_every`` tokens, in chunks of
  ``max_batch`` rows (no continuous batching). Both draw their uniforms from one generator on the model's device,
  seeded by ``params.seed``; on a CPU the first chunk's stream is the same for both, so they sample the same
  tokens. Which uniforms a row draws, and so what it samples (up to float rounding, which can differ with the
  batch's size), depends on the schedule: with refill (more rows than ``max_rows``), or always when the caller
  gives ``stream_ids``, each output row draws from its own stream, a hash of (seed, its key, token index)
  (:func:`row_uniforms`); its tokens then do not depend on which rows share its batch or on ``max_rows``. Without
  ``stream_ids`` the key is the row's place in this call (prompt index * n + sample), so they still depend on the
  prompts before it; and where all rows fit ``max_rows`` (no refill), rows draw from the one shared generator,
  so their tokens depend on ``max_rows`` and on the other rows of the call. ``stream_ids`` (one key per prompt,
  e.g. a problem's index in a benchmark) makes sample j of a prompt a function of (seed, key, j) alone, on both
  decode paths: what :func:`r1lab.evaluate.batches.sample_in_batches` uses so that batching, ``max_rows`` and
  ``--limit`` do not change a problem's samples.

Every tensor the engine makes is made on the model's device.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import deque
from collections.abc import Sequence
from functools import partial

import torch

from r1lab.engine import static_decode
from r1lab.engine.base import (
    Completion,
    OnToken,
    Prompt,
    SamplingParams,
    Weights,
    check_prompts,
    in_batches,
    render_prompt,
)
from r1lab.engine.fast_decode import SUPPORTED, FastDecoder, supports
from r1lab.engine.kv_cache import buffer_cache, compaction_moves, slot_cache
from r1lab.engine.sampling import sample
from r1lab.engine.static_decode import StaticDecoding
from r1lab.engine.transcript import Transcript

#: new-token positions reserved in the KV cache up front; a longer budget (R1 evaluates with 32,768) grows the
#: buffers by doubling only if some row gets that far, instead of reserving memory most rows never use
RESERVE_TOKENS = 2048

DECODE_PATHS = ("auto", "static", "dynamic")
#: the ``engine_args`` of ``--engine torch`` (:class:`TorchEngine`'s options)
TORCH_ARGS = ("max_batch", "max_rows", "compact_fraction", "use_fast_decode", "decode", "sync_every", "cuda_graphs")

#: with continuous batching, waiting rows are admitted once this share (1/REFILL_SHARE) of the row budget is free
#: (or as many slots as rows still wait): each admission is a prefill call, so single free slots are not refilled
REFILL_SHARE = 8
#: leading cache columns no live row attends to are dropped once there are this many and they are half the cache
SHIFT_MIN = 32


class TorchEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, compact_fraction: float = 0.0,
                 use_fast_decode: bool = True, dtype: torch.dtype | None = None, decode: str = "auto",
                 sync_every: int = 32, cuda_graphs: bool = True, max_rows: int | None = None):
        """``dtype``: the precision decoding computes in (None: the weights'). ``decode``: "auto" (static on CUDA
        where :func:`r1lab.engine.static_decode.supports` the model, dynamic elsewhere), "static" or "dynamic".
        ``sync_every``: tokens the static path decodes between host syncs; ``cuda_graphs``: whether it captures
        them (off: the same steps, eager). ``max_rows``: the dynamic path's row budget for continuous batching
        (None: ``max_batch``; 0: off, prompts go in chunks of ``max_batch`` rows that each run to their longest row)."""
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 (0 = no continuous batching), got {max_rows}")
        if decode not in DECODE_PATHS:
            raise ValueError(f"decode={decode!r}: use one of {', '.join(DECODE_PATHS)}")
        if decode == "static" and not (use_fast_decode and static_decode.supports(model)):
            raise ValueError("decode='static' needs the fast decoder (use_fast_decode=True) and a model it supports "
                             f"({', '.join(SUPPORTED)}, no LoRA, no dynamic rope)")
        self.model = model
        self.use_fast_decode = use_fast_decode
        self.dtype = dtype
        self.decode = decode
        #: (dtype and weight addresses it was built for, weight versions it holds, decoder)
        self._fast: tuple[tuple, tuple, FastDecoder] | None = None
        self._static = StaticDecoding(sync_every, cuda_graphs)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_rows = max_batch if max_rows is None else max_rows
        self.compact_fraction = compact_fraction
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        #: prompt + reply tokens the model can attend to (unbounded when its config does not say)
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 1 << 30

    @staticmethod
    def check_args(args: dict) -> None:
        """Refuse ``--engine-args`` the torch engine does not take, or of the wrong kind, naming each."""
        unknown = sorted(set(args) - set(TORCH_ARGS))
        if unknown:
            raise ValueError(f"engine_args: engine 'torch' takes no {', '.join(map(repr, unknown))}; it takes "
                             f"{', '.join(TORCH_ARGS)}")
        rules = {"max_batch": (_whole(1), "a whole number >= 1"), "max_rows": (_whole(0), "a whole number >= 0"),
                 "sync_every": (_whole(1), "a whole number >= 1"),
                 "compact_fraction": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                                      "a number in [0, 1]"),
                 "use_fast_decode": (lambda v: isinstance(v, bool), "true or false"),
                 "cuda_graphs": (lambda v: isinstance(v, bool), "true or false"),
                 "decode": (lambda v: v in DECODE_PATHS, " | ".join(DECODE_PATHS))}
        bad = [f"{key}={args[key]!r} (use {words})" for key, (ok, words) in rules.items() if key in args
               and not ok(args[key])]
        if bad:
            raise ValueError(f"engine_args: {'; '.join(bad)}")

    def prompt(self, messages: list[dict], template: str, prefill: str | None = None) -> Prompt:
        return render_prompt(self.tokenizer, messages, template, prefill)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def each(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
             on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None):
        """:meth:`generate`'s samples, four times ``max_rows`` rows at a time (:func:`r1lab.engine.base.in_batches`)."""
        return in_batches(self.generate, prompts, params, on_token, stream_ids, 4 * (self.max_rows or self.max_batch))

    def load_weights(self, weights: Weights) -> None:
        """Nothing to do: the engine samples from the same module the trainer updates."""

    def sleep(self) -> None:
        """Nothing to give back: the decoder's snapshot is refreshed in place after an update."""

    def wake_up(self) -> None:
        """Nothing to take back (see :meth:`sleep`)."""

    def close(self) -> None:
        self._fast = None

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt (:class:`r1lab.engine.Prompt` or token ids); result[i] holds
        prompt i's completions.

        ``on_token(prompt_index, sample_index, token_id)`` is called for every sampled token in order (the dynamic
        path calls it as each token is decoded, the static path every ``sync_every`` tokens; a server streams from
        it); returning False ends that sample at once with finish reason "abort". ``stream_ids``: one non-negative
        key per prompt; sample j of prompt i then draws its uniforms from (seed, ``stream_ids[i] * n + j``, token
        index) alone (see the module docstring)."""
        if not prompts:
            return []
        prompts, stream_ids = check_prompts(prompts, stream_ids)
        device = _device(self.model)
        dtype = self.dtype or next(self.model.parameters()).dtype
        generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        per_chunk = max(1, self.max_batch // params.n)
        rows = len(prompts) * params.n
        budget = min(rows, self.max_rows if self.max_rows else per_chunk * params.n)
        fast = self._fast_decoder(min(len(prompts), per_chunk) * params.n if not self.max_rows else budget, dtype)
        static = fast is not None and (self.decode == "static" or (
            self.decode == "auto" and device.type == "cuda" and static_decode.supports(self.model)))
        stop_ids = (set() if params.ignore_eos else set(self.eos_ids)) | set(params.stop_token_ids)
        results: list[list[Completion]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            if static:  # chunks of max_batch rows (no continuous batching on this path)
                for start in range(0, len(prompts), per_chunk):
                    chunk = prompts[start:start + per_chunk]
                    transcript = Transcript(self.tokenizer, len(chunk), params, stop_ids, start, on_token)
                    keys = None if stream_ids is None else _row_keys(stream_ids[start:start + per_chunk], params.n,
                                                                    device)
                    self._decode_static(chunk, params, generator, fast, transcript, dtype, keys)
                    results.extend(transcript.completions())
            else:
                transcript = Transcript(self.tokenizer, len(prompts), params, stop_ids, 0, on_token)
                keys = None if stream_ids is None else _row_keys(stream_ids, params.n, device)
                self._decode_dynamic(prompts, params, generator, fast, transcript, dtype, budget,
                                     refill=self.max_rows > 0, keys=keys)
                results = transcript.completions()
        finally:
            self.model.train(was_training)
        return results

    def _fast_decoder(self, batch_hint: int, dtype: torch.dtype) -> FastDecoder | None:
        """The fused/packed decoder in ``dtype``. After an optimizer step (it bumps every trained tensor's version)
        its weights are refreshed in place, or it is rebuilt where they are packed or the parameters moved, so
        a server or an evaluation does not repack per request and captured CUDA graphs stay valid."""
        if not (self.use_fast_decode and supports(self.model)):
            return None
        params = list(self.model.parameters())
        built_for = (dtype, tuple(p.data_ptr() for p in params))
        versions = tuple(p._version for p in params)
        if self._fast is not None and self._fast[0] == built_for:
            decoder = self._fast[2]
            if self._fast[1] == versions or decoder.refresh():
                self._fast = (built_for, versions, decoder)
                return decoder
        self._fast = None  # the old snapshot is freed before the new one is made
        self._fast = (built_for, versions, FastDecoder(self.model, batch_hint=batch_hint, dtype=dtype))
        return self._fast[2]

    def _autocast(self, dtype: torch.dtype):
        """The HF forward in ``dtype`` where that is not the weights' own precision."""
        if dtype == next(self.model.parameters()).dtype:
            return contextlib.nullcontext()
        return torch.autocast(_device(self.model).type, dtype=dtype)

    def _prefill(self, prompts, reserve: int, dtype: torch.dtype):
        """Run each prompt once (left-padded; only the last position needs the LM head). Returns its next-token
        logits (P, V) fp32, the cache (room for ``reserve`` more tokens), the attention mask (P, T), the prompt
        lengths and T."""
        device = _device(self.model)
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        # left padding: every row's next token sits at the same column
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + [int(t) for t in p] for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)  # (P, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._autocast(dtype):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{cache_argument(self.model): buffer_cache(width + reserve)})
        cache = returned_cache(out)
        for layer in cache.layers:
            layer.cast(dtype)
        return out.logits[:, -1, :].float(), cache, mask, lengths, width

    def _decode_static(self, prompts, params: SamplingParams, generator, fast: FastDecoder, transcript: Transcript,
                       dtype: torch.dtype, keys: torch.Tensor | None = None) -> None:
        logits, cache, _, lengths, width = self._prefill(prompts, 0, dtype)
        device = logits.device
        if keys is not None:  # each row's own stream (:func:`row_uniforms`), as the dynamic path draws it
            steps = torch.arange(params.max_new_tokens, device=device)[:, None].expand(-1, len(keys))
            uniforms = row_uniforms(_stream_seed(params.seed, device), keys.expand_as(steps), steps)
        else:  # every step's uniforms at once: on a CPU this is the stream the dynamic path draws step by step
            uniforms = torch.rand((params.max_new_tokens, len(prompts) * params.n), generator=generator,
                                  device=device)
        self._static.decode(fast, [(layer.keys, layer.values) for layer in cache.layers], logits, lengths, width,
                            params, uniforms, transcript, self.pad_id, RESERVE_TOKENS)

    def _decode_dynamic(self, prompts, params: SamplingParams, generator, fast: FastDecoder | None,
                        transcript: Transcript, dtype: torch.dtype, budget: int, refill: bool,
                        keys: torch.Tensor | None = None) -> None:
        """Decode every row of ``prompts`` (``params.n`` each) with at most ``budget`` rows in the batch. Rows are
        admitted from a queue in order, when the batch is empty and (``refill``) whenever enough slots are free;
        a prompt is prefilled once and its K/V copied to each of its samples as they are admitted.

        Uniforms: where rows are admitted in whole batches (no refill, or all rows fit the budget) each step draws
        one per row of the batch from ``generator``, the stream the static path draws at once; with refill each
        output row has its own stream (:func:`row_uniforms`), so its tokens do not depend on the schedule; so has it
        whenever ``keys`` (each output row's stream key) are given."""
        n, device, max_new = params.n, _device(self.model), params.max_new_tokens
        queue = deque(range(len(prompts) * n))  # output rows waiting to be admitted, in order
        streams = keys is not None or (refill and len(queue) > budget)
        if streams and keys is None:
            keys = torch.arange(len(queue), device=device)
        seed = _stream_seed(params.seed, device) if streams else params.seed
        batch_start = batch_rows = 0  # without streams: the output rows of the batch admitted last
        #: prompt -> (next-token logits (V,), per layer (K, V) of its own positions (1, H, len, D), len), kept
        #: while some of its samples still wait
        prefilled: dict[int, tuple] = {}
        refill_at = max(1, budget // REFILL_SHARE)
        cache = None
        active = torch.zeros(0, dtype=torch.long, device=device)  # the output row each batch row writes to
        token = next_pos = first = active
        mask = torch.zeros((0, 0), dtype=torch.long, device=device)  # (B, T) 1 where a row attends
        logits = torch.zeros((0, 0), device=device)
        while True:
            free = budget - len(active)
            if queue and free and (not len(active) or (refill and free >= min(len(queue), refill_at))):
                rows = [queue.popleft() for _ in range(min(free, len(queue)))]
                batch_start, batch_rows = rows[0], len(rows)
                cache, (logits, mask, next_pos, first, active) = self._admit(
                    prompts, rows, n, prefilled, cache, (logits, mask, next_pos, first, active), budget,
                    min(max_new, RESERVE_TOKENS), dtype)
            if not len(active):
                return
            order = active.tolist()
            if streams:  # each output row's own stream: the same uniforms whichever rows share its batch
                uniform = (row_uniforms(seed, keys[active], [len(transcript.tokens[r]) for r in order])
                           if params.temperature else None)
            else:  # one uniform per row of the batch and step, drawn for all: compaction never shifts the stream
                uniform = torch.rand(batch_rows, generator=generator, device=device)[active - batch_start]
            token, logprob = sample(logits, params, uniform)
            live = []
            for b, (row, tok, lp) in enumerate(zip(order, token.tolist(), logprob.tolist())):
                if transcript.ended(row) or len(transcript.tokens[row]) >= max_new:
                    continue  # ended rows wait for compaction
                if transcript.add(row, tok, lp) and len(transcript.tokens[row]) < max_new:
                    live.append(b)
            if not live:
                cache = None  # the next admission starts a fresh cache
                active, logits, next_pos, first = active[:0], logits[:0], next_pos[:0], first[:0]
                continue
            if len(active) - len(live) >= max(1, self.compact_fraction * len(active)):
                # drop finished rows: live rows past the new end move into the holes (only they are copied)
                src, dst = compaction_moves(live)
                src_t = torch.tensor(src, dtype=torch.long, device=device)
                dst_t = torch.tensor(dst, dtype=torch.long, device=device)
                n_live = len(live)
                for layer in cache.layers:
                    layer.move_rows(src_t, dst_t, n_live)
                for t in (active, token, mask, next_pos, first):
                    t[dst_t] = t[src_t]
                active, token, mask = active[:n_live], token[:n_live], mask[:n_live]
                next_pos, first = next_pos[:n_live], first[:n_live]
                unused = int(first.min())
                if unused >= SHIFT_MIN and 2 * unused >= mask.shape[1]:  # most columns serve no live row: drop them
                    for layer in cache.layers:
                        layer.shift_columns(-unused)
                    mask, first = mask[:, unused:].contiguous(), first - unused
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            if fast is not None:
                bias = torch.zeros(mask.shape, device=device).masked_fill_(mask == 0, float("-inf"))  # (B, T+1)
                logits = fast.step(token, next_pos, cache, bias)
            else:
                with self._autocast(dtype):
                    out = self.model(input_ids=token.view(-1, 1), attention_mask=mask,
                                     position_ids=next_pos.view(-1, 1), use_cache=True,
                                     **{cache_argument(self.model): cache})
                cache = returned_cache(out)
                logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

    def _admit(self, prompts, rows: list[int], n: int, prefilled: dict, cache, state, budget: int, reserve: int,
               dtype: torch.dtype):
        """Put output ``rows`` into the batch behind its live rows: prefill the prompts not prefilled yet, copy each
        row's prompt K/V into its slot, right-aligned at the cache's filled length (widened first if a prompt is
        longer). ``state``: (logits, mask, next_pos, first, active), each with one entry per batch row, ``first``
        being the row's first attended column. Returns the cache and the extended state."""
        logits, mask, next_pos, first, active = state
        device = logits.device
        needed = sorted({r // n for r in rows} - prefilled.keys())
        if needed:
            p_logits, p_cache, _, lengths, width = self._prefill([prompts[i] for i in needed], 0, dtype)
            for j, i in enumerate(needed):
                own = slice(width - lengths[j], width)
                prefilled[i] = (p_logits[j], [(layer.keys[j:j + 1, :, own], layer.values[j:j + 1, :, own])
                                              for layer in p_cache.layers], lengths[j])
        width = max(prefilled[r // n][2] for r in rows)
        if cache is None:
            cache = slot_cache(prefilled[rows[0] // n][1], budget, width, width + reserve)
            mask = mask.new_zeros((0, width))
        elif width > mask.shape[1]:  # a prompt longer than the filled columns: widen them in front
            grow = width - mask.shape[1]
            for layer in cache.layers:
                layer.shift_columns(grow)
            mask, first = torch.cat([mask.new_zeros((len(mask), grow)), mask], dim=1), first + grow
        columns, at = mask.shape[1], len(active)
        new_logits, new_mask, new_pos, new_first = [], [], [], []
        for p in dict.fromkeys(r // n for r in rows):  # each prompt's admitted rows are consecutive
            count = sum(1 for r in rows if r // n == p)
            p_logits, kv, length = prefilled[p]
            for layer, (k, v) in zip(cache.layers, kv):
                layer.place(at, k.expand(count, -1, -1, -1), v.expand(count, -1, -1, -1), budget)
            at += count
            new_logits.append(p_logits.expand(count, -1))
            new_mask += [[0] * (columns - length) + [1] * length] * count
            new_pos += [length] * count
            new_first += [columns - length] * count
            if max(r for r in rows if r // n == p) % n == n - 1:  # its last sample is in: the copy is no longer needed
                del prefilled[p]
        if not len(logits):
            logits = logits.new_zeros((0, new_logits[0].shape[-1]))
        tensor = partial(torch.tensor, dtype=torch.long, device=device)
        return cache, (torch.cat([logits] + new_logits), torch.cat([mask, tensor(new_mask)]),
                       torch.cat([next_pos, tensor(new_pos)]), torch.cat([first, tensor(new_first)]),
                       torch.cat([active, tensor(rows)]))


def _whole(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _row_keys(stream_ids: Sequence[int], n: int, device) -> torch.Tensor:
    """The stream key of each output row (prompt i's sample j: ``stream_ids[i] * n + j``)."""
    return (torch.tensor(stream_ids, dtype=torch.long, device=device)[:, None] * n
            + torch.arange(n, device=device)).reshape(-1)


def _stream_seed(seed: int | None, device) -> int:
    """``seed``, or unseeded, one drawn from the device's default generator (torch.manual_seed governs it)."""
    return seed if seed is not None else int(torch.randint(0, 1 << 62, (), device=device).item())


def row_uniforms(seed: int, rows: torch.Tensor, steps) -> torch.Tensor:
    """U[0, 1) for output row ``rows[i]`` at its token ``steps[i]`` (a list or tensor like ``rows``), a function of
    (seed, row, step) alone: a SplitMix64 hash of the counter ``row * 2**32 + step``, top 24 bits. A row samples the
    same tokens whichever rows share its batch and whatever the row budget. int64 products wrap, as on every torch
    device."""
    device = rows.device
    steps = torch.as_tensor(steps, dtype=torch.long, device=device)
    z = (rows.long() * (1 << 32) + steps) * _signed(_GOLDEN) + _signed(_splitmix(seed))
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _shr(z, 31)
    return _shr(z, 40).float() * 2.0 ** -24


_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix(x: int) -> int:
    z = (x * _GOLDEN + _GOLDEN) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return z ^ (z >> 31)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before generating")
    return list(dict.fromkeys(int(i) for i in ids))


def cache_argument(model) -> str:
    """The name a transformers model's forward takes its KV cache by: ``cache`` (transformers 5.2x, which
    deprecates the old name) or ``past_key_values`` (earlier releases). A PEFT wrapper's is its base model's."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name (:func:`cache_argument`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _device(model) -> torch.device:
    return next(model.parameters()).device
