"""``r1lab coldstart``: a cold-start SFT set written by a procedural task itself.

R1 fixes R1-Zero's unreadable, format-less start with a few thousand readable chains of thought before RL.
For a procedural task the chain can be written exactly: :func:`arithmetic_trace` works an expression out
step by step (products first, then sums left to right), checks the result, and gives the answer in the format
the RL stage rewards: ``<think>\\nSTEPS\\n</think>\\n<answer>ANSWER</answer>``. Every trace is verified by the
task's own verifier before it is written.

Left out (for now): traces for countdown, and cold-start data sampled from a model prompted with long
chain-of-thought examples; your own JSONL goes straight to ``r1lab sft --data``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from r1lab.tasks import get_task

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


TRACES = {"arithmetic": arithmetic_trace}


def write_coldstart(cfg, progress: bool = True) -> dict:
    """Trace ``cfg.examples`` training examples of the task, verify each, write JSONL (atomically)."""
    if cfg.task not in TRACES:
        raise ValueError(f"r1lab coldstart can write traces for {', '.join(TRACES)}; for task {cfg.task!r} bring "
                         "your own JSONL to r1lab sft --data")
    task = get_task(cfg.task, **cfg.task_args)
    examples = task.examples("train")[:cfg.examples]
    rows, rejected = [], 0
    for example in examples:
        reasoning, answer = TRACES[cfg.task](example["prompt"])
        response = f"<think>\n{reasoning}\n</think>\n<answer>{answer}</answer>"
        if task.verify(response, **example) != 1.0:
            rejected += 1
            continue
        prompt = f"{example['prompt']}\n{task.instruction}" if task.instruction else example["prompt"]
        rows.append({"prompt": prompt, "response": response, "source": f"coldstart:{cfg.task}"})
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out)
    return {"written": len(rows), "rejected": rejected, "path": str(out)}
