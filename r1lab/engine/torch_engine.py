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

It simplifies: prompts are processed in chunks that fit ``max_batch`` rows (no continuous batching), and
the cache is HF's ``DynamicCache``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from r1lab.engine.base import Completion, OnToken, SamplingParams
from r1lab.engine.fast_decode import FastDecoder, supports
from r1lab.engine.kv_cache import buffer_cache, compaction_moves

#: new-token positions reserved in the KV cache up front; a longer budget (R1 evaluates with 32,768) grows the
#: buffers by doubling only if some row gets that far, instead of reserving memory most rows never use
RESERVE_TOKENS = 2048


class TorchEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, compact_fraction: float = 0.0,
                 use_fast_decode: bool = True):
        self.model = model
        self.use_fast_decode = use_fast_decode
        self._fast: tuple[tuple, FastDecoder] | None = None  # (weight versions it was built from, decoder)
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

        ``on_token(prompt_index, sample_index, token_id)`` is called for every sampled token as it is decoded
        (a server streams from it); returning False ends that sample at once with finish reason "abort"."""
        if not prompts:
            return []
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: give at least one token")
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        per_chunk = max(1, self.max_batch // params.n)
        fast = self._fast_decoder(min(len(prompts), per_chunk) * params.n)
        results: list[list[Completion]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start:start + per_chunk]
                results.extend(self._generate_chunk(chunk, start, params, generator, fast, on_token))
        finally:
            self.model.train(was_training)
        return results

    def _fast_decoder(self, batch_hint: int) -> FastDecoder | None:
        """The fused/packed decoder, rebuilt only when a weight changed since the last call (an optimizer step
        bumps every trained tensor's version), so a server or an evaluation does not repack per request."""
        if not (self.use_fast_decode and supports(self.model)):
            return None
        versions = tuple(p._version for p in self.model.parameters())
        if self._fast is None or self._fast[0] != versions:
            self._fast = (versions, FastDecoder(self.model, batch_hint=batch_hint))
        return self._fast[1]

    def _generate_chunk(self, prompts, offset, params: SamplingParams, generator, fast, on_token=None):
        n, device = params.n, _device(self.model)
        lengths = torch.tensor([len(p) for p in prompts])
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token sits at the same column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        # Prefill each prompt once (only the last position needs the LM head), then copy to its n samples.
        cache = buffer_cache(width + min(params.max_new_tokens, RESERVE_TOKENS))
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                         position_ids=positions.to(device), past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)  # (B, V)
        if n > 1:
            cache.batch_repeat_interleave(n)
        mask = mask.repeat_interleave(n, dim=0).to(device)  # (B, T)
        next_pos = lengths.repeat_interleave(n).to(device)  # (B,)

        rows = len(prompts) * n
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        active = torch.arange(rows)  # which output row each live batch row writes to
        stop_ids = (set() if params.ignore_eos else set(self.eos_ids)) | set(params.stop_token_ids)
        tail_tokens = max((len(s) for s in params.stop), default=0) + 2

        for step in range(params.max_new_tokens):
            # one uniform per output row and step, drawn for all rows: compaction never shifts the random stream
            uniform = torch.rand(rows, generator=generator)[active]
            token, logprob = _sample(logits, params, uniform)
            live = []
            for b, (row, tok, lp) in enumerate(zip(active.tolist(), token.tolist(), logprob.tolist())):
                if finish[row] is not None:
                    continue  # finished earlier, waiting to be compacted away
                tokens[row].append(tok)
                logprobs[row].append(lp)
                if tok in stop_ids or (params.stop and self._hits_stop(tokens[row], params.stop, tail_tokens)):
                    finish[row] = "stop"
                elif on_token is not None and on_token(offset + row // n, row % n, tok) is False:
                    finish[row] = "abort"
                else:
                    live.append(b)
            if not live or step == params.max_new_tokens - 1:
                break
            if len(active) - len(live) >= max(1, self.compact_fraction * len(active)):
                # drop finished rows: live rows past the new end move into the holes (only they are copied)
                src, dst = compaction_moves(live)
                src_t, dst_t = torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long)
                n_live = len(live)
                for layer in cache.layers:
                    layer.move_rows(src_t.to(device), dst_t.to(device), n_live)
                for t in (active, token, mask, next_pos):
                    t[dst_t.to(t.device)] = t[src_t.to(t.device)]
                active, token, mask, next_pos = active[:n_live], token[:n_live], mask[:n_live], next_pos[:n_live]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            if fast is not None:
                bias = torch.zeros(mask.shape, dtype=logits.dtype, device=device).masked_fill_(mask == 0, float("-inf"))
                logits = fast.step(token.to(device), next_pos, cache, bias)
            else:
                out = self.model(input_ids=token.view(-1, 1).to(device), attention_mask=mask,
                                 position_ids=next_pos.view(-1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

        def completion(row: int) -> Completion:
            text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
            return Completion(prompt_index=offset + row // n, token_ids=tokens[row], logprobs=logprobs[row],
                              finish_reason=finish[row] or "length",
                              text=_cut_at_stop(text, params.stop, params.include_stop_str_in_output))

        return [[completion(row) for row in range(i * n, (i + 1) * n)] for i in range(len(prompts))]

    def _hits_stop(self, row_tokens: list[int], stop: Sequence[str], tail_tokens: int) -> bool:
        tail = self.tokenizer.decode(row_tokens[-tail_tokens:], skip_special_tokens=False)
        return any(s in tail for s in stop)


def _sample(logits: torch.Tensor, params: SamplingParams, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row (``uniform``: one U(0,1) draw per row); return it with its log-prob under the
    temperature-scaled distribution (before top-k/top-p), which is what the trainer recomputes."""
    if params.temperature == 0:
        token = logits.argmax(dim=-1)
        logprob = torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]
        return token, logprob
    scaled = logits / params.temperature if params.temperature != 1 else logits  # (B, V)
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, 1)
    if params.top_k or params.top_p < 1:
        filtered = _top_k_top_p(scaled, params.top_k, params.top_p)
        probs = torch.exp(filtered - torch.logsumexp(filtered, dim=-1, keepdim=True))
    else:
        probs = torch.exp(scaled - lse)
    token = _inverse_cdf(probs, uniform)
    return token, scaled.gather(-1, token[:, None])[:, 0] - lse[:, 0]


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Sample one index per row from ``probs`` (B, V) with one uniform per row, in two levels: pick a block of
    ``block`` entries from the block sums, then an entry inside it. A full-length cumsum is sequential and was
    the slowest part of sampling; this touches the (B, V) array once."""
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
    if bad.any():
        token[bad] = torch.multinomial(probs[bad], 1)[:, 0]
    return token


#: the nucleus is looked for among this many most likely tokens first (a top-k is ~20x cheaper than sorting a
#: 49k vocabulary per row); rows whose nucleus is wider fall back to the full sort
NUCLEUS_CANDIDATES = 256


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (the most likely token always survives). A token is in the
    nucleus when the probability of the tokens more likely than it is at most ``top_p``."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p >= 1.0:
        return logits
    k = min(NUCLEUS_CANDIDATES, logits.shape[-1])
    top, order = torch.topk(logits, k, dim=-1)  # (B, k), most likely first
    probs = torch.exp(top - torch.logsumexp(logits, dim=-1, keepdim=True))
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely candidates
    wide = torch.zeros(len(logits), dtype=torch.bool)
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


def _cut_at_stop(text: str, stop: Sequence[str], include: bool) -> str:
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text
    index, s = min(hits)
    return text[:index + len(s)] if include else text[:index]


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
