"""The countdown evaluator refuses anything but arithmetic, and refuses it fast."""

import time
from fractions import Fraction

import pytest

from r1lab.tasks.safe_expr import UnsafeExpression, evaluate, literals, parse_expression

ATTACKS = [
    "__import__('os')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: 1",
    "2**999999",
    "9**9**9",
    "10**10**10",
    "1 // 0",
    "open('/etc/passwd').read()",
    "[1, 2]",
    "x + 1",
    "True + 1",
    "1.5 * 2",
    "1e9",
    "0x10",
    "1_000",
    "3 % 2",
    "- -3",
    "+3",
    "-(3 + 4)",
    "1" * 8,  # larger than the literal limit
    "(" * 100 + "1" + ")" * 100,  # too long (and near the parser's own nesting limit)
    "+".join(["1"] * 101),
    "1" + "+(1" * 40 + ")" * 40,  # nests deeper than 30
    "",
    "1 +",
    "\x00",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_attacks_are_rejected_quickly(text):
    start = time.perf_counter()
    with pytest.raises(UnsafeExpression):
        evaluate(text)
    assert time.perf_counter() - start < 2  # microseconds here; evaluated, 9**9**9 would run for minutes


def test_values_are_exact_fractions():
    assert evaluate("1 / 3 * 3") == (Fraction(1), [1, 3, 3])
    assert evaluate("(25 - 5) / (3 - 1)") == (Fraction(10), [25, 5, 3, 1])
    assert evaluate(" -2 * 3 ") == (Fraction(-6), [2, 3])


def test_division_by_zero_raises_zero_division():
    with pytest.raises(ZeroDivisionError):
        evaluate("1 / (2 - 2)")


def test_limits_are_adjustable_and_reported():
    with pytest.raises(UnsafeExpression, match="larger than 10"):
        evaluate("11 + 1", max_literal=10)
    with pytest.raises(UnsafeExpression, match="deeper than 2"):
        evaluate("1 + 2 + 3", max_depth=2)
    assert literals(parse_expression("1 + 2 * 3 - 4")) == [1, 2, 3, 4]
