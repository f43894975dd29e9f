"""``r1lab eval``: sample k answers per problem, judge each with the benchmark's verifier, summarize, report.

One run folder holds, per benchmark, ``<benchmark>/samples.jsonl`` (every sample: prompt, completion,
extracted answer, verdict, tokens, finish reason) and ``<benchmark>/settings.json`` (what produced them),
and for the whole run ``summary.json``, ``report.md``, ``report.html`` and ``plots/``.

Resuming: problems are generated in batches (``problems_per_batch``), and a batch's samples are appended in one
write and synced before the next begins. Sample j of problem p draws from a random stream of (seed, p, j) alone
and the reply budget is cut to the context by the whole benchmark's longest prompt, so a problem's samples do not
depend on the batching, ``max_rows`` or ``--limit``. A rerun with the same settings reads back every problem
whose samples are on disk in a complete batch (a batch cut off mid-write is dropped) and generates only the rest:
an interrupted run, or one rerun with another ``--limit``, ``problems_per_batch`` or ``max_rows``, ends with the
samples, and the summary, of one that was never interrupted. The summary and report use exactly this run's
problems (``samples.jsonl`` may hold more, from a larger ``--limit``). Other sampling settings in the same folder
are refused, and so is a rerun that leaves out a benchmark the folder's summary holds (name it again: its
samples are reused).

Sampling, judging and the resumable batches are the rollout layer's (:mod:`r1lab.rollout`), shared with
``r1lab sample``; :func:`heldout_accuracy` is ``r1lab zero``'s held-out evaluation through the same code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from r1lab import tracking
from r1lab.config import EvalConfig, engine_choice, engine_label, save_config
from r1lab.console import log, progress
from r1lab.engine import SamplingParams, check_engine, open_engine, sampling_precision
from r1lab.engine.openai_engine import DEFAULT_CONCURRENCY
from r1lab.evaluate.batches import batch_settings, sample_in_batches
from r1lab.evaluate.benchmarks import default_k, load_benchmark, task_benchmark
from r1lab.evaluate.metrics import summarize
from r1lab.evaluate.report import folder_name, write_eval_report
from r1lab.files import write_json
from r1lab.rewards.format import format_reward
from r1lab.rollout import context_room, sample_problems
from r1lab.runs import check_run_folder


def heldout_accuracy(engine, task, examples: list[dict], params: SamplingParams, template: str,
                     prefill: str | None, desc: str = "eval", chunk: int = 32) -> dict:
    """pass@1 over ``params.n`` samples per held-out problem with its 95% interval, and the format rate."""
    if not examples:
        return {"accuracy": math.nan, "format_rate": math.nan, "n": 0}
    problems = []
    with progress(total=len(examples), desc=desc, leave=False) as bar:
        for start in range(0, len(examples), chunk):
            problems += sample_problems(engine, task, examples[start:start + chunk], params, template, prefill)
            bar.update(min(chunk, len(examples) - start))
    pass1 = summarize_records(problems, task)["metrics"]["pass@1"]
    responses = [r["completion"] for records in problems for r in records]
    return {"accuracy": pass1["value"], "ci_low": pass1["ci_low"], "ci_high": pass1["ci_high"],
            "format_rate": sum(format_reward(r) for r in responses) / len(responses), "n": len(examples),
            "samples": params.n}


def summarize_records(problems: list[list[dict]], task, interval: str = "bootstrap") -> dict:
    """Metrics of the problems that could be judged: a problem none of whose samples could be judged (its reference
    cannot be read) is left out and counted (``unjudged_problems``); in a judged problem, a sample that could not be
    (a verdict of None) counts as wrong and is counted (``unjudged``). When no problem can be judged, all count."""
    judged = [recs for recs in problems if any(r["correct"] is not None for r in recs)] or problems
    correct = [[float(r["correct"] or 0.0) for r in recs] for recs in judged]
    answers = [[r["answer"] for r in recs] for recs in judged]
    equivalent = getattr(task, "equivalent", None)
    summary = summarize(correct, answers, equivalent, method=interval)
    samples = [r for recs in problems for r in recs]
    summary.update({
        "n_samples": len(samples),
        "unjudged": sum(r["correct"] is None for r in samples),
        "unjudged_problems": len(problems) - len(judged) if judged is not problems else len(problems),
        "mean_tokens": sum(r["tokens"] for r in samples) / len(samples),
        "length_capped": sum(r["finish_reason"] == "length" for r in samples) / len(samples),
        "answered": sum(r["answer"] is not None for r in samples) / len(samples),  # finished answers only
        "correct_truncated": sum(r["finish_reason"] == "length" and bool(r["correct"]) for r in samples),
    })
    return summary


# ------------------------------------------------------------------------------------------ the command
def run_eval(cfg: EvalConfig, progress: bool = True) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmarks``; returns the summary (also in ``OUT/summary.json``)."""
    cfg.validate()
    name, args = engine_choice(cfg)
    check_engine(name, args, cfg.template, cfg.prefill)  # before anything is written
    check_run_folder(cfg.out, EvalConfig)
    check_earlier_benchmarks(Path(cfg.out), cfg.benchmarks)
    tracking.check(cfg.report_to)
    benches = {name: get_benchmark(name, cfg) for name in cfg.benchmarks}  # bad names fail before the model loads
    out = Path(cfg.out)
    # a rerun (the way an evaluation resumes) goes on in the tracker runs of the first, logging at step 0 again
    # (TensorBoard drops the earlier values; MLflow and trackio keep both)
    trackers = tracking.start(cfg.report_to, out, cfg, name=cfg.run_name, group=cfg.report_group,
                              resume_step=0 if (out / tracking.STATE_FILE).is_file() else None)
    out.mkdir(parents=True, exist_ok=True)
    if name == "torch":  # continuous batching: a long row holds one slot, not a whole batch
        args = {"max_rows": cfg.max_rows, **args}
    # rows per batch, the unit a resume keeps: an endpoint's requests in flight four times over, else four times
    # the rows the torch engine decodes at once
    rows = 4 * (args.get("concurrency", DEFAULT_CONCURRENCY) if name == "openai" else (cfg.max_rows or 64))
    engine = open_engine(cfg.model, name, args, cfg.threads, device=cfg.device, dtype=cfg.dtype)
    try:
        summary = evaluate_with(engine, benches, cfg, out, progress, engine_label(name, args), rows,
                                sampling_precision(name, cfg.device, cfg.dtype))
        trackers.log(tracked_metrics(summary), step=0, section="eval")
        trackers.finish()  # the report, its plots and the summary as artifacts
        return summary
    except ConnectionError as e:  # an endpoint that stopped answering: what was sampled is kept
        raise ConnectionError(f"{e}. The finished batches are kept in {out}; rerun the same command to resume") \
            from e
    finally:
        engine.close()


def tracked_metrics(summary: dict) -> dict:
    """What the trackers get of an evaluation (as ``eval/gsm8k/pass@1`` ...): each benchmark's metrics with their
    95% intervals, reply lengths and speed.

    >>> tracked_metrics({"benchmarks": {"gsm8k": {"metrics": {"pass@1": {"value": 0.5, "ci_low": 0.4,
    ...     "ci_high": 0.6}}, "mean_tokens": 80.0}}})
    {'gsm8k/pass@1': 0.5, 'gsm8k/pass@1/ci_low': 0.4, 'gsm8k/pass@1/ci_high': 0.6, 'gsm8k/mean_tokens': 80.0}
    """
    out = {}
    for bench, result in summary["benchmarks"].items():
        for metric, v in result["metrics"].items():
            out.update({f"{bench}/{metric}": v["value"], f"{bench}/{metric}/ci_low": v["ci_low"],
                        f"{bench}/{metric}/ci_high": v["ci_high"]})
        out.update({f"{bench}/{key}": result[key] for key in ("mean_tokens", "length_capped", "answered", "seconds",
                                                               "tokens_per_second") if result.get(key) is not None})
    return out


def evaluate_with(engine, benches: dict, cfg: EvalConfig, out: Path, progress: bool, engine_id: str,
                  rows: int, precision: str | None = None) -> dict:
    """Sample, judge and summarize every benchmark of ``benches`` with ``engine`` (``engine_id``: its label,
    ``precision``: a local engine's); write the summary and report."""
    summary = {"model": cfg.model, "template": cfg.template, "engine": engine_id, "benchmarks": {}}
    if precision:
        summary["precision"] = precision
    records = {}
    for name, bench in benches.items():
        every = bench.examples("test")
        examples = every[:cfg.limit or None]
        k = 1 if cfg.greedy else (cfg.k or default_k(len(every)))  # by the whole set: --limit does not change it
        if not cfg.greedy and not cfg.k:
            log(f"{name}: k = {k} samples per problem, picked from the set's {len(every)} problems (--k to choose)")
        params = SamplingParams(n=k, temperature=0.0 if cfg.greedy else cfg.temperature, top_p=cfg.top_p,
                                top_k=cfg.top_k, max_new_tokens=reply_budget(engine, every, cfg.max_new_tokens, name))
        settings = batch_settings(cfg.model, cfg.template, cfg.prefill, params, cfg.seed, cfg.problems_per_batch,
                                  bench.source, rows=rows, engine=engine_id, precision=precision)
        problems, seconds = sample_in_batches(engine, bench, examples, params, cfg.template, cfg.prefill, cfg.seed,
                                              out / folder_name(name), settings, progress)
        records[name] = [r for recs in problems for r in recs]  # this run's problems only, whatever the file holds
        result = summarize_records(problems, bench, cfg.interval)
        result.update({"source": bench.source, "seconds": seconds, "settings": settings, "notes": list(bench.notes),
                       "tokens_per_second": result["mean_tokens"] * result["n_samples"] / seconds if seconds else None})
        summary["benchmarks"][name] = result
        log(f"{name}: " + ", ".join(f"{m} {v['value']:.1%} [{v['ci_low']:.1%}, {v['ci_high']:.1%}]"
                                    for m, v in result["metrics"].items())
            + f" (n={result['n_problems']}, k={k}, {seconds:.0f} s)")
    save_config(cfg, out / "config.yaml")  # only once the samples there were found to match these settings
    write_json(out / "summary.json", summary)
    write_eval_report(out, summary, records)
    return summary


def reply_budget(engine, examples: list[dict], max_new_tokens: int, name: str) -> int:
    """``max_new_tokens`` cut to the model's context window by the longest prompt of the whole benchmark (not of
    the problems ``--limit`` keeps, nor of one batch), so that a problem's samples do not depend on either."""
    room = context_room(engine, examples, max_new_tokens)
    if room < max_new_tokens:
        counted = ("" if engine.tokenizer is not None else
                   " (counted in characters, a token's least size, as the engine has no tokenizer: give "
                   "--engine-args '{tokenizer: MODEL}' for the whole budget)")
        log(f"{name}: at most {room} new tokens, not {max_new_tokens}: the model's context holds "
            f"{engine.context_length} tokens and the longest prompt of the set takes up to "
            f"{engine.context_length - room}{counted}")
    return room


def check_earlier_benchmarks(out: Path, benchmarks: list[str]) -> None:
    """Refuse a rerun in ``out`` that leaves out benchmarks its ``summary.json`` holds: the new summary and report
    would drop their results. Naming them again costs nothing (their finished samples are reused)."""
    path = out / "summary.json"
    if not path.is_file():
        return
    try:
        earlier = list(json.loads(path.read_text(encoding="utf-8"))["benchmarks"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a summary this command can read: it is rewritten
    missing = [name for name in earlier if name not in benchmarks]
    if missing:
        names = ", ".join(dict.fromkeys(earlier + list(benchmarks)))
        raise ValueError(f"{out} holds results for {', '.join(missing)}, which --benchmarks does not name; its "
                         "summary.json and report would lose them. Name them too, with their --data entries if any "
                         f"(their finished samples are reused): --benchmarks '[{names}]', or use another --out")


def get_benchmark(name: str, cfg):
    if name.startswith("task:"):
        return task_benchmark(name.split(":", 1)[1], cfg.task_args)
    return load_benchmark(name, cfg.data.get(name), seed=cfg.seed)  # a name of your own needs a --data file
