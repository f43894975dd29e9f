"""Rewards: plain functions found by name (see :mod:`r1lab.rewards.registry`).

Importing this package registers the built-in rewards: ``accuracy``, the task's own verifier; the format rewards
``format``, ``tag_count``, ``code_format`` and ``think_format`` (:mod:`~r1lab.rewards.format`, with the run's
``tags``); ``language_consistency``; ``overlong``; the shaping rewards ``cosine``, ``repetition`` and
``reasoning_steps`` (:mod:`~r1lab.rewards.shaping`); and ``code``, which runs programs in :mod:`r1lab.sandbox`.
:func:`r1lab.rewards.build.build_rewards` makes a run's rewards from their names and weights. The math verifier
(:mod:`r1lab.rewards.math`) is heavy and is imported by whoever needs it, not here.
"""

from r1lab.rewards import accuracy, code, format, language, length, shaping  # noqa: F401  (register the built-ins)
from r1lab.rewards.registry import NEEDS, REWARDS, SETTINGS, RewardFn, RewardScores, get_reward, register, score

__all__ = ["NEEDS", "REWARDS", "SETTINGS", "RewardFn", "RewardScores", "get_reward", "register", "score"]
