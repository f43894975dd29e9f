"""The generation interface shared by RL, evaluation, rejection sampling, distillation and the server.

Token ids in, token ids out. Every engine (:mod:`r1lab.engine.torch_engine`, :mod:`r1lab.engine.vllm_engine`,
:mod:`r1lab.engine.openai_engine`) implements all of :class:`Engine`, and callers use nothing else: they never ask
which engine they hold. What an engine cannot do is a no-op where it means nothing (the torch engine samples from
the very module being trained, so it has no weights to load and no memory to give back) and an error that says
what to use instead where it matters (an endpoint cannot take a trainer's weights). What an engine *is* (whether it
can follow a trainer, whether its log-probs are real) is stated once, in the registry
(:mod:`r1lab.engine.registry`), and checked before anything is loaded.

A prompt is made by the engine that will continue it (:meth:`Engine.prompt`): a local engine renders the
conversation with r1lab's template and tokenizes it; an endpoint's chat API sends the conversation and lets the
server apply its own template.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from r1lab.chat import prepare_messages, render

#: ``on_token(prompt_index, sample_index, token_id) -> bool | None``: False stops that sample ("abort")
OnToken = Callable[[int, int, int], "bool | None"]
#: what :meth:`Engine.load_weights` takes: ``(HF parameter name, tensor)`` pairs, or a state dict
Weights = Iterable[tuple[str, torch.Tensor]]


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1`` switch those filters off."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False  # keep going past EOS (benchmarks: every row decodes max_new_tokens)
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Prompt:
    """One prompt as its engine takes it (:meth:`Engine.prompt` makes it).

    ``token_ids``: what a local engine continues (empty for an endpoint that renders the conversation itself).
    ``messages``: the conversation, after R1's rules (system prompt folded in, old reasoning dropped).
    ``text``: the rendered prompt (for an endpoint's chat API, the conversation as the server is sent it).
    ``prefill``: the forced start of the reply, already at the end of ``text`` (with a ``<think>`` the template
    itself opens); rewards judge ``prefill + completion.text``.
    """

    token_ids: tuple[int, ...]
    messages: tuple[dict, ...] = ()
    text: str = ""
    prefill: str = ""

    @property
    def thinking(self) -> bool:
        """The prompt opened the think block, so the reply starts as reasoning."""
        return self.text.rstrip().endswith("<think>")

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the temperature-scaled policy ([] if unknown)
    finish_reason: str  # "stop" (EOS, stop id or stop string), "length" (hit max_new_tokens), "abort" (on_token)
    text: str = ""  # decoded, cut at a stop string; an endpoint's split reasoning comes back inside <think></think>
    usage: dict = field(default_factory=dict)  # what an endpoint reported (tokens, retries); {} for local engines

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def n_tokens(self) -> int:
        """Its length in tokens: the ids it holds, else as the endpoint counted them (0 if it did not say)."""
        return len(self.token_ids) or int(self.usage.get("completion_tokens") or 0)


class Engine(Protocol):
    #: the tokenizer prompts are encoded and replies decoded with (an endpoint's may be None: it sends text)
    tokenizer: object
    #: prompt + reply tokens the model attends to; None where unknown (an endpoint that does not say): replies
    #: are then not cut to it here
    context_length: int | None

    def prompt(self, messages: list[dict], template: str, prefill: str | None = None) -> Prompt:
        """The conversation as this engine takes it: rendered with ``template`` (``prefill`` overrides the
        template's own forced start of the reply) and tokenized; or, for an endpoint's chat API, the messages."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def generate(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions for each prompt (a :class:`Prompt`, or token ids for a local engine);
        result[i] belongs to prompts[i].

        ``on_token`` sees each token as it is sampled, in order, and may stop its sample (see :data:`OnToken`).
        ``stream_ids``: one key >= 0 per prompt; with ``params.seed`` set, sample j of prompt i then depends on
        (seed, ``stream_ids[i]``, j) alone, not on the other prompts of the call (as far as the engine's
        arithmetic allows: see each engine's docstring)."""
        ...

    def each(self, prompts: Sequence[Prompt | Sequence[int]], params: SamplingParams,
             on_token: OnToken | None = None, stream_ids: Sequence[int] | None = None,
             ) -> Iterator[tuple[int, list[Completion]]]:
        """What :meth:`generate` makes, handed back as it is ready: ``(i, prompt i's completions)``, in any order,
        so a caller can save each prompt's samples before the rest are done (an endpoint: as its requests return;
        a local engine: a batch of prompts at a time, :func:`in_batches`). The same samples as :meth:`generate`
        given ``stream_ids``."""
        ...

    def load_weights(self, weights: Weights) -> None:
        """Sample from these policy weights from now on (HF names; a no-op for an engine that samples from the
        trained module itself)."""
        ...

    def sleep(self) -> None:
        """Give back the accelerator memory the engine holds, while a trainer updates (a no-op where there is
        none to give, or the platform cannot)."""
        ...

    def wake_up(self) -> None:
        """Take back what :meth:`sleep` gave, ready to sample."""
        ...

    def close(self) -> None:
        """Free what the engine holds (threads, connections, a vLLM engine); the engine is unusable after."""
        ...


def prompt_ids(prompt: Prompt | Sequence[int]) -> list[int]:
    """The token ids a local engine continues, from a :class:`Prompt` or bare ids."""
    return [int(t) for t in (prompt.token_ids if isinstance(prompt, Prompt) else prompt)]


def check_prompts(prompts: Sequence[Prompt | Sequence[int]], stream_ids: Sequence[int] | None) -> tuple[
        list[list[int]], list[int] | None]:
    """Every prompt's token ids (none may be empty) and the stream keys (one int >= 0 per prompt, or None)."""
    ids = [prompt_ids(p) for p in prompts]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} is empty: give at least one token")
    if stream_ids is None:
        return ids, None
    keys = [int(key) for key in stream_ids]
    if len(keys) != len(prompts) or (keys and min(keys) < 0):
        raise ValueError(f"stream_ids: give one key >= 0 per prompt ({len(prompts)}), got {len(keys)}")
    return ids, keys


def in_batches(generate, prompts: Sequence, params: SamplingParams, on_token: OnToken | None,
               stream_ids: Sequence[int] | None, rows: int) -> Iterator[tuple[int, list[Completion]]]:
    """:meth:`Engine.each` for an engine that decodes batches: ``generate`` over about ``rows`` sampled rows of
    ``prompts`` at a time, each prompt's samples keyed by its stream id (its index when none is given), so they
    are those of one :meth:`Engine.generate` call over all of them."""
    keys = list(range(len(prompts))) if stream_ids is None else [int(key) for key in stream_ids]
    size = max(1, rows // params.n)
    for start in range(0, len(prompts), size):
        shift = (lambda p, j, t, start=start: on_token(p + start, j, t)) if on_token else None
        done = generate(prompts[start:start + size], params, shift, keys[start:start + size])
        yield from enumerate(done, start)


def render_prompt(tokenizer, messages: list[dict], template: str, prefill: str | None = None) -> Prompt:
    """:meth:`Engine.prompt` for an engine that runs the model here: the conversation rendered with ``template``
    (:func:`r1lab.chat.render`, R1's rules applied) and tokenized with ``tokenizer``, no special tokens added."""
    rendered = render(messages, template, tokenizer, prefill=prefill)
    ids = tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    return Prompt(token_ids=tuple(ids), messages=tuple(prepare_messages(messages)), text=rendered.text,
                  prefill=rendered.prefill)
