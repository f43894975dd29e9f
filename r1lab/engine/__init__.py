"""Generation engines: one interface (:class:`Engine`) for RL, evaluation, sampling, distillation and serving,
and one registry (:mod:`r1lab.engine.registry`) every command opens its engine through (``--engine``). vLLM
(optional, ``r1lab[vllm]``) is imported only when a :class:`VllmEngine` is built, the ``openai`` client only when
an :class:`OpenAIEngine` is."""

from r1lab.engine.base import Completion, Engine, Prompt, SamplingParams
from r1lab.engine.openai_engine import OpenAIEngine
from r1lab.engine.registry import (
    ENGINES,
    check_engine,
    engine_for_policy,
    engine_kind,
    open_engine,
    sampling_precision,
)
from r1lab.engine.torch_engine import TorchEngine
from r1lab.engine.vllm_engine import VllmEngine

__all__ = ["ENGINES", "Completion", "Engine", "OpenAIEngine", "Prompt", "SamplingParams", "TorchEngine",
           "VllmEngine", "check_engine", "engine_for_policy", "engine_kind", "open_engine", "sampling_precision"]
