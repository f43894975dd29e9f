"""Countdown (the TinyZero task): combine the given numbers with + - * / to reach a target.

Each problem comes from a random expression tree over the drawn numbers, so every problem has at least
one solution (the ``answer`` field). Intermediate divisions are exact and the target is an integer in
``[1, max_target]``. Problems are deduplicated by (sorted numbers, target).

The verifier reads the final answer span (see :func:`r1lab.chat.final_answer_span`), takes a ``\\boxed{}``
inside it if there is one, drops a trailing ``= target``, and evaluates the equation with
:mod:`r1lab.tasks.safe_expr` (never ``eval``). It scores 1.0 only when the numbers used are exactly the
given multiset and the exact value equals the target; anything else, including a division by zero or an
expression it refuses to evaluate, scores 0.0.

The worked cold-start trace of a problem (:func:`countdown_trace`) follows the solution it was drawn with.

Left out: TinyZero's 0.1 partial credit for a well-formed wrong equation (format has its own reward).
"""

from __future__ import annotations

import ast
import operator
import random
import re
from fractions import Fraction

from r1lab.chat import final_answer_span
from r1lab.tasks.answers import extract_boxed
from r1lab.tasks.base import Task, register_task
from r1lab.tasks.procedural import check_counts, check_int, split_problems, unique_problems
from r1lab.tasks.safe_expr import UnsafeExpression, evaluate

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
#: LaTeX and unicode spellings of the operators, and math delimiters to drop
_SPELLINGS = {"\\times": "*", "\\cdot": "*", "×": "*", "·": "*", "\\div": "/", "÷": "/", "−": "-",
              "$": "", "\\(": "", "\\)": "", "\\[": "", "\\]": ""}
_TRAILING_RESULT = re.compile(r"=\s*-?\d+(?:\.\d+)?\s*$")

_MAX_TRIES = 10_000  # draws per problem before the settings are declared impossible

Tree = int | tuple  # an int leaf or (op, left, right)


def format_expression(tree: Tree, parent_op: str | None = None, is_right: bool = False) -> str:
    """The expression with only the parentheses it needs.

    >>> format_expression(("*", ("+", 3, 7), 25)), format_expression(("-", 9, ("-", 4, 1)))
    ('(3 + 7) * 25', '9 - (4 - 1)')
    >>> format_expression(("+", ("*", 2, 3), ("/", 8, 4)))
    '2 * 3 + 8 / 4'
    """
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    text = f"{format_expression(left, op)} {op} {format_expression(right, op, is_right=True)}"
    if parent_op is None:
        return text
    weaker = _PRECEDENCE[op] < _PRECEDENCE[parent_op]
    tie_on_right = is_right and _PRECEDENCE[op] == _PRECEDENCE[parent_op] and parent_op in "-/"
    return f"({text})" if weaker or tie_on_right else text


def combine(rng: random.Random, numbers: list[int]) -> tuple[Fraction, Tree] | None:
    """A random expression tree using every number once and its value, or None if a step failed.

    Subtraction keeps the larger operand first; division is used only when it is exact.
    """
    items: list[tuple[Fraction, Tree]] = [(Fraction(n), n) for n in numbers]
    while len(items) > 1:
        rng.shuffle(items)
        (a, ta), (b, tb) = items.pop(), items.pop()
        op = rng.choice("+-*/")
        if op == "-" and a < b:
            (a, ta), (b, tb) = (b, tb), (a, ta)
        if op == "/" and (b == 0 or (a / b).denominator != 1):
            return None
        items.append((_APPLY[op](a, b), (op, ta, tb)))
    return items[0]


def draw_problem(rng: random.Random, numbers: int, max_number: int, max_target: int) -> dict | None:
    """One solvable problem, or None when the draw missed the target range (the caller draws again).

    >>> p = draw_problem(random.Random(9), numbers=3, max_number=25, max_target=100)
    >>> p["numbers"], p["target"], p["answer"]
    ([15, 20, 12], 60, '12 * (20 - 15)')
    >>> draw_problem(random.Random(0), numbers=3, max_number=25, max_target=100) is None
    True
    """
    drawn = [rng.randint(1, max_number) for _ in range(numbers)]
    combined = combine(rng, drawn)
    if combined is None:
        return None
    value, tree = combined
    if value.denominator != 1 or not 1 <= value <= max_target:
        return None
    target = int(value)
    prompt = (f"Using the numbers {drawn}, create an equation that equals {target}. You can use basic "
              "arithmetic operations (+, -, *, /) and each number must be used exactly once.")
    return {"prompt": prompt, "answer": format_expression(tree), "numbers": drawn, "target": target}


def equation_text(completion: str) -> str:
    """The equation a response proposes: its final span (or the box in it), ``= target`` and ``$`` removed.

    >>> equation_text("<think>…</think><answer> $(3 + 7) \\\\times 5 = 50$. </answer>")
    '(3 + 7) * 5'
    >>> equation_text("I think \\\\boxed{9 - 4}")
    '9 - 4'
    """
    span = final_answer_span(completion)
    boxed = extract_boxed(span)
    text = boxed if boxed is not None else span
    for spelling, replacement in _SPELLINGS.items():
        text = text.replace(spelling, replacement)
    return _TRAILING_RESULT.sub("", text.strip().rstrip(".")).strip()


def score_equation(equation: str, numbers: list[int], target: int) -> float:
    """1.0 if ``equation`` uses exactly ``numbers`` and equals ``target``, else 0.0.

    >>> score_equation("(3 + 7) * 5", [3, 5, 7], 50), score_equation("(3 + 7) * 5 * 1", [3, 5, 7], 50)
    (1.0, 0.0)
    """
    try:
        value, used = evaluate(equation)
    except (UnsafeExpression, ZeroDivisionError):
        return 0.0
    return 1.0 if sorted(used) == sorted(numbers) and value == target else 0.0


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
    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    lines = [f"We have {', '.join(map(str, numbers))} and need {target}, using each number once."]

    def walk(node) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in symbols:
            a, b = walk(node.left), walk(node.right)
            op = symbols[type(node.op)]
            value = _APPLY[op](a, b)
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


@register_task("countdown")
class CountdownTask(Task):
    """Reach ``target`` from ``numbers`` (each used exactly once) with + - * /."""

    name = "countdown"
    instruction = ("Show your work in <think> </think> tags, and return the final equation in "
                   "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.")

    def __init__(self, numbers: int = 3, max_number: int = 25, max_target: int = 100, n_train: int = 2000,
                 n_test: int = 200, seed: int = 0):
        check_int("numbers", numbers, 2, 12)
        check_int("max_number", max_number, 1, 10**6)
        check_int("max_target", max_target, 1, 10**9)
        check_counts(n_train, n_test)

        def draw(rng: random.Random) -> dict:
            for _ in range(_MAX_TRIES):
                if (problem := draw_problem(rng, numbers, max_number, max_target)) is not None:
                    return problem
            raise ValueError(f"no problem with a target in [1, {max_target}] in {_MAX_TRIES} tries; "
                             "raise max_target or lower max_number")

        problems = unique_problems(draw, key=lambda p: (tuple(sorted(p["numbers"])), p["target"]),
                                   count=n_train + n_test, seed=seed)
        self._splits = dict(zip(("train", "test"), split_problems(problems, n_train, n_test)))

    def examples(self, split: str) -> list[dict]:
        return [{**example, "numbers": list(example["numbers"])} for example in super().examples(split)]

    def verify(self, completion: str, numbers: list[int] | None = None, target: int | None = None,
               **_) -> float | None:
        """
        >>> task = CountdownTask(n_train=1, n_test=1)
        >>> task.verify("<answer>(3 + 7) * 5</answer>", numbers=[3, 7, 5], target=50)
        1.0
        >>> task.verify("<answer>(3 + 7) * 5 + 0</answer>", numbers=[3, 7, 5], target=50), task.verify("50")
        (0.0, None)
        """
        if numbers is None or target is None:
            return None
        return score_equation(equation_text(completion), numbers, int(target))

    def trace(self, example: dict) -> tuple[str, str]:
        """The worked solution of ``example`` from the solution it was drawn with (:func:`countdown_trace`)."""
        return countdown_trace(example["numbers"], example["target"], example["answer"])
