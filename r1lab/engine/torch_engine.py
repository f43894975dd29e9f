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
- **Two decode paths, one result.** ``decode="dynamic"`` (the default off CUDA) syncs with the host every token
  and shrinks the batch as rows finish; ``decode="static"`` (the default on CUDA, :mod:`r1lab.engine.static_decode`)
  keeps all state on the device, replays CUDA graphs and syncs every ``sync_every`` tokens. Both draw their
  uniforms from one generator on the model's device, seeded by ``params.seed``; on a CPU the first chunk's
  stream is the same for both, so they sample the same tokens.

Every tensor the engine makes is made on the model's device. It simplifies: prompts are processed in chunks that
fit ``max_batch`` rows (no continuous batching).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from r1lab.engine import static_decode
from r1lab.engine.base import Completion, OnToken, SamplingParams
from r1lab.engine.fast_decode import SUPPORTED, FastDecoder, supports
from r1lab.engine.kv_cache import buffer_cache, compaction_moves
from r1lab.engine.sampling import sample
from r1lab.engine.static_decode import StaticDecoding
from r1lab.engine.transcript import Transcript

#: new-token positions reserved in the KV cache up front; a longer budget (R1 evaluates with 32,768) grows the
#: buffers by doubling only if some row gets that far, instead of reserving memory most rows never use
RESERVE_TOKENS = 2048

DECODE_PATHS = ("auto", "static", "dynamic")


class TorchEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, compact_fraction: float = 0.0,
                 use_fast_decode: bool = True, dtype: torch.dtype | None = None, decode: str = "auto",
                 sync_every: int = 32, cuda_graphs: bool = True):
        """``dtype``: the precision decoding computes in (None: the weights'). ``decode``: "auto" (static on CUDA
        where :func:`r1lab.engine.static_decode.supports` the model, dynamic elsewhere), "static" or "dynamic".
        ``sync_every``: tokens the static path decodes between host syncs; ``cuda_graphs``: whether it captures
        them (off: the same steps, eager)."""
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
        self.compact_fraction = compact_fraction
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        #: prompt + reply tokens the model can attend to (unbounded when its config does not say)
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 1 << 30

    def load_weights(self, state_dict) -> None:
        """Nothing to do: the engine samples from the same module the trainer updates."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions per prompt; result[i] holds prompt i's completions.

        ``on_token(prompt_index, sample_index, token_id)`` is called for every sampled token in order (the dynamic
        path calls it as each token is decoded, the static path every ``sync_every`` tokens; a server streams from
        it); returning False ends that sample at once with finish reason "abort"."""
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: give at least one token")
        device = _device(self.model)
        dtype = self.dtype or next(self.model.parameters()).dtype
        generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        per_chunk = max(1, self.max_batch // params.n)
        fast = self._fast_decoder(min(len(prompts), per_chunk) * params.n, dtype)
        static = fast is not None and (self.decode == "static" or (
            self.decode == "auto" and device.type == "cuda" and static_decode.supports(self.model)))
        decode_chunk = self._decode_static if static else self._decode_dynamic
        stop_ids = (set() if params.ignore_eos else set(self.eos_ids)) | set(params.stop_token_ids)
        results: list[list[Completion]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start:start + per_chunk]
                transcript = Transcript(self.tokenizer, len(chunk), params, stop_ids, start, on_token)
                decode_chunk(chunk, params, generator, fast, transcript, dtype)
                results.extend(transcript.completions())
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
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             past_key_values=buffer_cache(width + reserve), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        for layer in cache.layers:
            layer.cast(dtype)
        return out.logits[:, -1, :].float(), cache, mask, lengths, width

    def _decode_static(self, prompts, params: SamplingParams, generator, fast: FastDecoder, transcript: Transcript,
                       dtype: torch.dtype) -> None:
        logits, cache, _, lengths, width = self._prefill(prompts, 0, dtype)
        device = logits.device
        # every step's uniforms at once: on a CPU this is the stream the dynamic path draws step by step
        uniforms = torch.rand((params.max_new_tokens, len(prompts) * params.n), generator=generator, device=device)
        self._static.decode(fast, [(layer.keys, layer.values) for layer in cache.layers], logits, lengths, width,
                            params, uniforms, transcript, self.pad_id, RESERVE_TOKENS)

    def _decode_dynamic(self, prompts, params: SamplingParams, generator, fast: FastDecoder | None,
                        transcript: Transcript, dtype: torch.dtype) -> None:
        n, device = params.n, _device(self.model)
        logits, cache, mask, lengths, _ = self._prefill(prompts, min(params.max_new_tokens, RESERVE_TOKENS), dtype)
        # each prompt's cache is copied to its n samples
        logits = logits.repeat_interleave(n, dim=0)  # (B, V)
        if n > 1:
            cache.batch_repeat_interleave(n)
        mask = mask.repeat_interleave(n, dim=0)  # (B, T)
        next_pos = torch.tensor(lengths, device=device).repeat_interleave(n)  # (B,)
        rows = len(prompts) * n
        active = torch.arange(rows, device=device)  # which output row each live batch row writes to
        for step in range(params.max_new_tokens):
            # one uniform per output row and step, drawn for all rows: compaction never shifts the random stream
            uniform = torch.rand(rows, generator=generator, device=device)[active]
            token, logprob = sample(logits, params, uniform)
            live = []
            for b, (row, tok, lp) in enumerate(zip(active.tolist(), token.tolist(), logprob.tolist())):
                if not transcript.ended(row) and transcript.add(row, tok, lp):  # ended rows wait for compaction
                    live.append(b)
            if not live or step == params.max_new_tokens - 1:
                break
            if len(active) - len(live) >= max(1, self.compact_fraction * len(active)):
                # drop finished rows: live rows past the new end move into the holes (only they are copied)
                src, dst = compaction_moves(live)
                src_t = torch.tensor(src, dtype=torch.long, device=device)
                dst_t = torch.tensor(dst, dtype=torch.long, device=device)
                n_live = len(live)
                for layer in cache.layers:
                    layer.move_rows(src_t, dst_t, n_live)
                for t in (active, token, mask, next_pos):
                    t[dst_t] = t[src_t]
                active, token, mask, next_pos = active[:n_live], token[:n_live], mask[:n_live], next_pos[:n_live]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            if fast is not None:
                bias = torch.zeros(mask.shape, device=device).masked_fill_(mask == 0, float("-inf"))  # (B, T+1)
                logits = fast.step(token, next_pos, cache, bias)
            else:
                with self._autocast(dtype):
                    out = self.model(input_ids=token.view(-1, 1), attention_mask=mask,
                                     position_ids=next_pos.view(-1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before generating")
    return list(dict.fromkeys(int(i) for i in ids))


def _device(model) -> torch.device:
    return next(model.parameters()).device
