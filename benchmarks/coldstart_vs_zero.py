"""The R1 cold-start finding at laptop scale: GRPO from a cold-start SFT checkpoint vs GRPO from the raw model.

Runs, on the embedded SmolLM2-135M and the default ``r1lab zero`` task (1-digit +, -, *):

1. ``r1lab coldstart``: 200 procedural traces (reasoning in <think>, answer in <answer>), each verified;
2. ``r1lab sft`` on them (2 epochs, full fine-tuning);
3. ``r1lab zero`` from the raw model and from the SFT checkpoint, same settings and steps;

then prints held-out accuracy and format rate before/after each run, mean reward over the first and last
steps, and saves a side-by-side plot of reward and format rate per step (``OUT/coldstart_vs_zero.png``).
Reuses finished stages found in OUT. About 15 minutes on a 2-core CPU.

Usage: ``python benchmarks/coldstart_vs_zero.py [--out runs/coldstart-demo] [--steps 40]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from r1lab.cli import main as r1lab
from r1lab.plots import plot_runs


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/coldstart-demo")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "coldstart.jsonl"
    if not data.is_file():
        assert r1lab(["coldstart", "--out", str(data)]) == 0
    if not (out / "sft" / "final").is_dir():
        assert r1lab(["sft", "--data", str(data), "--out", str(out / "sft")]) == 0
    runs = {"raw model": out / "zero-raw", "cold start": out / "zero-coldstart"}
    models = {"raw model": "smollm2-135m", "cold start": str(out / "sft" / "final")}
    for label, run in runs.items():
        if not (run / "summary.json").is_file():
            assert r1lab(["zero", "--model", models[label], "--out", str(run), "--steps", str(args.steps)]) == 0
    print("\n=== GRPO from the raw model vs from the cold-start checkpoint ===")
    for label, run in runs.items():
        s = json.loads((run / "summary.json").read_text())
        b, a = s["eval_before"], s["eval_after"]
        m = metrics(run)
        first = sum(r["reward"] for r in m[:5]) / 5
        last = sum(r["reward"] for r in m[-5:]) / 5
        fmt_last = sum(r["format_rate"] for r in m[-5:]) / 5
        print(f"{label:>10}: held-out accuracy {b['accuracy']:.1%} -> {a['accuracy']:.1%}, held-out format "
              f"{b['format_rate']:.1%} -> {a['format_rate']:.1%}; mean reward first 5 steps {first:.3f}, last 5 "
              f"{last:.3f}; sample format rate last 5 steps {fmt_last:.1%}")
    plot = plot_runs(out / "coldstart_vs_zero.png", {label: metrics(run) for label, run in runs.items()},
                     keys=("reward", "format_rate", "accuracy"))
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()
