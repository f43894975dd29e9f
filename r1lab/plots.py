"""The PNG plots runs leave: training curves with running means, several runs side by side."""

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
