"""Many sandbox jobs at once, results in the order given.

Each job is its own process tree under :func:`r1lab.sandbox.run.run`, so a job that times out, crashes or
floods its output is killed on its own and cannot poison the others; the pool's threads only wait.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_many(jobs: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """Call each job (a no-argument function that runs sandboxes) on a pool; result i belongs to job i."""
    workers = workers or max(2, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))
