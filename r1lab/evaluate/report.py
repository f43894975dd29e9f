"""The evaluation report: a metric table per benchmark (value, 95% interval, spread over samples), a plot of
accuracy against k, and a histogram of response lengths for right and wrong answers. Markdown and HTML."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from r1lab.plots import save_figure  # noqa: E402


def folder_name(benchmark: str) -> str:
    """The folder of a benchmark's samples inside an eval run (``task:arithmetic`` -> ``task-arithmetic``)."""
    return benchmark.replace(":", "-").replace("/", "-")


def write_eval_report(out: Path, summary: dict, records: dict[str, list[dict]]) -> Path:
    """``report.md`` and ``report.html`` with their plots, from ``summary`` and each benchmark's ``records``: the
    samples of exactly the problems this run scored (``samples.jsonl`` may hold more, from runs with a larger
    ``--limit``)."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = [f"# Evaluation of `{summary['model']}`", "",
          f"Template `{summary['template']}`, engine `{summary.get('engine', 'torch')}`. Intervals: 95%, bootstrap "
          "over problems unless the table says otherwise; *sd over samples* is how much the number moves when each "
          "problem's samples are redrawn "
          "(another seed), problems fixed.", ""]
    parts = [f"<h1>Evaluation of <code>{html.escape(summary['model'])}</code></h1>",
             "<p>" + html.escape(md[2]).replace("`", "").replace("*sd over samples*", "<em>sd over samples</em>")
             + "</p>"]
    for name, result in summary["benchmarks"].items():
        k_plot = plot_accuracy_vs_k(plots / f"{folder_name(name)}_accuracy_vs_k.png", name, result)
        len_plot = plot_lengths(plots / f"{folder_name(name)}_lengths.png", name, records[name])
        s = result["settings"]
        facts = (f"{result['n_problems']} problems x k = {result['k']} samples ({result['n_samples']} in all); "
                 f"temperature {s['temperature']}, top-p {s['top_p']}, at most {s['max_new_tokens']} new tokens; "
                 f"{result['seconds']:.0f} s of generation; mean response {result['mean_tokens']:.0f} tokens, "
                 f"{result['length_capped']:.1%} cut at the length limit, {result['answered']:.1%} gave a finished "
                 f"answer, {result.get('correct_truncated', 0)} correct samples were cut at the length limit (a cut "
                 "reply counts only if it had closed its answer); "
                 "per-problem sd of correctness across samples "
                 + (f"{result['per_problem_sd']:.3f}" if result["per_problem_sd"] is not None else "n/a (k = 1)")
                 + f". Data: {s['source']}." + "".join(f" {note}" for note in result.get("notes", ())))
        rows = [(m, f"{v['value']:.1%}", f"[{v['ci_low']:.1%}, {v['ci_high']:.1%}]",
                 f"{v['sample_sd']:.1%}" if v["sample_sd"] is not None else "n/a (k = 1)")
                for m, v in result["metrics"].items()]
        header = ("metric", "value", f"{result['interval']} interval", "sd over samples")
        md += [f"## {name}", "", facts, "", "| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
        md += ["| " + " | ".join(row) + " |" for row in rows]
        md += ["", f"![accuracy vs k](plots/{k_plot.name})", f"![lengths](plots/{len_plot.name})", ""]
        md += _examples_md(records[name])
        table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts += [f"<h2>{html.escape(name)}</h2><p>{html.escape(facts)}</p>",
                  "<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                  + f"</tr>{table}</table>",
                  f'<p><img src="plots/{k_plot.name}" width=560> <img src="plots/{len_plot.name}" width=560></p>']
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.html").write_text("<!doctype html><meta charset=utf-8><title>r1lab eval</title>"
                                     "<body style='font-family:sans-serif;max-width:1200px'>" + "".join(parts)
                                     + "</body>", encoding="utf-8")
    return out / "report.md"


def plot_accuracy_vs_k(path: Path, name: str, result: dict) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    passes = sorted(((int(m.split("@")[1]), v) for m, v in result["metrics"].items() if m.startswith("pass@")))
    ks = [k for k, _ in passes]
    values = [v["value"] for _, v in passes]
    errors = [[v["value"] - v["ci_low"] for _, v in passes], [v["ci_high"] - v["value"] for _, v in passes]]
    ax.errorbar(ks, values, yerr=errors, marker="o", capsize=4, label="pass@k (95% interval)")
    for m, v in result["metrics"].items():
        if m.startswith("cons@"):
            k = int(m.split("@")[1])
            ax.errorbar([k], [v["value"]], yerr=[[v["value"] - v["ci_low"]], [v["ci_high"] - v["value"]]],
                        marker="s", color="C1", capsize=4, linestyle="none", label=f"{m} (majority vote)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks or [1])
    ax.set_xticklabels([str(k) for k in ks] or ["1"])
    top = max([v["ci_high"] for v in result["metrics"].values()] + [0.05])
    ax.set_ylim(0, min(1.0, 1.15 * top))  # near-zero accuracies stay readable
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}: accuracy vs k (n = {result['n_problems']})")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_lengths(path: Path, name: str, records: list[dict]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    right = [r["tokens"] for r in records if r["correct"]]
    wrong = [r["tokens"] for r in records if not r["correct"]]
    top = max([r["tokens"] for r in records] or [1])
    bins = min(40, max(5, top // 8))
    ax.hist([right, wrong], bins=bins, range=(0, top), label=[f"correct ({len(right)})", f"wrong ({len(wrong)})"],
            color=["C2", "C3"], alpha=0.8)
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("samples")
    ax.set_title(f"{name}: response length, correct vs wrong")
    ax.legend()
    return save_figure(fig, path)


def _examples_md(records: list[dict]) -> list[str]:
    """A correct and a wrong sample, shortened, so a reader sees what the model wrote."""
    out = []
    for label, want in (("A correct sample", True), ("A wrong sample", False)):
        sample = next((r for r in records if bool(r["correct"]) == want), None)
        if sample is None:
            continue
        text = sample["completion"] if len(sample["completion"]) < 1200 else sample["completion"][:1200] + " …"
        out += [f"**{label}** (problem {sample['problem']}, extracted `{sample['answer']}`, reference "
                f"`{sample['reference']}`):", "", "```text", text.replace("```", "'''"), "```", ""]
    return out
