"""Rewards: plain functions found by name (see :mod:`r1lab.rewards.registry`).

Importing this package registers the built-in rule rewards (``format``, ``tag_count``,
``language_consistency``, ``overlong``). The math verifier (:mod:`r1lab.rewards.math`) is heavy and is
imported by whoever needs it, not here.
"""

from r1lab.rewards import format, language, length  # noqa: F401  (register the built-in rewards)
from r1lab.rewards.registry import REWARDS, RewardFn, RewardScores, get_reward, register, score

__all__ = ["REWARDS", "RewardFn", "RewardScores", "get_reward", "register", "score"]
