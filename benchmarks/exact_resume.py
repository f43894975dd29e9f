"""Exact resume, measured: a `r1lab zero` run killed with SIGKILL at random moments and resumed each time with
`--resume true`, against the same run never stopped. Prints where each kill landed, how long everything took, and
whether the metrics (timings aside), samples, summary and final weights are equal bit for bit.

Defaults: the embedded model with `r1lab zero`'s default settings, 12 steps, a checkpoint every step, 5 kills.
A kill lands in a random step (one to three steps past the last one logged), a random fraction of a step into it,
so it can fall while sampling, while updating or while a checkpoint is being written.

Usage::

    python benchmarks/exact_resume.py [--kills 5] [--steps 12] [--nproc 1] [--seed 1234] [--out DIR] [-- ZERO_ARGS]

With ``--nproc 2`` the run goes through torchrun; the kill goes to the launcher's session (the launcher and
torchrun), and the ranks, which torchrun starts in sessions of their own, die with torchrun (as they would with a
lost job). Arguments after ``--`` go to `r1lab zero` as they are. """

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r1lab.rl.run import results as outcome


def command(out: Path, steps: int, nproc: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "r1lab.cli", "zero", "--steps", str(steps), "--save-every", "1", "--out", str(out)]
    return cmd + (["--nproc", str(nproc)] if nproc > 1 else []) + extra


def logged_steps(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1234, help="where the kills land")
    parser.add_argument("--out", default=None, help="folder for both runs (default: a temporary one, removed)")
    parser.add_argument("zero_args", nargs="*", help="after --: more `r1lab zero` arguments")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="r1lab-exact-resume-"))
    root.mkdir(parents=True, exist_ok=True)
    straight, killed = root / "straight", root / "killed"

    t0 = time.monotonic()
    subprocess.run(command(straight, args.steps, args.nproc, args.zero_args), check=True,
                   stdout=subprocess.DEVNULL)
    straight_s = time.monotonic() - t0
    step_s = json.loads((straight / "summary.json").read_text())["seconds_per_step"]
    print(f"uninterrupted run: {straight_s:.0f} s ({step_s:.1f} s per step)", flush=True)

    rng, kills, t0 = random.Random(args.seed), [], time.monotonic()
    for _ in range(args.kills):
        resume = ["--resume", "true"] if (killed / "config.yaml").is_file() else []
        child = subprocess.Popen(command(killed, args.steps, args.nproc, args.zero_args) + resume,
                                 stdout=subprocess.DEVNULL, start_new_session=True)
        target = min(args.steps - 1, logged_steps(killed) + rng.randint(1, 3))
        while logged_steps(killed) < target and child.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, step_s))  # a random moment of the next step (or of its checkpoint)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            kills.append(logged_steps(killed))
            print(f"kill {len(kills)}: SIGKILL after {kills[-1]} logged steps", flush=True)
        child.wait()
    resume = ["--resume", "true"] if (killed / "config.yaml").is_file() else []
    subprocess.run(command(killed, args.steps, args.nproc, args.zero_args) + resume, check=True,
                   stdout=subprocess.DEVNULL)
    print(f"killed {len(kills)} times and resumed: {time.monotonic() - t0:.0f} s in all", flush=True)

    a, b = outcome(killed), outcome(straight)
    same = {key: a[key] == b[key] for key in a}
    for key, equal in same.items():
        print(f"  {key}: {'equal bit for bit' if equal else 'DIFFERENT'}")
    print(f"  steps logged: {len(a['metrics'])} (uninterrupted: {len(b['metrics'])}); "
          f"held-out accuracy after: {a['summary']['eval_after']['accuracy']:.1%} "
          f"(uninterrupted: {b['summary']['eval_after']['accuracy']:.1%})")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(same.values()) and len(kills) == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
