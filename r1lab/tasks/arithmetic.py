"""Arithmetic drills ("What is 3 + 5 * 2?"): the smallest task, to watch a policy learn in minutes.

Problems are drawn from a seeded generator, deduplicated by prompt and cut into disjoint splits (see
:mod:`r1lab.tasks.procedural`). Answers are computed exactly from the operand list with integer
arithmetic, ``*`` before ``+`` and ``-``, never with ``eval``. To keep products readable, two ``*`` never
follow each other unless ``*`` is the only operator allowed. The task writes worked cold-start traces
(:func:`arithmetic_trace`: products first, then sums left to right, then a check).

Left out: division, parentheses and negative operands.
"""

from __future__ import annotations

import random
import re

from r1lab.tasks.answers import score_answer
from r1lab.tasks.base import Task, register_task
from r1lab.tasks.procedural import check_counts, check_int, split_problems, unique_problems

OPERATORS = "+-*"
MAX_DIGITS, MAX_OPERANDS = 30, 20  # beyond these a question is longer than a small model's reading of it
_QUESTION = re.compile(r"What is (.+)\?$")
_TOKEN = re.compile(r"-?\d+|[+\-*]")


def evaluate_terms(operands: list[int], operators: list[str]) -> int:
    """``operands[0] op operands[1] op …`` with ``*`` binding tighter than ``+`` and ``-``.

    >>> evaluate_terms([2, 3, 4], ["+", "*"]), evaluate_terms([10, 2, 3], ["-", "*"])
    (14, 4)
    >>> evaluate_terms([7, 5, 2], ["-", "-"]), evaluate_terms([3, 4, 2, 1], ["*", "-", "*"])
    (0, 10)
    """
    if len(operators) != len(operands) - 1:
        raise ValueError(f"{len(operands)} operands need {len(operands) - 1} operators, got {len(operators)}")
    total, sign, product = 0, 1, operands[0]
    for op, operand in zip(operators, operands[1:]):
        if op == "*":
            product *= operand
        elif op in "+-":
            total += sign * product
            sign, product = (1 if op == "+" else -1), operand
        else:
            raise ValueError(f"unknown operator {op!r}; use some of {OPERATORS!r}")
    return total + sign * product


def format_question(operands: list[int], operators: list[str]) -> str:
    """
    >>> format_question([3, 5], ["+"]), format_question([12, 4, 7], ["-", "*"])
    ('What is 3 + 5?', 'What is 12 - 4 * 7?')
    """
    return f"What is {_expression(operands, operators)}?"


def _expression(operands: list[int], operators: list[str]) -> str:
    return str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(operators, operands[1:]))


def draw_problem(rng: random.Random, digits: int, operands: int, operators: str) -> dict:
    """One problem: ``operands`` numbers of ``digits`` digits joined by operators from ``operators``.

    >>> p = draw_problem(random.Random(0), digits=2, operands=3, operators="+*")
    >>> p["prompt"], p["answer"]
    ('What is 59 * 63 + 15?', '3732')
    """
    low = 0 if digits == 1 else 10 ** (digits - 1)
    numbers = [rng.randint(low, 10**digits - 1) for _ in range(operands)]
    ops: list[str] = []
    for _ in range(operands - 1):
        choices = operators.replace("*", "") if ops[-1:] == ["*"] and operators != "*" else operators
        ops.append(rng.choice(choices))
    return {"prompt": format_question(numbers, ops), "answer": str(evaluate_terms(numbers, ops))}


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
        rest = _expression(numbers, ops)
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


@register_task("arithmetic")
class ArithmeticTask(Task):
    """Seeded integer arithmetic problems; the answer is checked as an integer (``8``, ``8.0``, ``+8``)."""

    name = "arithmetic"
    instruction = ""

    def __init__(self, digits: int = 1, operands: int = 2, operators: str = "+", n_train: int = 2000,
                 n_test: int = 200, seed: int = 0):
        check_int("digits", digits, 1, MAX_DIGITS)
        check_int("operands", operands, 2, MAX_OPERANDS)
        if not isinstance(operators, str) or not operators or set(operators) - set(OPERATORS):
            raise ValueError(f"operators={operators!r}: use one or more of {OPERATORS!r}, e.g. operators='+-'")
        check_counts(n_train, n_test)
        problems = unique_problems(lambda rng: draw_problem(rng, digits, operands, operators),
                                   key=lambda p: p["prompt"], count=n_train + n_test, seed=seed)
        self._splits = dict(zip(("train", "test"), split_problems(problems, n_train, n_test)))

    def verify(self, completion: str, answer: str = "", **_) -> float | None:
        """
        >>> task = ArithmeticTask(n_train=5, n_test=5)
        >>> task.verify("<think>3+5</think><answer>8.0</answer>", answer="8"), task.verify("9", answer="8")
        (1.0, 0.0)
        """
        return score_answer(completion, answer)

    def trace(self, example: dict) -> tuple[str, str]:
        """The worked solution of ``example`` (:func:`arithmetic_trace`)."""
        return arithmetic_trace(example["prompt"])
