"""Records passed between the stages of an RL step."""

from __future__ import annotations

from dataclasses import dataclass, field

from r1lab.engine.base import Completion


@dataclass
class Group:
    """One prompt and the G completions sampled for it, with their scores."""

    example: dict
    prompt_ids: list[int]
    prefill: str
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)  # weighted total per completion
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: list[float] = field(default_factory=list)

    @property
    def responses(self) -> list[str]:
        """The whole assistant responses (prefill + generated text): what rewards and people read."""
        return [self.prefill + c.text for c in self.completions]

    @property
    def has_signal(self) -> bool:
        return max(self.rewards) - min(self.rewards) > 1e-6
