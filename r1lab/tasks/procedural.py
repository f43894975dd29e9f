"""Helpers for tasks that generate their own problems: seeded unique draws and a stable split.

The test split is the first ``n_test`` distinct problems a seed draws and the train split the next
``n_train``, so the test set stays the same when only ``n_train`` changes, and no test problem appears
in train. When the problem space is smaller than ``n_train + n_test`` the two shrink in proportion.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable


def unique_problems(draw: Callable[[random.Random], dict], key: Callable[[dict], Hashable], count: int,
                    seed: int, max_attempts: int | None = None) -> list[dict]:
    """Up to ``count`` problems from ``draw(rng)`` with distinct ``key``, in draw order.

    Fewer come back when ``max_attempts`` draws (default ``10 * count + 1000``) find no more.

    >>> len(unique_problems(lambda rng: {"n": rng.randrange(5)}, lambda p: p["n"], count=10, seed=0))
    5
    >>> unique_problems(lambda rng: {"n": rng.randrange(100)}, lambda p: p["n"], 3, seed=1)
    [{'n': 17}, {'n': 72}, {'n': 97}]
    """
    rng = random.Random(seed)
    attempts = max_attempts if max_attempts is not None else 10 * count + 1000
    found: dict[Hashable, dict] = {}
    for _ in range(attempts):
        if len(found) >= count:
            break
        problem = draw(rng)
        found.setdefault(key(problem), problem)
    return list(found.values())


def split_problems(problems: list[dict], n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """``(train, test)``: test first, then train; both scaled down when there are too few problems.

    >>> split_problems(list(range(10)), n_train=6, n_test=4)
    ([4, 5, 6, 7, 8, 9], [0, 1, 2, 3])
    >>> split_problems(list(range(11)), n_train=100, n_test=10)  # a small space: 1 test, 10 train
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0])
    """
    if len(problems) < n_train + n_test and problems:
        wanted = n_train + n_test
        n_test = min(len(problems) - 1, max(1, round(n_test * len(problems) / wanted))) if n_test else 0
    return problems[n_test : n_test + n_train], problems[:n_test]


#: the most problems a generated task draws (its draws take time in proportion)
MAX_PROBLEMS = 1_000_000


def check_int(name: str, value, low: int, high: int) -> None:
    """Refuse an option that is not a whole number from ``low`` to ``high`` (a bool, a float such as 1.5 or 1e400,
    a string), naming the option and the range.

    >>> check_int("digits", 3, 1, 30)
    >>> check_int("digits", 1.5, 1, 30)
    Traceback (most recent call last):
    ...
    ValueError: digits=1.5: must be a whole number, digits >= 1 and digits <= 30
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r}: must be a whole number, {name} >= {low} and {name} <= {high}")


def check_counts(n_train: int, n_test: int) -> None:
    check_int("n_train", n_train, 0, MAX_PROBLEMS)
    check_int("n_test", n_test, 0, MAX_PROBLEMS)
    if n_train + n_test == 0:
        raise ValueError(f"n_train={n_train} and n_test={n_test}: both must be >= 0 and not both 0")
