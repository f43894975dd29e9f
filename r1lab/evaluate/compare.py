"""``r1lab eval --compare runA runB``: is B better than A by more than the noise?

For each benchmark in both runs, the per-problem pass@1 (mean correctness of a problem's samples) is paired
by problem (the same problem in both runs) and the mean difference B - A gets a 95% percentile-bootstrap
interval over problems. Pairing removes the problems' own difficulty from the noise, so it detects smaller
differences than comparing two separate intervals. The difference is "larger than the noise" when its
interval excludes 0. Runs with different ``--limit`` are compared on the problems they share; runs whose
benchmark came from different data (its ``source``: a file, the hub, a task's options) are refused, since the
same position or id would then name different problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from r1lab.evaluate.batches import read_complete_batches
from r1lab.evaluate.metrics import bootstrap_ci
from r1lab.evaluate.report import folder_name


def per_problem_pass1(run: Path, benchmark: str, result: dict) -> dict[str, float]:
    """``{problem key: mean correctness}`` over the samples the run's summary ``result`` scored (the file may hold
    more, from a run with a larger ``--limit``); key: position and id."""
    path = run / folder_name(benchmark) / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} an r1lab eval run folder?")
    if not isinstance(result.get("n_problems"), int) or not isinstance(result.get("k"), int):
        raise ValueError(f"{run}/summary.json does not say how many problems and samples {benchmark} scored: is it "
                         "an r1lab eval run?")
    n = result["n_problems"]
    problems = read_complete_batches(path, n, max(1, n), result["k"], repair=False).get(0)
    if problems is None:
        raise ValueError(f"{path} does not hold the samples of the {n} problems {run}/summary.json scored")
    return {f"{recs[0]['problem']}:{recs[0]['id']}": sum(float(r["correct"] or 0.0) for r in recs) / len(recs)
            for recs in problems}


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
        ra, rb = summaries[0]["benchmarks"][name], summaries[1]["benchmarks"][name]
        sources = [r.get("source") or r.get("settings", {}).get("source") for r in (ra, rb)]
        if sources[0] != sources[1]:
            raise ValueError(f"{name}: the two runs used different data ({sources[0]} in {a}, {sources[1]} in "
                             f"{b}); problems are paired by position and id, so only runs on the same data compare")
        pa, pb = per_problem_pass1(a, name, ra), per_problem_pass1(b, name, rb)
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
