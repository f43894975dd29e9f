"""``r1lab coldstart``: a cold-start SFT set (readable reasoning in the think block, then the answer).

R1 fixes R1-Zero's unreadable, format-less start with a few thousand readable chains of thought before RL,
collected three ways, which are the three ``source`` settings here:

- ``traces``: a procedural task writes its own. :func:`arithmetic_trace` works an expression out step by step
  (products first, then sums left to right), checks the result, and answers in the format the RL stage
  rewards: ``<think>\\nSTEPS\\n</think>\\n<answer>ANSWER</answer>``.
- ``model``: a model is prompted with ``shots`` such worked examples and asked the task's questions; of its
  ``n`` samples per question the first that the task verifies, that has the think/answer format and that passes
  the readability filters (:mod:`r1lab.sft.filters`) is kept, with the plain question (no examples) as prompt.
- ``jsonl``: your file, kept where the reply has a think block and passes the readability filters.

Every kept sample is verified (sources ``traces`` and ``model``) and the file is written atomically.
Procedural traces exist for ``arithmetic`` and ``countdown`` (from the solution the problem was drawn with).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from r1lab.config import task_args_for
from r1lab.files import write_atomic
from r1lab.tasks import get_task
from r1lab.tasks.base import question_text

_QUESTION = re.compile(r"What is (.+)\?$")
_TOKEN = re.compile(r"-?\d+|[+\-*]")


def arithmetic_trace(prompt: str) -> tuple[str, str]:
    """``(reasoning, answer)`` for an arithmetic task's question.

    >>> reasoning, answer = arithmetic_trace("What is 7 * 8 + 2?")
    >>> print(reasoning)
    We need 7 * 8 + 2. Multiplication comes before addition and subtraction.
    7 * 8 = 56, so the expression becomes 56 + 2.
    56 + 2 = 58.
    Let me check: 58 - 2 = 56, and 56 / 8 = 7. Correct.
    >>> answer
    '58'
    """
    match = _QUESTION.search(prompt.strip())
    if match is None:
        raise ValueError(f"not an arithmetic question: {prompt!r}")
    expression = match.group(1)
    parts = _TOKEN.findall(expression)
    numbers, ops = [int(p) for p in parts[0::2]], parts[1::2]
    lines = [f"We need {expression}." + (" Multiplication comes before addition and subtraction."
                                          if "*" in ops and len(ops) > 1 else "")]
    checks = []
    while "*" in ops:  # products first
        i = ops.index("*")
        a, b = numbers[i], numbers[i + 1]
        numbers[i:i + 2], ops[i:i + 1] = [a * b], []
        rest = _show(numbers, ops)
        lines.append(f"{a} * {b} = {a * b}" + (f", so the expression becomes {rest}." if ops else "."))
        checks.append((a * b, "/", b, a) if b else None)
    while ops:  # then left to right
        a, op, b = numbers[0], ops[0], numbers[1]
        value = a + b if op == "+" else a - b
        numbers[0:2], ops[0:1] = [value], []
        lines.append(f"{a} {op} {b} = {value}.")
        checks.append((value, "-" if op == "+" else "+", b, a))
    # undo the last two steps, last first: each must give back the number it started from
    undo = [c for c in checks if c][::-1][:2]
    if undo:
        lines.append("Let me check: " + ", and ".join(f"{v} {op} {b} = {a}" for v, op, b, a in undo) + ". Correct.")
    return "\n".join(lines), str(numbers[0])


def _show(numbers: list[int], ops: list[str]) -> str:
    out = [str(numbers[0])]
    for op, n in zip(ops, numbers[1:]):
        out += [op, str(n)]
    return " ".join(out)


def countdown_trace(numbers: list[int], target: int, solution: str) -> tuple[str, str]:
    """``(reasoning, answer)`` for a countdown problem, from the solution the task drew it with: the steps are
    the expression's operations, innermost first (the expression is parsed, never evaluated as code).

    >>> reasoning, answer = countdown_trace([15, 20, 12], 60, "12 * (20 - 15)")
    >>> print(reasoning)
    We have 15, 20, 12 and need 60, using each number once.
    20 - 15 = 5.
    12 * 5 = 60.
    That is the target, and 15, 20 and 12 are each used once.
    >>> answer
    '12 * (20 - 15)'
    """
    import ast
    from fractions import Fraction

    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    lines = [f"We have {', '.join(map(str, numbers))} and need {target}, using each number once."]

    def walk(node) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in symbols:
            a, b = walk(node.left), walk(node.right)
            op = symbols[type(node.op)]
            value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
            lines.append(f"{_num(a)} {op} {_num(b)} = {_num(value)}.")
            return value
        raise ValueError(f"not a countdown expression: {solution!r}")

    result = walk(ast.parse(solution, mode="eval").body)
    if result != target:
        raise ValueError(f"{solution!r} gives {_num(result)}, not {target}")
    used = [str(n) for n in numbers]
    lines.append(f"That is the target, and {', '.join(used[:-1])} and {used[-1]} are each used once.")
    return "\n".join(lines), solution


def _num(value) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


TRACES = {"arithmetic": lambda example: arithmetic_trace(example["prompt"]),
          "countdown": lambda example: countdown_trace(example["numbers"], example["target"], example["answer"])}


def write_coldstart(cfg, progress: bool = True) -> dict:
    """Build the set from ``cfg.source``; returns counts and the path."""
    sources = {"traces": _from_traces, "model": _from_model, "jsonl": _from_jsonl}
    if cfg.source not in sources:
        raise ValueError(f"source {cfg.source!r} is unknown; choose one of {', '.join(sources)}")
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


def _trace_task(cfg):
    if cfg.task not in TRACES:
        raise ValueError(f"r1lab writes worked traces (--source traces, and the examples --source model is prompted "
                         f"with) for {', '.join(TRACES)} only; for task {cfg.task!r} give your own traces "
                         "(--source jsonl --data FILE.jsonl) or ask a teacher model (r1lab distill)")
    return get_task(cfg.task, **task_args_for(cfg.task, cfg.task_args))


def _traced(example: dict, task_name: str) -> str:
    reasoning, answer = TRACES[task_name](example)
    return f"<think>\n{reasoning}\n</think>\n<answer>{answer}</answer>"


def _from_traces(cfg, progress: bool):
    task = _trace_task(cfg)
    rows, dropped = [], Counter()
    for example in task.examples("train")[:cfg.examples]:
        response = _traced(example, cfg.task)
        if task.verify(response, **example) != 1.0:
            dropped["wrong"] += 1
            continue
        rows.append({"prompt": question_text(example, task), "response": response, "source": f"coldstart:{cfg.task}"})
    return rows, dropped


def _readable(response: str, cfg) -> str | None:
    """Why ``response`` is not a readable R1-format reply, or None."""
    from r1lab.sft import filters

    return (filters.no_reasoning(response) or filters.language_mixed(response, cfg.language, cfg.min_language_share)
            or filters.long_paragraph(response, cfg.max_paragraph_chars) or filters.code_block(response))


def _from_model(cfg, progress: bool):
    """Few-shot sampling: the shots are traces of other training examples; kept replies are verified and
    readable, and are stored against the plain question."""
    from r1lab.engine import SamplingParams, TorchEngine
    from r1lab.models import load_model
    from r1lab.rewards.format import format as format_reward
    from r1lab.rl.grpo import generate_groups

    task = _trace_task(cfg)
    train = task.examples("train")
    shots, examples = train[:cfg.shots], train[cfg.shots:cfg.shots + cfg.examples]
    header = "Here are worked examples. Think step by step inside <think> </think>, then give the answer " \
             "inside <answer> </answer>.\n\n" + "\n\n".join(
                 f"Question: {s['prompt']}\nReply: {_traced(s, cfg.task)}" for s in shots)
    model, tokenizer = load_model(cfg.model)
    engine = TorchEngine(model, tokenizer)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            stop=["</answer>"], include_stop_str_in_output=True, seed=cfg.seed)
    prompted = [dict(e, prompt=f"{header}\n\nQuestion: {e['prompt']}\nReply:") for e in examples]
    rows, dropped = [], Counter()
    for start in range(0, len(prompted), 8):
        groups = generate_groups(engine, prompted[start:start + 8], "native", None, params, task)
        for example, group in zip(examples[start:start + 8], groups):
            reasons = []
            for response in group.responses:
                reason = ("wrong" if task.verify(response, **example) != 1.0 else
                          "format" if format_reward(response) != 1.0 else _readable(response, cfg))
                if reason is None:
                    rows.append({"prompt": question_text(example, task), "response": response.strip(),
                                 "source": f"coldstart-model:{cfg.model}"})
                    break
                reasons.append(reason.split(":")[0])
            else:
                dropped[Counter(reasons).most_common(1)[0][0]] += 1
    return rows, dropped


def _from_jsonl(cfg, progress: bool):
    from r1lab.sft.data import load_sft_data

    if not cfg.data:
        raise ValueError("source=jsonl needs --data FILE.jsonl")
    rows, dropped = [], Counter()
    for messages in load_sft_data(cfg.data):
        reply = messages[-1]["content"]
        reason = _readable(reply, cfg)
        if reason:
            dropped[reason.split(":")[0]] += 1
        else:
            rows.append({"messages": messages, "source": f"coldstart-jsonl:{cfg.data}"})
    return rows, dropped
