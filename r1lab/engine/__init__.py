"""Generation engines: one interface (:class:`Engine`) for RL, evaluation, sampling and serving; vLLM (optional,
``r1lab[vllm]``) is imported only when a :class:`VllmEngine` is built."""

from r1lab.engine.base import Completion, Engine, SamplingParams
from r1lab.engine.torch_engine import TorchEngine
from r1lab.engine.vllm_engine import VllmEngine

__all__ = ["Completion", "Engine", "SamplingParams", "TorchEngine", "VllmEngine"]
