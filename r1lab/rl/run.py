"""The folder a GRPO run lives in: ``config.yaml`` (written first), ``metrics.jsonl`` and ``samples.jsonl`` (one
synced line per step), ``checkpoints/step-N/`` (the last ``keep_checkpoints``, with the optimizer state),
``final/``, ``report.md`` with ``plots/``, and ``summary.json``, written last: its presence means finished."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from r1lab.config import ZeroConfig, save_config
from r1lab.console import say
from r1lab.files import append_jsonl, read_log, write_jsonl
from r1lab.models import is_complete_checkpoint
from r1lab.plots import plot_curves
from r1lab.rl.diagnostics import console_line
from r1lab.rollout import Group
from r1lab.runs import RESUME_MAY_CHANGE, check_run_folder, check_same_config
from r1lab.tracking import is_tracker_file


def check_run(run: Path, cfg: ZeroConfig) -> None:
    """Refuse a folder ``cfg`` may not write: a new run never reuses a folder that holds one, and a resumed run
    must have the settings it was started with."""
    check_run_folder(run, ZeroConfig)
    saved = run / "config.yaml"
    if cfg.resume and not saved.is_file() and ((run / "checkpoints").exists() or (run / "final").exists()):
        raise ValueError(f"--resume: {run} has checkpoints but no config.yaml, so its settings are unknown; restore "
                         "it from a backup, or start a new run in another --out")
    if cfg.resume and saved.is_file():
        check_same_config(cfg, saved, ignore=RESUME_MAY_CHANGE)
    if not cfg.resume and run.exists() and {p.name for p in run.iterdir() if not is_tracker_file(p)} == {"config.yaml"}:
        check_same_config(cfg, saved)  # a run that died before its first step: the same command may start again
    elif not cfg.resume and run.exists() and any(run.iterdir()):
        what = "a run. Pass --resume true to continue it, or" if saved.exists() else "files. Move them, or"
        raise ValueError(f"{run} already holds {what} choose another --out; r1lab never overwrites a run.")


def start_logs(run: Path, cfg: ZeroConfig, start_step: int) -> None:
    """Write ``config.yaml`` for a new run; cut the logs of a resumed one back to ``start_step``: lines past it are
    moved to ``*.discarded.jsonl`` (they are redone), never deleted."""
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "config.yaml").exists():
        save_config(cfg, run / "config.yaml")
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = run / name
        rows = read_log(path)
        redone = [r for r in rows if r["step"] > start_step]
        if redone or (path.exists() and len(rows) < len(path.read_text().splitlines())):  # redone, or torn
            if redone:
                append_jsonl(path.with_suffix(".discarded.jsonl"), *redone)
            write_jsonl(path, [r for r in rows if r["step"] <= start_step])


@dataclass
class StepRecord:
    """What a step leaves in the run folder: its ``metrics`` (a line of ``metrics.jsonl``, printed as the console
    line), its ``groups`` (lines of ``samples.jsonl``, each with the ``ranks`` that sampled it under torchrun, else
    None) and the ``notes`` printed under the console line (the time estimate, warnings)."""

    metrics: dict
    groups: list[Group]
    ranks: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def log_step(run: Path, record: StepRecord) -> None:
    """Rank 0, after a step: its metrics appended to ``metrics.jsonl``, its samples to ``samples.jsonl`` (one synced
    write each), its console line and notes."""
    append_jsonl(run / "metrics.jsonl", record.metrics)
    append_jsonl(run / "samples.jsonl", *sample_records(record.metrics["step"], record.groups, record.ranks))
    say(console_line(record.metrics))
    for note in record.notes:
        say(note)


def sample_records(step: int, groups: list[Group], ranks: list[int] | None = None):
    """The rows of ``samples.jsonl``; under torchrun each says which ``rank`` sampled it."""
    for i, g in enumerate(groups):
        for response, reward, c, adv in zip(g.responses, g.rewards, g.completions, g.advantages):
            yield {"step": step, "prompt": g.example["prompt"], "answer": g.example.get("answer"),
                   "response": response, "reward": reward, "advantage": adv, "finish_reason": c.finish_reason,
                   "tokens": len(c), **({"rank": ranks[i]} if ranks else {})}


def is_finished(run: Path) -> bool:
    """The run wrote its final checkpoint, report and summary (the summary is written last)."""
    return (run / "summary.json").is_file() and is_complete_checkpoint(run / "final")


def resume_point(run: Path, cfg: ZeroConfig) -> tuple[int, Path | None]:
    """The step to start from and the checkpoint to load (None: start from the model named in ``cfg``)."""
    if not cfg.resume:
        return 0, None
    checkpoints = [p for p in _checkpoints(run) if is_complete_checkpoint(p)]
    if not checkpoints:
        say(f"r1lab: --resume: no complete checkpoint in {run / 'checkpoints'} yet; starting from step 0")
        return 0, None
    last = checkpoints[-1]
    say(f"r1lab: resuming from {last}")
    return _step_of(last), last


def _checkpoints(run: Path) -> list[Path]:
    """``checkpoints/step-N`` folders, oldest first."""
    return sorted((run / "checkpoints").glob("step-*"), key=_step_of)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


#: what a run measures of the machine it ran on rather than computes: left out of :func:`results`
MEASURED = {"seconds", "seconds_generate", "seconds_total", "seconds_per_step", "memory/peak_mb",
            "memory/peak_mb_by_rank"}


def results(run: Path) -> dict:
    """What a finished run computed: its metrics, samples, summary and final weights (bytes), without what it
    measured (:data:`MEASURED`) or where it was written. Two runs of the same settings and seed that round alike
    (``--threads 1``) have equal results, however often they were killed and resumed."""
    def computed(value):
        if isinstance(value, dict):
            return {k: computed(v) for k, v in value.items() if k not in MEASURED}
        return [computed(v) for v in value] if isinstance(value, list) else value

    summary = json.loads((run / "summary.json").read_text())
    for key in ("resume", "out"):
        summary["config"].pop(key)
    summary.pop("checkpoint")
    return {"metrics": [computed(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()],
            "samples": (run / "samples.jsonl").read_bytes(), "summary": computed(summary),
            "weights": (run / "final" / "model.safetensors").read_bytes()}


def read_metrics(run: Path) -> list[dict]:
    """The logged steps, with ``null`` (a mean over nothing) read back as NaN."""
    rows = read_log(run / "metrics.jsonl")
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]


def save(run: Path, policy, state: dict, step: int, cfg: ZeroConfig, final: bool = False) -> Path:
    """``checkpoints/step-N`` (with what resuming needs, keeping the last ``keep_checkpoints``) or ``final/``: every
    process calls it for a step checkpoint, rank 0 alone for ``final/`` (:meth:`r1lab.policy.Policy.save`)."""
    folder = run / ("final" if final else f"checkpoints/step-{step:06d}")
    meta = {"step": step, "model": cfg.model, "template": cfg.template, "prefill": cfg.prefill}
    policy.save(folder, meta, state, final=final)
    if not final and policy.world.main:
        for old in _checkpoints(run)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def summarize(cfg: ZeroConfig, history: list[dict], state: dict, final: Path) -> dict:
    """What ``summary.json`` holds: the settings, held-out accuracy before and after, reward at the start and end."""
    k = max(1, min(5, len(history) // 3))
    first, last = history[:k], history[-k:]
    return {"config": dataclasses.asdict(cfg), "steps": len(history), "eval_before": state["eval_before"],
            "eval_after": state["eval_after"], "reward_first_steps": _mean([r["reward"] for r in first]),
            "reward_last_steps": _mean([r["reward"] for r in last]), "steps_averaged": k,
            "seconds_total": sum(r["seconds"] for r in history),
            "seconds_per_step": _mean([r["seconds"] for r in history]), "checkpoint": str(final)}


def write_report(run: Path, history: list[dict], summary: dict) -> Path:
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
    plot_curves(plots / "entropy.png", steps, {"policy entropy": col("entropy")},
                "Policy entropy on the trained tokens (a collapse shows here first)", "nats per token")
    lengths = col("mean_length")
    k = summary["steps_averaged"]
    lines = [
        f"# r1lab zero: {summary['config']['model']} on {summary['config']['task']}", "",
        f"- steps: {summary['steps']}, {summary['config']['prompts_per_step']} prompts x "
        f"{summary['config']['group_size']} samples, max {summary['config']['max_new_tokens']} new tokens",
        f"- time: {summary['seconds_total'] / 60:.1f} min of training, {summary['seconds_per_step']:.1f} s per step",
        "", "| | before | after |", "|---|---|---|",
        f"| held-out accuracy (greedy, n={after['n']}) | {before['accuracy']:.1%} | {after['accuracy']:.1%} |",
        f"| held-out format rate | {before['format_rate']:.1%} | {after['format_rate']:.1%} |",
        f"| mean training reward (first / last {summary['steps_averaged']} steps) | "
        f"{summary['reward_first_steps']:.3f} | {summary['reward_last_steps']:.3f} |",
        f"| mean response length, tokens (first / last {k} steps) | {_mean(lengths[:k]):.1f} | "
        f"{_mean(lengths[-k:]):.1f} |",
        f"| reflection-word rate (first / last {k} steps) | {_mean(col('reflection_rate')[:k]):.1%} | "
        f"{_mean(col('reflection_rate')[-k:]):.1%} |",
        f"| policy entropy, nats per trained token (first / last {k} steps) | {_mean(col('entropy')[:k]):.3f} | "
        f"{_mean(col('entropy')[-k:]):.3f} |",
        "", "![reward](plots/reward.png)", "![length](plots/length.png)", "![reflection](plots/reflection.png)",
        "![entropy](plots/entropy.png)", "",
        f"Checkpoint: `{summary['checkpoint']}` (load it with `AutoModelForCausalLM.from_pretrained`).",
        "Per-step metrics: `metrics.jsonl`; every sampled response: `samples.jsonl`; config: `config.yaml`.",
    ]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
