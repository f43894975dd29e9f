"""``r1lab sample``: rejection sampling from a checkpoint, R1's stage 3 data (paper section 2.3.3).

For each training prompt of a Task: ``n`` samples through the engine, each verified by the Task (the same
verifier as the RL reward and the benchmark score). Then, per prompt, in sample order, a sample is kept when
it is correct and passes every filter (:mod:`r1lab.sft.filters`: language mixing, long paragraphs, code
blocks in the reasoning, truncation, exact and near duplicates), up to ``keep`` per prompt. Prompts that share
an 8-gram with the named evaluation sets are dropped first. Non-reasoning data (``{prompt, response}`` JSONL)
is mixed in at ``non_reasoning_share`` of the output, answered with an empty think block as R1 does for simple
queries.

Outputs in ``OUT/``: ``sft.jsonl`` (ready for ``r1lab sft --data``; each row records where it came from: model,
sampling settings, problem, sample index, verdict), ``report.md`` and ``summary.json`` with the count each filter
dropped, and ``samples/`` (every sample with its verdict). Sampling is resumable exactly like ``r1lab eval``
(fixed seeded batches, each written in one synced append): rerun the same command after an interruption.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from r1lab.config import SampleConfig, engine_choice, engine_label, save_config
from r1lab.engine import SamplingParams, check_engine, open_engine, sampling_precision
from r1lab.evaluate.batches import batch_settings, sample_in_batches
from r1lab.evaluate.benchmarks import load_benchmark
from r1lab.files import write_json, write_jsonl
from r1lab.runs import check_run_folder
from r1lab.sft import filters
from r1lab.tasks import build_task
from r1lab.tasks.base import question_text
from r1lab.tasks.dataset import read_jsonl


def run_sample(cfg: SampleConfig, progress: bool = True) -> dict:
    cfg.validate()
    name, args = engine_choice(cfg)
    check_engine(name, args, cfg.template, cfg.prefill)  # before anything is written
    check_run_folder(cfg.out, SampleConfig)
    task = build_task(cfg.task, cfg.task_args)
    examples = [{"id": str(i), **e} for i, e in enumerate(task.examples("train")[:cfg.limit or None])]
    eval_prompts = {name: [e["prompt"] for e in load_benchmark(name).examples("test")] for name in cfg.decontaminate}
    decontaminator = filters.Decontaminator([p for ps in eval_prompts.values() for p in ps]) if eval_prompts else None
    non_reasoning = _read_non_reasoning(cfg.non_reasoning) if cfg.non_reasoning else []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    counts: Counter = Counter()
    clean = []
    for example in examples:
        reason = decontaminator.check(example["prompt"]) if decontaminator else None
        if reason:
            counts["contaminated prompts"] += 1
        else:
            clean.append(example)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            stop=cfg.stop, include_stop_str_in_output=True)
    settings = batch_settings(cfg.model, cfg.template, cfg.prefill, params, cfg.seed, cfg.problems_per_batch,
                              f"task {cfg.task} {cfg.task_args}", engine=engine_label(name, args),
                              precision=sampling_precision(name, cfg.device, cfg.dtype))
    engine = open_engine(cfg.model, name, args, cfg.threads, device=cfg.device, dtype=cfg.dtype)
    try:
        problems, seconds = sample_in_batches(engine, task, clean, params, cfg.template, cfg.prefill, cfg.seed,
                                              out / "samples", settings, progress)
    finally:
        engine.close()
    save_config(cfg, out / "config.yaml")  # only once the samples there were found to match these settings

    kept = select(problems, clean, cfg, counts)
    rows = [{"prompt": question_text(ex, task), "response": r["completion"],
             "source": {"kind": "rejection_sampling", "model": cfg.model, "task": cfg.task, "problem": ex["id"],
                        "sample": r["sample"], "verdict": r["correct"], "temperature": cfg.temperature,
                        "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "template": cfg.template}}
            for ex, r in kept]
    extra = _mix_non_reasoning(non_reasoning, len(rows), cfg.non_reasoning_share, cfg.seed)
    rows += extra
    random.Random(cfg.seed).shuffle(rows)
    write_jsonl(out / "sft.jsonl", rows)
    summary = {"prompts": len(examples), "sampled_prompts": len(clean), "samples": sum(len(p) for p in problems),
               "correct": sum(bool(r["correct"]) for p in problems for r in p), "kept_reasoning": len(kept),
               "prompts_with_a_kept_sample": len({ex["id"] for ex, _ in kept}), "non_reasoning": len(extra),
               "dropped": dict(counts), "seconds": seconds, "path": str(out / "sft.jsonl"),
               "filters": filters_run(cfg, {name: len(ps) for name, ps in eval_prompts.items()})}
    write_json(out / "summary.json", summary)
    _report(out, summary, cfg)
    return summary


def select(problems: list[list[dict]], examples: list[dict], cfg, counts: Counter) -> list[tuple[dict, dict]]:
    """The kept ``(example, sample)`` pairs: correct, through every filter, at most ``cfg.keep`` per prompt;
    ``counts`` gets one count per dropped sample under the first reason that dropped it."""
    dedupe = filters.Deduplicator(near_threshold=cfg.near_duplicate)
    kept = []
    for example, samples in zip(examples, problems):
        dedupe.reset()
        taken = 0
        for r in samples:
            reason = _drop_reason(r, cfg, dedupe)
            if reason is None and taken >= cfg.keep:
                reason = f"over keep={cfg.keep} per prompt"
            if reason is not None:
                counts[reason.split(":")[0]] += 1
                continue
            kept.append((example, r))
            taken += 1
    return kept


def _drop_reason(r: dict, cfg, dedupe: filters.Deduplicator) -> str | None:
    if not r["correct"]:
        return "wrong"
    # the template opened the think block for the model, and the reply does not hold it already (R1's prefill does)
    opened = r.get("prompt", "").rstrip().endswith("<think>") and not r["completion"].lstrip().startswith("<think>")
    checks = [
        lambda: filters.no_reasoning(("<think>\n" if opened else "") + r["completion"]),
        lambda: filters.truncated(r["finish_reason"]) if cfg.drop_truncated else None,
        lambda: filters.language_mixed(r["completion"], cfg.language, cfg.min_language_share)
        if cfg.min_language_share > 0 else None,
        lambda: filters.long_paragraph(r["completion"], cfg.max_paragraph_chars) if cfg.max_paragraph_chars else None,
        lambda: filters.code_block(r["completion"]) if cfg.drop_code_blocks else None,
        lambda: dedupe.check(r["completion"]),  # last: only a sample that passed the rest is remembered
    ]
    return next((reason for check in checks if (reason := check())), None)


def _read_non_reasoning(path: str) -> list[dict]:
    rows = []
    for n, row in read_jsonl(Path(path)):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise ValueError(f"{path}:{n}: a non-reasoning row needs string 'prompt' and 'response' fields")
        rows.append(row)
    return rows


def _mix_non_reasoning(rows: list[dict], n_reasoning: int, share: float, seed: int) -> list[dict]:
    """``share`` of the final set from ``rows`` (as many as there are, at most), each answered without a chain
    of thought: an empty think block, then the answer.

    >>> [r["response"] for r in _mix_non_reasoning([{"prompt": "hi", "response": "Hello!"}], 3, 0.25, 0)]
    ['<think>\\n\\n</think>\\n\\nHello!']
    """
    want = min(len(rows), round(share / (1 - share) * n_reasoning)) if share else 0
    picked = random.Random(seed).sample(rows, want)
    return [{"prompt": r["prompt"], "response": f"<think>\n\n</think>\n\n{r['response'].strip()}",
             "source": {"kind": "non_reasoning"}} for r in picked]


def filters_run(cfg, contamination_sets: dict[str, int]) -> list[str]:
    """What the report says about each filter: on (with its setting) or off."""
    def switch(on: bool, what: str) -> str:
        return what if on else f"{what.split(':')[0]}: off"

    sets = ", ".join(f"{name} ({n} prompts)" for name, n in contamination_sets.items())
    return ["correct: the task's verifier accepts the answer",
            "no_reasoning: a closed, non-empty think block followed by an answer (always on)",
            switch(cfg.drop_truncated, "truncated: replies cut at the length limit are dropped"),
            switch(cfg.min_language_share > 0, f"language: at least {cfg.min_language_share:.0%} of the reasoning's "
                                               f"words in {cfg.language}"),
            switch(cfg.max_paragraph_chars > 0, f"long_paragraph: no paragraph over {cfg.max_paragraph_chars} "
                                                "characters in the reasoning"),
            switch(cfg.drop_code_blocks, "code_block: no fenced code block in the reasoning"),
            f"duplicate: exact repeats, and near repeats at word 5-gram Jaccard >= {cfg.near_duplicate}",
            f"decontamination: prompts sharing a word 8-gram with {sets}" if sets else
            "decontamination: off (no --decontaminate sets named)"]


def _report(out: Path, summary: dict, cfg) -> None:
    lines = [f"# Rejection sampling from `{cfg.model}` on task `{cfg.task}`", "",
             f"{summary['sampled_prompts']} of {summary['prompts']} prompts sampled, {cfg.n} samples each "
             f"(temperature {cfg.temperature}, top-p {cfg.top_p}, at most {cfg.max_new_tokens} tokens): "
             f"{summary['samples']} samples, {summary['correct']} correct.", "",
             f"Kept {summary['kept_reasoning']} reasoning samples from {summary['prompts_with_a_kept_sample']} "
             f"prompts (at most {cfg.keep} each), plus {summary['non_reasoning']} non-reasoning samples.", "",
             "| dropped because | count |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(summary["dropped"].items(), key=lambda x: -x[1])]
    lines += ["", "Filters, in the order they ran (a sample is counted under the first that dropped it):", ""]
    lines += [f"- {line}" for line in summary["filters"]]
    lines += ["", f"Output: `{summary['path']}`"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
