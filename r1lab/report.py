"""Plots and a readable Markdown report for a run folder."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(path: Path, steps: list, series: dict[str, list], title: str, ylabel: str, smooth: int = 5,
                ylim: tuple[float, float] | None = None, points: dict[str, tuple[list, list]] | None = None) -> Path:
    """One PNG with a line per series (raw, faint) and its running mean over ``smooth`` steps; ``points`` adds
    labelled markers (e.g. held-out accuracy before and after)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    styles = ["-", "--", ":", "-."]
    for i, (label, values) in enumerate(series.items()):
        color = f"C{i}"
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, running_mean(values, smooth), color=color, linewidth=2, linestyle=styles[i % len(styles)],
                label=f"{label} (mean of {smooth})")
    for j, (label, (xs, ys)) in enumerate((points or {}).items()):
        ax.plot(xs, ys, "o", color=f"C{len(series) + j}", markersize=7, label=label)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_runs(path: Path, runs: dict[str, list[dict]], keys: tuple[str, ...], smooth: int = 5) -> Path:
    """Runs side by side: one panel per metric in ``keys``, one line per run (running mean over ``smooth``
    steps, raw values faint)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), dpi=110)
    for ax, key in zip(list(axes) if len(keys) > 1 else [axes], keys):
        for i, (label, history) in enumerate(runs.items()):
            steps = [h["step"] for h in history]
            values = [h.get(key, math.nan) for h in history]
            ax.plot(steps, values, color=f"C{i}", alpha=0.25, linewidth=1)
            ax.plot(steps, running_mean(values, smooth), color=f"C{i}", linewidth=2, label=label)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("training step")
        seen = [h.get(key, math.nan) for history in runs.values() for h in history]
        if all(0 <= v <= 1 for v in seen if not math.isnan(v)):  # rates share one 0-1 scale
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def running_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean, ignoring NaNs.

    >>> running_mean([1, 3, 5, float("nan")], 2)
    [1.0, 2.0, 4.0, 5.0]
    """
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1):i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def write_zero_report(run: Path, history: list[dict], summary: dict) -> Path:
    steps = [h["step"] for h in history]
    plots = run / "plots"
    col = lambda key: [h.get(key, math.nan) for h in history]  # noqa: E731
    before, after = summary["eval_before"], summary["eval_after"]
    evals = [(0, before["accuracy"])] + [(h["step"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    evals.append((steps[-1] if steps else 0, after["accuracy"]))
    top = max([1.0] + [v for v in col("reward") if not math.isnan(v)])
    plot_curves(plots / "reward.png", steps, {"reward": col("reward"), "accuracy": col("accuracy"),
                                              "format rate": col("format_rate")},
                "Training reward and accuracy (R1 Fig. 2)", "mean over the step's samples", ylim=(-0.02, top + 0.05),
                points={"held-out accuracy (greedy)": ([x for x, _ in evals], [y for _, y in evals])})
    plot_curves(plots / "length.png", steps, {"mean response length": col("mean_length")},
                "Mean response length (R1 Fig. 3)", "tokens")
    rates = [v for v in col("reflection_rate") if not math.isnan(v)]
    plot_curves(plots / "reflection.png", steps, {"reflection-word rate": col("reflection_rate")},
                "Share of responses with reflection words (wait, verify, let me check...)", "share of responses",
                ylim=(0, max([0.05] + rates) * 1.1))
    lengths = col("mean_length")
    k = summary["steps_averaged"]
    lines = [
        f"# r1lab zero: {summary['config']['model']} on {summary['config']['task']}",
        "",
        f"- steps: {summary['steps']}, {summary['config']['prompts_per_step']} prompts x "
        f"{summary['config']['group_size']} samples, max {summary['config']['max_new_tokens']} new tokens",
        f"- time: {summary['seconds_total'] / 60:.1f} min of training, {summary['seconds_per_step']:.1f} s per step",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| held-out accuracy (greedy, n={after['n']}) | {before['accuracy']:.1%} | {after['accuracy']:.1%} |",
        f"| held-out format rate | {before['format_rate']:.1%} | {after['format_rate']:.1%} |",
        f"| mean training reward (first / last {summary['steps_averaged']} steps) | "
        f"{summary['reward_first_steps']:.3f} | {summary['reward_last_steps']:.3f} |",
        f"| mean response length, tokens (first / last {k} steps) | {_mean(lengths[:k]):.1f} | {_mean(lengths[-k:]):.1f} |",
        f"| reflection-word rate (first / last {k} steps) | {_mean(col('reflection_rate')[:k]):.1%} | "
        f"{_mean(col('reflection_rate')[-k:]):.1%} |",
        "",
        "![reward](plots/reward.png)",
        "![length](plots/length.png)",
        "![reflection](plots/reflection.png)",
        "",
        f"Checkpoint: `{summary['checkpoint']}` (load it with `AutoModelForCausalLM.from_pretrained`).",
        "Per-step metrics: `metrics.jsonl`; every sampled response: `samples.jsonl`; config: `config.yaml`.",
    ]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
