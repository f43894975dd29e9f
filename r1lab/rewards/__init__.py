"""Rewards: plain functions found by name (see :mod:`r1lab.rewards.registry`).

Importing this package registers the built-in rewards (``format``, ``tag_count``, ``language_consistency``,
``overlong``, and ``code``, which runs programs in :mod:`r1lab.sandbox`). The math verifier
(:mod:`r1lab.rewards.math`) is heavy and is imported by whoever needs it, not here.
"""

from r1lab.rewards import code, format, language, length  # noqa: F401  (register the built-in rewards)
from r1lab.rewards.registry import REWARDS, RewardFn, RewardScores, get_reward, register, score

__all__ = ["REWARDS", "RewardFn", "RewardScores", "get_reward", "register", "score"]
