"""``r1lab coldstart``: a cold-start SFT set (readable reasoning in the think block, then the answer).

R1 fixes R1-Zero's unreadable, format-less start with a few thousand readable chains of thought before RL,
collected three ways, which are the three ``source`` settings here:

- ``traces``: a procedural task writes its own (``Task.trace``): :func:`r1lab.tasks.arithmetic.arithmetic_trace`
  works an expression out step by step (products first, then sums left to right) and checks the result; they
  are written in the format the RL stage rewards: ``<think>\\nSTEPS\\n</think>\\n<answer>ANSWER</answer>``.
- ``model``: a model is prompted with ``shots`` such worked examples and asked the task's questions; of its
  ``n`` samples per question the first that the task verifies, that has the think/answer format and that passes
  the readability filters (:mod:`r1lab.sft.filters`) is kept, with the plain question (no examples) as prompt.
- ``jsonl``: your file, kept where the reply has a think block and passes the readability filters.

Every kept sample is verified (sources ``traces`` and ``model``) and the file is written atomically.
Procedural traces exist for ``arithmetic`` and ``countdown`` (from the solution the problem was drawn with).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from r1lab.config import engine_choice
from r1lab.engine import SamplingParams, open_engine
from r1lab.files import write_atomic
from r1lab.rewards.format import format_reward
from r1lab.rollout import generate_groups
from r1lab.sft import filters
from r1lab.sft.data import load_sft_data
from r1lab.tasks import TASKS, build_task
from r1lab.tasks.base import Task, question_text


def write_coldstart(cfg, progress: bool = True) -> dict:
    """Build the set from ``cfg.source``; returns counts and the path."""
    cfg.validate()
    sources = {"traces": _from_traces, "model": _from_model, "jsonl": _from_jsonl}
    out = Path(cfg.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; coldstart writes one JSONL file, e.g. --out {out}/coldstart.jsonl")
    rows, dropped = sources[cfg.source](cfg, progress)
    if rows:  # an empty set is reported, not written
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if out.exists() and out.read_text(encoding="utf-8") != text:
            raise ValueError(f"{out} already exists with other samples; r1lab never overwrites data. Choose another "
                             f"--out, or delete {out} first")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
    return {"written": len(rows), "rejected": sum(dropped.values()), "dropped": dict(dropped), "path": str(out)}


def _has_traces(task) -> bool:
    """Whether ``task`` (a Task, or a registered Task class) writes its own worked traces (``Task.trace``)."""
    cls = task if isinstance(task, type) else type(task)
    return issubclass(cls, Task) and cls.trace is not Task.trace


def _trace_task(cfg) -> Task:
    if not _has_traces(TASKS.get(cfg.task)):
        traced = [name for name, factory in TASKS.items() if _has_traces(factory)]
        raise ValueError(f"r1lab writes worked traces (--source traces, and the examples --source model is prompted "
                         f"with) for {', '.join(traced)} only; for task {cfg.task!r} give your own traces "
                         "(--source jsonl --data FILE.jsonl) or ask a teacher model (r1lab distill)")
    return build_task(cfg.task, cfg.task_args)


def _traced(example: dict, task: Task) -> str:
    reasoning, answer = task.trace(example)
    return f"<think>\n{reasoning}\n</think>\n<answer>{answer}</answer>"


def _from_traces(cfg, progress: bool):
    task = _trace_task(cfg)
    rows, dropped = [], Counter()
    for example in task.examples("train")[:cfg.examples]:
        response = _traced(example, task)
        if task.verify(response, **example) != 1.0:
            dropped["wrong"] += 1
            continue
        rows.append({"prompt": question_text(example, task), "response": response, "source": f"coldstart:{cfg.task}"})
    return rows, dropped


def _from_model(cfg, progress: bool):
    """Few-shot sampling: the shots are traces of other training examples; kept replies are verified and
    readable, and are stored against the plain question."""
    task = _trace_task(cfg)
    train = task.examples("train")
    shots, examples = train[:cfg.shots], train[cfg.shots:cfg.shots + cfg.examples]
    header = "Here are worked examples. Think step by step inside <think> </think>, then give the answer " \
             "inside <answer> </answer>.\n\n" + "\n\n".join(
                 f"Question: {s['prompt']}\nReply: {_traced(s, task)}" for s in shots)
    engine = open_engine(cfg.model, *engine_choice(cfg), threads=0, device=cfg.device, dtype=cfg.dtype)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            stop=["</answer>"], include_stop_str_in_output=True, seed=cfg.seed)
    prompted = [dict(e, prompt=f"{header}\n\nQuestion: {e['prompt']}\nReply:") for e in examples]
    try:
        return _sample_traces(engine, task, cfg, params, examples, prompted)
    finally:
        engine.close()


def _sample_traces(engine, task, cfg, params, examples: list[dict], prompted: list[dict]):
    """Eight prompts at a time: each example's first reply that is right, in format and readable is kept."""
    rows, dropped = [], Counter()
    for start in range(0, len(prompted), 8):
        groups = generate_groups(engine, prompted[start:start + 8], "native", None, params, task)
        for example, group in zip(examples[start:start + 8], groups):
            reasons = []
            for response in group.responses:
                reason = ("wrong" if task.verify(response, **example) != 1.0 else
                          "format" if format_reward(response) != 1.0 else _unreadable(response, cfg))
                if reason is None:
                    rows.append({"prompt": question_text(example, task), "response": response.strip(),
                                 "source": f"coldstart-model:{cfg.model}"})
                    break
                reasons.append(reason.split(":")[0])
            else:
                dropped[Counter(reasons).most_common(1)[0][0]] += 1
    return rows, dropped


def _unreadable(response: str, cfg) -> str | None:
    return filters.unreadable(response, cfg.language, cfg.min_language_share, cfg.max_paragraph_chars)


def _from_jsonl(cfg, progress: bool):
    rows, dropped = [], Counter()
    for messages in load_sft_data(cfg.data):
        reason = _unreadable(messages[-1]["content"], cfg)
        if reason:
            dropped[reason.split(":")[0]] += 1
        else:
            rows.append({"messages": messages, "source": f"coldstart-jsonl:{cfg.data}"})
    return rows, dropped
