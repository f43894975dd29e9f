"""Writing files so that a reader (or a crash) never sees half of one: write beside, then rename over."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

#: the file whose presence makes a checkpoint folder complete; it holds the checkpoint's metadata (JSON)
CHECKPOINT_MARKER = "r1lab_complete.json"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: the old content or the new, never a mix."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """``rows`` as JSON lines, atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
