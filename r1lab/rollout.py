"""The rollout layer: prompts, sampling settings and a Task in; sampled, scored groups out.

Every stage that samples from a model goes through here, so they all render prompts, generate and judge the
same way: GRPO's training groups (:func:`generate_groups`, :func:`score_group`) and its held-out evaluation,
``r1lab eval`` and ``r1lab sample`` (:func:`sample_problems`, resumable through :func:`sample_in_batches`), cold
start from a model and distillation from a local teacher. :func:`open_engine` is how every command gets an engine;
GRPO samples through :func:`rollout_engine` (the same engine, or vLLM beside the trainer) and updates inside
:func:`policy_update`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from r1lab.chat import render
from r1lab.config import reward_spec_problems
from r1lab.console import progress as progress_bar, say
from r1lab.engine import Completion, SamplingParams, TorchEngine, VllmEngine
from r1lab.engine.vllm_engine import policy_weights
from r1lab.files import append_jsonl, write_atomic, write_json
from r1lab.models import load_model, resolve_device, resolve_dtype, use_threads
from r1lab.rewards import REWARDS, get_reward, score
from r1lab.rewards.judge import judge_reward
from r1lab.rewards.reward_model import model_reward
from r1lab.runs import refuse_changed
from r1lab.tasks.answers import closed_part, extract_answer
from r1lab.tasks.base import question_text

#: batch ``b`` of a seeded run samples with seed ``seed * BATCH_SEED_STRIDE + b`` (an engine without ``stream_ids``)
BATCH_SEED_STRIDE = 1_000_003
#: how :func:`sample_in_batches` seeds samples (recorded with them, so samples seeded otherwise are never mixed in)
STREAMS = "per problem: (seed, problem index, sample index)"


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


def rollout_engine(engine: TorchEngine, kind: str = "torch", gpu_memory_utilization: float = 0.3):
    """What a trainer of ``engine.model`` samples with: ``engine`` itself ("torch": it samples from the very module
    being trained), or a vLLM engine sharing its GPU ("vllm", :mod:`r1lab.engine.vllm_engine`), built from the
    folder or hub id the model was loaded from and given the model's current weights (a checkpoint's, LoRA merged).
    Train inside :func:`policy_update` so the vLLM copy follows the trained weights."""
    if kind == "torch":
        return engine
    if kind != "vllm":
        raise ValueError(f"engine={kind!r}: choose one of torch, vllm")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("engine=vllm samples in one process, beside one trainer; under torchrun use --engine torch")
    model = engine.model
    source = model.name_or_path
    if not source or (Path(source).is_dir() and not (Path(source) / "config.json").is_file()):
        raise ValueError(f"engine=vllm starts vLLM from the HF folder or hub id the policy was loaded from, and "
                         f"{source!r} is neither (a .gguf's folder?); convert the model to an HF folder, or use "
                         "--engine torch")
    sampler = VllmEngine(source, tokenizer=engine.tokenizer, dtype=engine.dtype or "auto",
                         gpu_memory_utilization=gpu_memory_utilization)
    sampler.load_weights(policy_weights(model))
    untempered = "; this vLLM's are untempered, 0.10 or later returns them tempered" * (
        sampler.logprobs_mode == "raw_logprobs")
    say(f"sampling with vLLM ({gpu_memory_utilization:.0%} of the GPU's memory); the gap between its log-probs and "
        f"the trainer's is logged as logprob_gap_mean{untempered}")
    return sampler


@contextlib.contextmanager
def policy_update(engine, model):
    """Around the optimizer steps on ``model``: a vLLM engine sleeps through them (its GPU memory freed for the
    update) and then gets the new weights; the torch engine samples from ``model`` itself, so nothing happens."""
    if not isinstance(engine, VllmEngine):
        yield
        return
    engine.sleep()
    yield
    engine.wake_up()
    engine.load_weights(policy_weights(model))


def generate_groups(engine, examples: list[dict], template: str, prefill: str | None, params: SamplingParams,
                    task, stream_ids: list[int] | None = None) -> list[Group]:
    """``params.n`` completions for each example's question, rendered with ``template``; with ``stream_ids`` (one
    key per example) each example's samples draw from their own random stream, whatever else is in the batch."""
    rendered = [render([{"role": "user", "content": question_text(ex, task)}], template, engine.tokenizer,
                       prefill=prefill) for ex in examples]
    prompts = [engine.encode(r.text) for r in rendered]
    keyed = stream_ids is not None and takes_stream_ids(engine)
    outputs = engine.generate(prompts, params, stream_ids=stream_ids) if keyed else engine.generate(prompts, params)
    return [Group(example=ex, prompt_ids=ids, prefill=r.prefill, completions=out, thinking=r.thinking)
            for ex, ids, r, out in zip(examples, prompts, rendered, outputs)]


def takes_stream_ids(engine) -> bool:
    """Whether ``engine.generate`` keys each prompt's samples by a stream id (r1lab's engines do)."""
    return "stream_ids" in inspect.signature(engine.generate).parameters


def build_rewards(weights: dict, task, language: str = "en", max_length: int | None = None,
                  device: str = "auto") -> dict:
    """``name -> (fn, weight)`` for the named rewards; ``accuracy`` is the task's own verifier, ``language_consistency``
    targets ``language`` and ``overlong`` penalises replies near ``max_length`` tokens. A reward given as a spec
    (``{reward_model: PATH, ...}`` or ``{judge: {...}, ...}``) is built from it, each reward model loaded once, on
    ``device`` (the policy's): :mod:`r1lab.rewards.reward_model`, :mod:`r1lab.rewards.judge`."""
    problems = [p for name, spec in weights.items() if isinstance(spec, dict) for p in reward_spec_problems(name, spec)]
    if problems:
        raise ValueError("\n  ".join(["bad reward specs:", *problems]) if len(problems) > 1 else problems[0])
    out, loaded = {}, {}
    for name, weight in weights.items():
        if isinstance(weight, dict):
            spec = weight
            fn = model_reward(spec, device, loaded) if "reward_model" in spec else judge_reward(spec)
            out[name] = (fn, float(spec.get("weight", 1.0)))
            continue
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
    """Fill ``group.rewards`` (weighted totals) and ``group.per_reward`` from ``rewards`` (:func:`build_rewards`). The
    ``accuracy`` reward judges what evaluation judges (:func:`judged_texts`): a reply cut at the length limit only on
    the answer it had closed, and 0 if it had none."""
    lengths = [len(c) for c in group.completions]
    examples = [group.example] * len(group.completions)
    scores = score(group.responses, examples, {k: v for k, v in rewards.items() if k != "accuracy"},
                   completion_lengths=lengths)
    if "accuracy" in rewards:
        judged = judged_texts(group)
        accuracy = score([text or "" for text in judged], examples, {"accuracy": rewards["accuracy"]},
                         completion_lengths=lengths).per_reward["accuracy"]
        weight = rewards["accuracy"][1]
        for i, (text, value) in enumerate(zip(judged, accuracy)):
            if text is None and value is not None:  # an unfinished reply's accuracy is 0, as in evaluation
                accuracy[i] = value = 0.0
            scores.totals[i] += weight * value if value is not None else 0.0
        scores.per_reward = {name: accuracy if name == "accuracy" else scores.per_reward[name] for name in rewards}
    group.rewards, group.per_reward = scores.totals, scores.per_reward


def judged_texts(group: Group) -> list[str | None]:
    """Per completion, what its verifier judges: the whole response if it finished, else the part up to the answer
    it had closed before the length limit (:func:`r1lab.tasks.answers.closed_part`; code fences close an answer
    only for an example judged by tests, a code example), else None: no final answer."""
    code = bool(group.example.get("tests"))
    return [response if c.finish_reason != "length" else closed_part(response, code)
            for c, response in zip(group.completions, group.responses)]


def sample_problems(engine, task, examples: list[dict], params: SamplingParams, template: str,
                    prefill: str | None) -> list[list[dict]]:
    """``params.n`` samples for each example, each judged by ``task.verify``: one record list per problem. A reply
    cut at the length limit is judged on the answer it had closed (:func:`judged_texts`); with none, its answer is
    None and it is wrong."""
    extract = getattr(task, "extract", extract_answer)
    out = []
    for group in generate_groups(engine, examples, template, prefill, params, task):
        prompt = engine.tokenizer.decode(group.prompt_ids)  # exactly what the model was given
        out.append([{"id": str(group.example.get("id", "")), "sample": j, "prompt": prompt, "completion": response,
                     "answer": extract(judged) if judged is not None else None,
                     "reference": group.example.get("answer"),
                     "correct": task.verify(judged, **group.example) if judged is not None else 0.0,
                     "tokens": len(completion.token_ids), "finish_reason": completion.finish_reason}
                    for j, (completion, response, judged)
                    in enumerate(zip(group.completions, group.responses, judged_texts(group)))])
    return out


def batch_settings(model: str, template: str, prefill: str | None, params: SamplingParams, seed: int,
                   problems_per_batch: int, source: str, rows: int = 64) -> dict:
    """What the samples of :func:`sample_in_batches` depend on: reused only when every one of these is the same
    (``problems_per_batch`` only with an engine that cannot key a problem's samples by its index); and
    ``problems_per_batch``, where 0 means ``rows // k``."""
    return {"model": model, "template": template, "prefill": prefill, "k": params.n, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k, "max_new_tokens": params.max_new_tokens, "seed": seed,
            "streams": STREAMS, "problems_per_batch": problems_per_batch or max(1, rows // params.n), "source": source}


def sample_in_batches(engine, task, examples: list[dict], params: SamplingParams, template: str,
                      prefill: str | None, seed: int, folder: Path, settings: dict,
                      progress: bool = True) -> tuple[list[list[dict]], float]:
    """Sample and judge every problem in batches of ``settings["problems_per_batch"]``, reusing the problems whose
    samples ``folder/samples.jsonl`` holds in complete batches; returns each problem's records and the seconds spent.
    ``folder/settings.json`` records ``settings``; samples made with other settings are refused.

    What a problem's samples depend on: the settings, and, with r1lab's engine (one that takes ``stream_ids``),
    nothing else. Sample j of problem p (its index in ``examples``) draws from a random stream of (seed, p, j)
    alone, and the reply budget is cut to the context window by the longest prompt of all ``examples``, never
    of one batch; so batching and ``max_rows`` do not change them, nor does a shorter list (``--limit``) unless
    that changes the cut (``r1lab eval`` cuts the budget by the whole benchmark first, so it never does). A
    rerun after an interruption, or with another batch size or limit, ends with the samples one uninterrupted
    run makes. With another engine, batch ``b`` samples with seed
    ``seed * BATCH_SEED_STRIDE + b`` and a problem's samples depend on its batch, so ``problems_per_batch`` is
    part of the settings."""
    keyed = takes_stream_ids(engine)
    folder.mkdir(parents=True, exist_ok=True)
    check_settings_file(folder / "settings.json",
                        {k: v for k, v in settings.items() if k != "problems_per_batch" or not keyed})
    samples_path = folder / "samples.jsonl"
    size = settings["problems_per_batch"]
    done = read_complete_batches(samples_path, len(examples), size, params.n)
    n_batches = (len(examples) + size - 1) // size
    longest = max((len(engine.encode(e["prompt"])) for e in examples), default=0) + 64  # + template, instruction
    room = max(1, min(params.max_new_tokens, engine.context_length - longest))
    with progress_bar(total=len(examples), initial=sum(len(done.get(b, ())) for b in range(n_batches)),
                      unit="problem", desc=task.name, disable=not progress) as bar:
        for b in range(n_batches):
            if b in done:
                continue
            batch = examples[b * size:(b + 1) * size]
            t0 = time.perf_counter()
            if keyed:  # each problem's samples keyed by its index: the same whatever batch it is in
                batch_engine = SimpleNamespace(tokenizer=engine.tokenizer, encode=engine.encode, generate=partial(
                    engine.generate, stream_ids=range(b * size, b * size + len(batch))))
                batch_params = dataclasses.replace(params, seed=seed, max_new_tokens=room)
            else:
                batch_engine = engine
                batch_params = dataclasses.replace(params, seed=seed * BATCH_SEED_STRIDE + b, max_new_tokens=room)
            problems = sample_problems(batch_engine, task, batch, batch_params, template, prefill)
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
    """Write ``settings`` to ``path``, or, if it exists, refuse settings other than the ones it holds."""
    if not path.is_file():
        write_json(path, settings)
        return
    refuse_changed(path.parent, json.loads(path.read_text()), settings, list(settings),
                   "Use another --out, or the same settings to resume", what="samples made")
