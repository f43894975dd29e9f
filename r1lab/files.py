"""Writing files so that a reader (or a crash) never sees half of one: write beside, then rename over."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

#: the file whose presence makes a checkpoint folder complete; it holds the checkpoint's metadata (JSON)
CHECKPOINT_MARKER = "r1lab_complete.json"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: the old content or the new, never a mix."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def to_json(value, indent: int | None = None) -> str:
    """Strict JSON: NaN and infinities (a metric with nothing to average) become ``null``, which every parser reads.

    >>> to_json({"loss": float("nan"), "n": [1, float("inf")]})
    '{"loss": null, "n": [1, null]}'
    """
    return json.dumps(_finite(value), indent=indent, ensure_ascii=False, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, value) -> None:
    """``value`` as strict, indented JSON, atomically."""
    write_atomic(path, to_json(value, indent=2) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """``rows`` as JSON lines, atomically."""
    write_atomic(path, "".join(to_json(row) + "\n" for row in rows))


def read_log(path: Path) -> list[dict]:
    """The rows of a JSON-lines log written by :func:`append_jsonl`. A crash can cut only the last line, so a
    torn last line is left out; a bad line elsewhere is an error naming it."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line)) if line.strip() else None
        except json.JSONDecodeError as e:
            if n < len(lines):
                raise ValueError(f"{path}:{n} is not a JSON line ({e}); fix or remove that line") from None
    return rows


def append_jsonl(path: Path, *rows: dict) -> None:
    """Add ``rows`` to a JSON-lines log and sync it to disk, so a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(to_json(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
