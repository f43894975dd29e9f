"""The rollout layer: prompts, sampling settings and a Task in; sampled, scored groups out.

Every stage that samples from a model goes through here, so they all render prompts, generate and judge the
same way: GRPO's training groups (:func:`generate_groups`, :func:`score_group`) and its held-out evaluation,
``r1lab eval`` and ``r1lab sample`` (:func:`sample_problems`, resumable through :func:`sample_in_batches`), cold
start from a model and distillation from a local teacher. :func:`open_engine` is how every command gets an engine.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from r1lab.chat import render
from r1lab.console import progress as progress_bar
from r1lab.engine import Completion, SamplingParams, TorchEngine
from r1lab.files import append_jsonl, write_atomic, write_json
from r1lab.models import load_model, resolve_device, resolve_dtype, use_threads
from r1lab.rewards import REWARDS, get_reward, score
from r1lab.runs import refuse_changed
from r1lab.tasks.answers import closed_answer, extract_answer
from r1lab.tasks.base import question_text

#: batch ``b`` of a seeded run samples with seed ``seed * BATCH_SEED_STRIDE + b``
BATCH_SEED_STRIDE = 1_000_003


@dataclass
class Group:
    """One prompt and the G completions sampled for it, with their scores."""

    example: dict
    prompt_ids: list[int]
    prefill: str
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)  # weighted total per completion
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: list[float] = field(default_factory=list)
    thinking: bool = False  # the prompt opened the think block, so each reply starts inside it

    @property
    def responses(self) -> list[str]:
        """The whole assistant responses (prefill + generated text): what rewards and people read."""
        return [self.prefill + c.text for c in self.completions]

    @property
    def finished(self) -> list[bool]:
        """Per completion: whether it has a final answer to judge. A reply cut at the length limit has one only if
        it already closed it (:func:`r1lab.tasks.answers.closed_answer`)."""
        return [c.finish_reason != "length" or closed_answer(r) for c, r in zip(self.completions, self.responses)]

    @property
    def has_signal(self) -> bool:
        return max(self.rewards) - min(self.rewards) > 1e-6


def open_engine(model, threads: int = 0, lora: dict | None = None, device: str = "auto", dtype: str = "auto",
                train: bool = False) -> TorchEngine:
    """The engine for ``model``: a name :func:`r1lab.models.load_model` understands (hub id, folder, .gguf, the
    embedded default), or a loaded ``(model, tokenizer)`` pair, put on ``device``. Torch runs on ``threads`` CPU
    threads (0: all). The engine decodes in the ``dtype`` precision; the weights are held in it too, except for a
    model that will be trained (``train``), whose weights stay fp32 (:mod:`r1lab.optim` says why)."""
    use_threads(threads)
    where = resolve_device(device)
    precision = resolve_dtype(dtype, where)
    held = torch.float32 if train else precision
    if isinstance(model, str):
        model, tokenizer = load_model(model, dtype=held, lora=lora, device=where)
    else:
        model, tokenizer = model[0].to(where), model[1]
    return TorchEngine(model, tokenizer, dtype=precision)


def generate_groups(engine, examples: list[dict], template: str, prefill: str | None, params: SamplingParams,
                    task) -> list[Group]:
    """``params.n`` completions for each example's question, rendered with ``template``."""
    rendered = [render([{"role": "user", "content": question_text(ex, task)}], template, engine.tokenizer,
                       prefill=prefill) for ex in examples]
    prompts = [engine.encode(r.text) for r in rendered]
    outputs = engine.generate(prompts, params)
    return [Group(example=ex, prompt_ids=ids, prefill=r.prefill, completions=out, thinking=r.thinking)
            for ex, ids, r, out in zip(examples, prompts, rendered, outputs)]


def build_rewards(weights: dict, task, language: str = "en", max_length: int | None = None) -> dict:
    """``name -> (fn, weight)`` for the named rewards; ``accuracy`` is the task's own verifier, ``language_consistency``
    targets ``language`` and ``overlong`` penalises replies near ``max_length`` tokens."""
    out = {}
    for name, weight in weights.items():
        if name == "accuracy":
            fn = task.verify
        elif name not in REWARDS:
            raise ValueError(f"rewards: {name!r} is unknown; use accuracy or one of {', '.join(sorted(REWARDS))}, "
                             "or register your own with r1lab.rewards.register")
        elif name == "language_consistency":
            fn = partial(get_reward(name), language=language)
        elif name == "overlong":
            fn = partial(get_reward(name), max_length=max_length)
        else:
            fn = get_reward(name)
        out[name] = (fn, float(weight))
    return out


def score_group(group: Group, rewards: dict) -> None:
    """Fill ``group.rewards`` (weighted totals) and ``group.per_reward`` from ``rewards`` (:func:`build_rewards`)."""
    scores = score(group.responses, [group.example] * len(group.completions), rewards,
                   completion_lengths=[len(c) for c in group.completions])
    if "accuracy" in rewards:  # an unfinished reply's accuracy is 0, as in evaluation
        weight = rewards["accuracy"][1]
        for i, finished in enumerate(group.finished):
            value = scores.per_reward["accuracy"][i]
            if not finished and value:
                scores.totals[i] -= weight * value
                scores.per_reward["accuracy"][i] = 0.0
    group.rewards, group.per_reward = scores.totals, scores.per_reward


def sample_problems(engine, task, examples: list[dict], params: SamplingParams, template: str,
                    prefill: str | None) -> list[list[dict]]:
    """``params.n`` samples for each example, each judged by ``task.verify``: one record list per problem. A reply
    cut at the length limit before it closed a final answer has none: its answer is None and it is wrong."""
    extract = getattr(task, "extract", extract_answer)
    out = []
    for group in generate_groups(engine, examples, template, prefill, params, task):
        prompt = engine.tokenizer.decode(group.prompt_ids)  # exactly what the model was given
        out.append([{"id": str(group.example.get("id", "")), "sample": j, "prompt": prompt, "completion": response,
                     "answer": extract(response) if finished else None, "reference": group.example.get("answer"),
                     "correct": task.verify(response, **group.example) if finished else 0.0,
                     "tokens": len(completion.token_ids), "finish_reason": completion.finish_reason}
                    for j, (completion, response, finished)
                    in enumerate(zip(group.completions, group.responses, group.finished))])
    return out


def batch_settings(model: str, template: str, prefill: str | None, params: SamplingParams, seed: int,
                   problems_per_batch: int, source: str, rows: int = 64) -> dict:
    """What the samples of :func:`sample_in_batches` depend on: reused only when every one of these is the same;
    ``problems_per_batch`` 0 means ``rows // k``."""
    return {"model": model, "template": template, "prefill": prefill, "k": params.n, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k, "max_new_tokens": params.max_new_tokens, "seed": seed,
            "problems_per_batch": problems_per_batch or max(1, rows // params.n), "source": source}


def sample_in_batches(engine, task, examples: list[dict], params: SamplingParams, template: str,
                      prefill: str | None, seed: int, folder: Path, settings: dict,
                      progress: bool = True) -> tuple[list[list[dict]], float]:
    """Sample and judge every problem in batches of ``settings["problems_per_batch"]``, reusing the complete batches
    in ``folder/samples.jsonl``; returns each problem's records and the seconds spent. Batch ``b`` always holds the
    same problems and its own seed, so a rerun after an interruption ends with the samples an uninterrupted run
    makes. ``folder/settings.json`` records ``settings``; samples made with other settings are refused."""
    folder.mkdir(parents=True, exist_ok=True)
    check_settings_file(folder / "settings.json", settings)
    samples_path = folder / "samples.jsonl"
    size = settings["problems_per_batch"]
    done = read_complete_batches(samples_path, len(examples), size, params.n)
    n_batches = (len(examples) + size - 1) // size
    with progress_bar(total=len(examples), initial=sum(len(done.get(b, ())) for b in range(n_batches)),
                      unit="problem", desc=task.name, disable=not progress) as bar:
        for b in range(n_batches):
            if b in done:
                continue
            batch = examples[b * size:(b + 1) * size]
            t0 = time.perf_counter()
            longest = max(len(engine.encode(e["prompt"])) for e in batch) + 64  # + template and instruction
            room = max(1, min(params.max_new_tokens, engine.context_length - longest))
            batch_params = dataclasses.replace(params, seed=seed * BATCH_SEED_STRIDE + b, max_new_tokens=room)
            problems = sample_problems(engine, task, batch, batch_params, template, prefill)
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


def check_settings_file(path: Path, settings: dict) -> None:
    """Write ``settings`` to ``path``, or, if it exists, refuse settings other than the ones it holds."""
    if not path.is_file():
        write_json(path, settings)
        return
    refuse_changed(path.parent, json.loads(path.read_text()), settings, list(settings),
                   "Use another --out, or the same settings to resume", what="samples made")
