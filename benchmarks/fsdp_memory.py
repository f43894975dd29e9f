"""Memory per process: `r1lab zero --nproc N` replicated against sharded (`--parallel fsdp`), on the same run.

For each mode it runs a few GRPO steps and prints, per rank, the training state it holds (weights, gradients and
AdamW moments: its shards under FSDP; ``memory/train_state_mb``) and its peak memory (``memory/peak_mb_by_rank``:
the resident set on a CPU, which also counts the process itself, the engine's full copy of the policy and the
activations; allocated tensors on a GPU), from the run's own ``metrics.jsonl``. The step time is printed too, but on
a 2-core machine two processes only contend (see the README).

Usage: ``python benchmarks/fsdp_memory.py [--nproc 2] [--steps 3] [-- MORE_ZERO_ARGS]`` (default model: the
embedded one; ``-- --model HF_ID_OR_FOLDER`` for another, ``-- --beta 0.04`` to add a reference policy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("zero_args", nargs="*", help="after --: more `r1lab zero` arguments")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="r1lab-fsdp-memory-") as root:
        for mode in ("replicate", "fsdp"):
            out = Path(root) / mode
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "r1lab.cli", "zero", "--nproc", str(args.nproc), "--parallel", mode,
                            "--steps", str(args.steps), "--eval-examples", "4", "--out", str(out), *args.zero_args],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            peaks = rows[-1]["memory/peak_mb_by_rank"]
            print(f"{mode:>9}: training state {rows[-1]['memory/train_state_mb']:7.0f} MiB per rank; peak memory per "
                  f"rank {', '.join(f'{p:.0f}' for p in peaks)} MiB; median step "
                  f"{statistics.median(r['seconds'] for r in rows):.1f} s ({time.monotonic() - t0:.0f} s in all)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
