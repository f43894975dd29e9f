"""The generation interface shared by RL, evaluation, rejection sampling and the server.

Token ids in, token ids out. Every engine (the in-process torch one, :mod:`r1lab.engine.vllm_engine`) implements
:class:`Engine`: ``generate`` for a batch of prompts with ``n`` samples each, returning per-token log-probs
and a finish reason, and ``load_weights`` so a trainer can push new policy weights (a no-op for the torch
engine, which samples from the very module being trained).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: ``on_token(prompt_index, sample_index, token_id) -> bool | None``: False stops that sample ("abort")
OnToken = Callable[[int, int, int], "bool | None"]


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


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the temperature-scaled policy
    finish_reason: str  # "stop" (EOS, stop id or stop string), "length" (hit max_new_tokens), "abort" (on_token)
    text: str = ""  # decoded, cut at a stop string

    def __len__(self) -> int:
        return len(self.token_ids)


class Engine(Protocol):
    tokenizer: object

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: OnToken | None = None) -> list[list[Completion]]:
        """Sample ``params.n`` completions for each prompt (token ids); result[i] belongs to prompts[i].
        ``on_token`` sees each token as it is sampled and may stop its sample (see :data:`OnToken`)."""
        ...

    def load_weights(self, state_dict) -> None:
        """Make the engine sample from new policy weights."""
        ...
