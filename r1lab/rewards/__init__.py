"""Rewards: plain functions found by name (see :mod:`r1lab.rewards.registry`).

Importing this package registers the built-in rewards (``accuracy``, the task's own verifier; ``format``,
``tag_count``, ``language_consistency``, ``overlong``, and ``code``, which runs programs in :mod:`r1lab.sandbox`).
:func:`r1lab.rewards.build.build_rewards` makes a run's rewards from their names and weights. The math verifier
(:mod:`r1lab.rewards.math`) is heavy and is imported by whoever needs it, not here.
"""

from r1lab.rewards import accuracy, code, format, language, length  # noqa: F401  (register the built-in rewards)
from r1lab.rewards.registry import NEEDS, REWARDS, SETTINGS, RewardFn, RewardScores, get_reward, register, score

__all__ = ["NEEDS", "REWARDS", "SETTINGS", "RewardFn", "RewardScores", "get_reward", "register", "score"]
