"""Generation engines: one interface (:class:`Engine`) for RL, evaluation, sampling and serving."""

from r1lab.engine.base import Completion, Engine, SamplingParams
from r1lab.engine.torch_engine import TorchEngine

__all__ = ["Completion", "Engine", "SamplingParams", "TorchEngine"]
