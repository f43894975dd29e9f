"""``r1lab eval``: sample k answers per problem, judge each with the benchmark's verifier, summarize, report.

One run folder holds, per benchmark, ``<benchmark>/samples.jsonl`` (every sample: prompt, completion,
extracted answer, verdict, tokens, finish reason) and ``<benchmark>/settings.json`` (what produced them),
and for the whole run ``summary.json``, ``report.md``, ``report.html`` and ``plots/``.

Resuming: problems are generated in fixed batches (``problems_per_batch``; batch b always holds the same
problems and samples with seed ``f(seed, b)``), and a batch's samples are appended in one write and synced
before the next begins. A rerun with the same settings reads back the complete batches, drops a batch cut
off mid-write, and generates only the rest, so an interrupted run ends with the same samples, and the same
summary, as one that was never interrupted. Different settings in the same folder are refused.

The same :func:`sample_problems` scores ``r1lab zero``'s held-out evaluation during training.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from r1lab.engine import SamplingParams
from r1lab.evaluate.benchmarks import BENCHMARKS, default_k, load_benchmark, task_benchmark
from r1lab.evaluate.metrics import CI_METHODS, summarize
from r1lab.files import append_jsonl, write_atomic, write_json
from r1lab.tasks.answers import extract_answer

SETTINGS_KEYS = ("model", "template", "prefill", "k", "temperature", "top_p", "top_k", "max_new_tokens",
                 "seed", "problems_per_batch", "source")


def sample_problems(engine, task, examples: list[dict], params: SamplingParams, template: str,
                    prefill: str | None) -> list[list[dict]]:
    """``params.n`` samples for each example, each judged by ``task.verify``: one record list per problem."""
    from r1lab.rl.grpo import generate_groups  # the same rendering and generation as training

    extract = getattr(task, "extract", extract_answer)
    out = []
    for group in generate_groups(engine, examples, template, prefill, params, task):
        prompt = engine.tokenizer.decode(group.prompt_ids)  # exactly what the model was given
        records = []
        for j, (completion, response) in enumerate(zip(group.completions, group.responses)):
            verdict = task.verify(response, **group.example)
            records.append({"id": str(group.example.get("id", "")), "sample": j,
                            "prompt": prompt, "completion": response,
                            "answer": extract(response), "reference": group.example.get("answer"),
                            "correct": verdict, "tokens": len(completion.token_ids),
                            "finish_reason": completion.finish_reason})
        out.append(records)
    return out


def summarize_records(problems: list[list[dict]], task, interval: str = "bootstrap") -> dict:
    """Metrics of judged samples (a verdict of None, "cannot judge", counts as wrong and is counted)."""
    correct = [[float(r["correct"] or 0.0) for r in recs] for recs in problems]
    answers = [[r["answer"] for r in recs] for recs in problems]
    equivalent = getattr(task, "equivalent", None)
    summary = summarize(correct, answers, equivalent, method=interval)
    samples = [r for recs in problems for r in recs]
    summary.update({
        "n_samples": len(samples),
        "unjudged": sum(r["correct"] is None for r in samples),
        "mean_tokens": sum(r["tokens"] for r in samples) / len(samples),
        "length_capped": sum(r["finish_reason"] == "length" for r in samples) / len(samples),
        "answered": sum(r["answer"] is not None for r in samples) / len(samples),
    })
    return summary


# ------------------------------------------------------------------------------------------ the command
def run_eval(cfg, progress: bool = True) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmarks``; returns the summary (also in ``OUT/summary.json``)."""
    import torch

    from r1lab.config import EvalConfig, check_run_folder, save_config
    from r1lab.engine import TorchEngine
    from r1lab.evaluate.report import write_eval_report
    from r1lab.models import load_model

    check_config(cfg)
    check_run_folder(cfg.out, EvalConfig)
    benches = {name: get_benchmark(name, cfg) for name in cfg.benchmarks}  # bad names fail before the model loads
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(cfg.model)
    engine = TorchEngine(model, tokenizer)
    context = getattr(model.config, "max_position_embeddings", None) or 1 << 30

    summary = {"model": cfg.model, "template": cfg.template, "benchmarks": {}}
    for name, bench in benches.items():
        examples = bench.examples("test")[:cfg.limit or None]
        k = 1 if cfg.greedy else (cfg.k or default_k(len(examples)))
        params = SamplingParams(n=k, temperature=0.0 if cfg.greedy else cfg.temperature, top_p=cfg.top_p,
                                top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens)
        folder = out / _folder_name(name)
        batch = cfg.problems_per_batch or max(1, 64 // k)
        settings = {"model": cfg.model, "template": cfg.template, "prefill": cfg.prefill, "k": k,
                    "temperature": params.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                    "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
                    "problems_per_batch": batch, "source": bench.source}
        problems, seconds = run_benchmark(engine, bench, examples, params, cfg, folder, settings, context, progress)
        result = summarize_records(problems, bench, cfg.interval)
        result.update({"source": bench.source, "seconds": seconds, "settings": settings,
                       "tokens_per_second": result["mean_tokens"] * result["n_samples"] / seconds if seconds else None})
        summary["benchmarks"][name] = result
        _log(f"{name}: " + ", ".join(f"{m} {v['value']:.1%} [{v['ci_low']:.1%}, {v['ci_high']:.1%}]"
                                     for m, v in result["metrics"].items())
             + f" (n={result['n_problems']}, k={k}, {seconds:.0f} s)")
    save_config(cfg, out / "config.yaml")  # only once the samples there were found to match these settings
    write_json(out / "summary.json", summary)
    write_eval_report(out, summary)
    return summary


def check_config(cfg) -> None:
    if not cfg.benchmarks:
        raise ValueError("benchmarks is empty; name at least one, e.g. --benchmarks '[gsm8k]'")
    from r1lab.chat import TEMPLATES

    if cfg.template not in TEMPLATES:
        raise ValueError(f"template {cfg.template!r} is unknown; choose one of {', '.join(TEMPLATES)}")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    if cfg.k < 0 or cfg.limit < 0 or cfg.problems_per_batch < 0:
        raise ValueError("k, limit and problems_per_batch must be 0 (automatic / all) or positive")
    if not cfg.greedy and not 0 < cfg.temperature:
        raise ValueError(f"temperature must be > 0 for sampling, got {cfg.temperature}; use --greedy true for "
                         "greedy decoding")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.interval not in CI_METHODS:
        raise ValueError(f"interval must be one of {', '.join(CI_METHODS)}, got {cfg.interval!r}")
    unknown = set(cfg.data) - set(cfg.benchmarks)
    if unknown:
        raise ValueError(f"data names {sorted(unknown)}, which are not among benchmarks {cfg.benchmarks}")


def get_benchmark(name: str, cfg):
    if name.startswith("task:"):
        return task_benchmark(name.split(":", 1)[1], cfg.task_args)
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, or task:NAME for an "
                       "r1lab task (task:arithmetic, task:countdown, task:gsm8k)")
    return load_benchmark(name, cfg.data.get(name), seed=cfg.seed)


def run_benchmark(engine, bench, examples, params, cfg, folder: Path, settings: dict, context: int,
                  progress: bool) -> tuple[list[list[dict]], float]:
    """Sample and judge every problem, batch by batch, reusing the complete batches already on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    _check_settings(folder / "settings.json", settings)
    samples_path = folder / "samples.jsonl"
    size = settings["problems_per_batch"]
    done = read_complete_batches(samples_path, len(examples), size, params.n)
    n_batches = (len(examples) + size - 1) // size
    with tqdm(total=len(examples), initial=sum(len(done.get(b, ())) for b in range(n_batches)), unit="problem",
              desc=bench.name, disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for b in range(n_batches):
            if b in done:
                continue
            batch = examples[b * size:(b + 1) * size]
            t0 = time.perf_counter()
            longest = max(len(engine.encode(e["prompt"])) for e in batch) + 64  # + template and instruction
            batch_params = _replace(params, seed=cfg.seed * 1_000_003 + b,
                                    max_new_tokens=max(1, min(params.max_new_tokens, context - longest)))
            problems = sample_problems(engine, bench, batch, batch_params, cfg.template, cfg.prefill)
            seconds = time.perf_counter() - t0
            rows = []
            for i, records in enumerate(problems):
                for r in records:
                    r.update({"benchmark": bench.name, "batch": b, "batch_problems": len(batch), "problem": b * size + i,
                              "seconds": seconds / (len(problems) * params.n)})
                    rows.append(r)
            append_jsonl(samples_path, *rows)  # one synced write per batch
            done[b] = problems
            bar.update(len(batch))
    problems = [recs for b in range(n_batches) for recs in done[b]]
    seconds = sum(r["seconds"] for recs in problems for r in recs)
    return problems, seconds


def read_complete_batches(path: Path, n_problems: int, size: int, k: int) -> dict[int, list[list[dict]]]:
    """The batches of this run (``n_problems`` in batches of ``size``) whose samples are all on disk, as
    ``{batch: [records of each problem]}``.

    A batch is written with its problem count; one that has fewer records than that (the run died while
    writing) is dropped, as is a torn last line, and the file is rewritten without them. Complete batches
    that this run does not need (an earlier run had a larger ``limit``) stay in the file untouched.
    """
    if not path.is_file():
        return {}
    records, lines, torn = [], [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                torn = True
                break
            lines.append(line if line.endswith("\n") else line + "\n")
    written: dict[tuple[int, int], list[dict]] = {}  # (batch, problems in it) -> its records
    for r in records:
        written.setdefault((r["batch"], r["batch_problems"]), []).append(r)
    complete = {key for key, recs in written.items() if len(recs) == key[1] * k}
    if torn or len(complete) < len(written):
        write_atomic(path, "".join(line for line, r in zip(lines, records)
                                   if (r["batch"], r["batch_problems"]) in complete))
    usable = {}
    for b in range((n_problems + size - 1) // size):
        needed = set(range(b * size, min(n_problems, (b + 1) * size)))
        # the batch exactly as this run would make it first, else a larger one that holds its problems
        for key in sorted(complete, key=lambda key: (key[1] != len(needed), key[1])):
            if key[0] != b:
                continue
            problems: dict[int, list[dict]] = {}
            for r in written[key]:
                problems.setdefault(r["problem"], []).append(r)
            if needed <= set(problems):
                usable[b] = [sorted(problems[p], key=lambda r: r["sample"]) for p in sorted(needed)]
                break
    return usable


def _check_settings(path: Path, settings: dict) -> None:
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [key for key in SETTINGS_KEYS if saved.get(key) != settings.get(key)]
        if changed:
            diff = "; ".join(f"{key}: {saved.get(key)!r} there, {settings.get(key)!r} now" for key in changed)
            raise ValueError(f"{path.parent} holds samples made with other settings ({diff}). Use another --out, "
                             "or the same settings to resume")
        return
    write_json(path, settings)


def _replace(params: SamplingParams, **changes) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, **changes)


def _folder_name(name: str) -> str:
    return name.replace(":", "-").replace("/", "-")




def _log(text: str) -> None:
    tqdm.write(text, file=sys.stderr)
