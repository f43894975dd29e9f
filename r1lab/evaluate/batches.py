"""The resumable batch files of ``r1lab eval`` and ``r1lab sample``: every problem's samples appended to
``samples.jsonl`` a batch at a time (one synced write each), with ``settings.json`` saying what they depend on, so a
run that was interrupted, or rerun with another batch size or ``--limit``, reuses what is on disk and ends with the
samples one uninterrupted run makes (:func:`sample_in_batches`)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from r1lab.console import progress as progress_bar
from r1lab.engine import SamplingParams
from r1lab.files import append_jsonl, write_atomic, write_json
from r1lab.rollout import context_room, sample_problems
from r1lab.runs import refuse_changed

#: how :func:`sample_in_batches` seeds samples (recorded with them, so samples seeded otherwise are never mixed in)
STREAMS = "per problem: (seed, problem index, sample index)"


def batch_settings(model: str, template: str, prefill: str | None, params: SamplingParams, seed: int,
                   problems_per_batch: int, source: str, rows: int = 64, engine: str = "torch",
                   precision: str | None = None) -> dict:
    """What the samples of :func:`sample_in_batches` depend on (reused only when every one of these is the same),
    and ``problems_per_batch``, where 0 means ``rows // k`` (the unit a resume redoes; samples do not depend on
    it). ``engine`` names the engine (and an endpoint's address): another engine samples differently; so does
    another ``precision`` (a local engine's: fp32, bf16, fp16; None for an endpoint)."""
    settings = {"model": model, "template": template, "prefill": prefill, "k": params.n,
                "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                "max_new_tokens": params.max_new_tokens, "seed": seed, "streams": STREAMS,
                "problems_per_batch": problems_per_batch or max(1, rows // params.n), "source": source,
                "engine": engine}
    return settings | ({"precision": precision} if precision else {})


def sample_in_batches(engine, task, examples: list[dict], params: SamplingParams, template: str,
                      prefill: str | None, seed: int, folder: Path, settings: dict,
                      progress: bool = True) -> tuple[list[list[dict]], float]:
    """Sample and judge every problem in batches of ``settings["problems_per_batch"]``, reusing the problems whose
    samples ``folder/samples.jsonl`` holds in complete batches; returns each problem's records and the seconds spent.
    ``folder/settings.json`` records ``settings``; samples made with other settings are refused.

    What a problem's samples depend on: the settings, and nothing else. Sample j of problem p (its index in
    ``examples``) draws from a random stream of (seed, p, j) alone (the engine's ``stream_ids``), and the reply
    budget is cut to the context window by the longest prompt of all ``examples``, never of one batch; so batching
    and ``max_rows`` do not change them, nor does a shorter list (``--limit``) unless that changes the cut
    (``r1lab eval`` cuts the budget by the whole benchmark first, so it never does). A rerun after an
    interruption, or with another batch size or limit, ends with the samples one uninterrupted run makes (with
    vLLM, up to its batch-dependent rounding; with an endpoint, as far as the server honours seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    check_settings_file(folder / "settings.json", {k: v for k, v in settings.items() if k != "problems_per_batch"})
    samples_path = folder / "samples.jsonl"
    size = settings["problems_per_batch"]
    done = read_complete_batches(samples_path, len(examples), size, params.n)
    n_batches = (len(examples) + size - 1) // size
    room = context_room(engine, examples, params.max_new_tokens)
    params = dataclasses.replace(params, seed=seed, max_new_tokens=room)
    with progress_bar(total=len(examples), initial=sum(len(done.get(b, ())) for b in range(n_batches)),
                      unit="problem", desc=task.name, disable=not progress) as bar:
        for b in range(n_batches):
            if b in done:
                continue
            batch = examples[b * size:(b + 1) * size]
            t0 = time.perf_counter()
            # each problem's samples keyed by its index: the same whatever batch it is in
            problems = sample_problems(engine, task, batch, params, template, prefill,
                                       stream_ids=list(range(b * size, b * size + len(batch))))
            seconds = time.perf_counter() - t0
            rows = []
            for i, records in enumerate(problems):
                for r in records:
                    r.update({"benchmark": task.name, "batch": b, "batch_problems": len(batch),
                              "problem": b * size + i, "seconds": seconds / (len(problems) * params.n)})
                    rows.append(r)
            append_jsonl(samples_path, *rows)  # one synced write per batch
            done[b] = problems
            bar.update(len(batch))
    problems = [recs for b in range(n_batches) for recs in done[b]]
    seconds = sum(r["seconds"] for recs in problems for r in recs)
    return problems, seconds


def read_complete_batches(path: Path, n_problems: int, size: int, k: int,
                          repair: bool = True) -> dict[int, list[list[dict]]]:
    """The batches of this run (``n_problems`` in batches of ``size``) whose problems' samples are all on disk, as
    ``{batch: [records of each problem]}``. A problem's records come from any complete written batch that holds
    them (the first by (batch, size)), whatever its size: its samples do not depend on the batch
    (:func:`sample_in_batches`).

    A batch is written with its problem count; one that has fewer records than that (the run died while
    writing) is dropped, as is a torn last line, and (``repair``) the file is rewritten without them. Complete
    batches that this run does not need (an earlier run had a larger ``limit``) stay in the file untouched.
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
    if repair and (torn or len(complete) < len(written)):
        write_atomic(path, "".join(line for line, r in zip(lines, records)
                                   if (r["batch"], r["batch_problems"]) in complete))
    found: dict[int, list[dict]] = {}  # problem -> its k records
    for key in sorted(complete):
        per_problem: dict[int, list[dict]] = {}
        for r in written[key]:
            per_problem.setdefault(r["problem"], []).append(r)
        for problem, recs in per_problem.items():
            if problem not in found and len(recs) == k:
                found[problem] = sorted(recs, key=lambda r: r["sample"])
    usable = {}
    for b in range((n_problems + size - 1) // size):
        needed = range(b * size, min(n_problems, (b + 1) * size))
        if all(p in found for p in needed):
            usable[b] = [found[p] for p in needed]
    return usable


def check_settings_file(path: Path, settings: dict) -> None:
    """Write ``settings`` to ``path``, or, if it exists, refuse settings other than the ones it holds (samples
    written before engines were named were made by the torch engine; before precisions were recorded, in an
    unrecorded one, which is not compared)."""
    if not path.is_file():
        write_json(path, settings)
        return
    saved = {"engine": "torch", **json.loads(path.read_text())}
    keys = [key for key in settings if key != "precision" or key in saved]
    refuse_changed(path.parent, saved, settings, keys,
                   "Use another --out, or the same settings to resume", what="samples made")
