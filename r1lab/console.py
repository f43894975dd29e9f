"""What long work shows on the terminal: progress bars and log lines, both on stderr, neither breaking the other."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", **options) -> tqdm:
    """A progress bar on stderr that resizes with the terminal (``disable=True`` hides it)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, **options)


def log(text: str) -> None:
    """A status line on stderr, printed above any progress bar that is running."""
    tqdm.write(text, file=sys.stderr)


def say(text: str) -> None:
    """A line of a run's own output on stdout (a training step, a result), printed above any progress bar."""
    tqdm.write(text, file=sys.stdout)
