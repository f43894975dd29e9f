"""``r1lab eval --compare runA runB``: is B better than A by more than the noise?

For each benchmark in both runs, the per-problem pass@1 (mean correctness of a problem's samples) is paired
by problem (the same problem in both runs) and the mean difference B - A gets a 95% percentile-bootstrap
interval over problems. Pairing removes the problems' own difficulty from the noise, so it detects smaller
differences than comparing two separate intervals. The difference is "larger than the noise" when its
interval excludes 0. Runs over different problem sets are compared on the problems they share.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from r1lab.evaluate.metrics import bootstrap_ci
from r1lab.evaluate.report import folder_name
from r1lab.files import read_log


def per_problem_pass1(run: Path, benchmark: str) -> dict[str, float]:
    """``{problem key: mean correctness}`` from a run's samples (key: benchmark id, else position)."""
    path = run / folder_name(benchmark) / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} an r1lab eval run folder?")
    sums: dict[str, list[float]] = {}
    for r in read_log(path):
        sums.setdefault(f"{r['problem']}:{r['id']}", []).append(float(r["correct"] or 0.0))
    return {key: sum(v) / len(v) for key, v in sums.items()}


def compare_runs(a: str | Path, b: str | Path) -> list[dict]:
    a, b = Path(a), Path(b)
    summaries = []
    for run in (a, b):
        if not (run / "summary.json").is_file():
            raise FileNotFoundError(f"{run}/summary.json not found: give two finished `r1lab eval` run folders")
        summaries.append(json.loads((run / "summary.json").read_text()))
    shared = [name for name in summaries[0]["benchmarks"] if name in summaries[1]["benchmarks"]]
    if not shared:
        raise ValueError(f"{a} and {b} have no benchmark in common "
                         f"({sorted(summaries[0]['benchmarks'])} vs {sorted(summaries[1]['benchmarks'])})")
    rows = []
    for name in shared:
        pa, pb = per_problem_pass1(a, name), per_problem_pass1(b, name)
        keys = sorted(set(pa) & set(pb))
        if not keys:
            raise ValueError(f"{name}: the two runs share no problems")
        diff = np.array([pb[key] - pa[key] for key in keys])
        low, high = bootstrap_ci(diff)
        rows.append({"benchmark": name, "n": len(keys), "a": float(np.mean([pa[k] for k in keys])),
                     "b": float(np.mean([pb[k] for k in keys])), "difference": float(diff.mean()),
                     "ci_low": low, "ci_high": high, "significant": bool(low > 0 or high < 0)})
    return rows


def format_comparison(rows: list[dict], a: str, b: str) -> str:
    lines = [f"A = {a}", f"B = {b}", "pass@1 on the problems both runs scored; B - A with a 95% paired bootstrap "
             "interval over problems", ""]
    for r in rows:
        verdict = ("larger than the noise" if r["significant"] else "within the noise (the interval contains 0)")
        lines.append(f"{r['benchmark']}: A {r['a']:.1%}, B {r['b']:.1%}, B - A {r['difference']:+.1%} "
                     f"[{r['ci_low']:+.1%}, {r['ci_high']:+.1%}] over {r['n']} problems: {verdict}")
    return "\n".join(lines)
