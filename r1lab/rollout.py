"""The rollout layer: prompts, sampling settings and a Task in; sampled, scored groups out.

Every stage that samples from a model goes through here, so they all make prompts, generate and judge the
same way, whichever engine samples (:mod:`r1lab.engine.registry`: torch, vLLM, an OpenAI-compatible endpoint):
GRPO's training groups (:func:`generate_groups`, :func:`score_group`) and its held-out evaluation, ``r1lab eval``
and ``r1lab sample`` (:func:`sample_problems`, resumable through :func:`sample_in_batches`), cold start from a
model and distillation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from r1lab.config import reward_spec_problems
from r1lab.console import progress as progress_bar
from r1lab.engine import Completion, Prompt, SamplingParams
from r1lab.files import append_jsonl, write_atomic, write_json
from r1lab.rewards import REWARDS, get_reward, score
from r1lab.rewards.judge import judge_reward
from r1lab.rewards.reward_model import model_reward
from r1lab.runs import refuse_changed
from r1lab.tasks.answers import closed_part, extract_answer
from r1lab.tasks.base import question_text

#: how :func:`sample_in_batches` seeds samples (recorded with them, so samples seeded otherwise are never mixed in)
STREAMS = "per problem: (seed, problem index, sample index)"


@dataclass
class Group:
    """One prompt and the G completions sampled for it, with their scores."""

    example: dict
    prompt: Prompt
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)  # weighted total per completion
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: list[float] = field(default_factory=list)

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.prompt.token_ids)

    @property
    def prefill(self) -> str:
        """The forced start of every reply (its text is part of each response)."""
        return self.prompt.prefill

    @property
    def thinking(self) -> bool:
        """The prompt opened the think block, so each reply starts inside it."""
        return self.prompt.thinking

    @property
    def responses(self) -> list[str]:
        """The whole assistant responses (prefill + generated text): what rewards and people read."""
        return [self.prefill + c.text for c in self.completions]

    @property
    def has_signal(self) -> bool:
        return max(self.rewards) - min(self.rewards) > 1e-6


def generate_groups(engine, examples: list[dict], template: str, prefill: str | None, params: SamplingParams,
                    task, stream_ids: list[int] | None = None) -> list[Group]:
    """``params.n`` completions for each example's question, made into a prompt by the engine (rendered with
    ``template``, or for an endpoint's chat API sent as a conversation); with ``stream_ids`` (one key per example)
    each example's samples draw from their own random stream, whatever else is in the batch."""
    prompts = [engine.prompt([{"role": "user", "content": question_text(ex, task)}], template, prefill)
               for ex in examples]
    outputs = engine.generate(prompts, params, stream_ids=stream_ids)
    return [Group(example=ex, prompt=prompt, completions=out) for ex, prompt, out in zip(examples, prompts, outputs)]


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
                    prefill: str | None, stream_ids: list[int] | None = None) -> list[list[dict]]:
    """``params.n`` samples for each example, each judged by ``task.verify``: one record list per problem. A reply
    cut at the length limit is judged on the answer it had closed (:func:`judged_texts`); with none, its answer is
    None and it is wrong."""
    extract = getattr(task, "extract", extract_answer)
    out = []
    for group in generate_groups(engine, examples, template, prefill, params, task, stream_ids):
        out.append([{"id": str(group.example.get("id", "")), "sample": j, "prompt": group.prompt.text,
                     "completion": response,
                     "answer": extract(judged) if judged is not None else None,
                     "reference": group.example.get("answer"),
                     "correct": task.verify(judged, **group.example) if judged is not None else 0.0,
                     "tokens": completion.n_tokens, "finish_reason": completion.finish_reason}
                    for j, (completion, response, judged)
                    in enumerate(zip(group.completions, group.responses, judged_texts(group)))])
    return out


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


def context_room(engine, examples: list[dict], max_new_tokens: int) -> int:
    """``max_new_tokens`` cut so the longest of ``examples``' prompts (+ 64 for a template and instruction) and
    its reply fit the engine's context; an engine whose context is unknown (an endpoint that does not say) is not
    cut. An endpoint without a tokenizer here counts a prompt's characters, never fewer than its tokens."""
    if engine.context_length is None:
        return max_new_tokens
    size = (lambda text: len(engine.encode(text))) if engine.tokenizer is not None else len
    longest = max((size(e["prompt"]) for e in examples), default=0) + 64
    return max(1, min(max_new_tokens, engine.context_length - longest))


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
