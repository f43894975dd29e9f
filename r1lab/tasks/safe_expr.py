"""Evaluate an untrusted arithmetic expression (a model's countdown equation) without ``eval``.

Three walls, each enough on its own for the inputs countdown cares about:

1. the text: at most ``max_length`` characters, drawn only from digits, spaces, ``+ - * / ( )``;
2. the syntax tree from ``ast.parse(mode="eval")``: only ``+ - * /`` between expressions, a unary minus
   on a number, and non-negative int literals up to ``max_literal``; no names, calls, attributes,
   powers, floor division or floats; nesting at most ``max_depth``;
3. the arithmetic: exact :class:`fractions.Fraction` values, so ``1/3*3`` is exactly 1.

Left out: implicit multiplication (``2(3+4)``), ``×``/``÷`` and LaTeX operators (the caller may
normalise them first), decimals and powers.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

MAX_LENGTH = 200
MAX_DEPTH = 30
MAX_LITERAL = 10**6

_ALLOWED_TEXT = re.compile(r"[0-9\s+\-*/()]*")
_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class UnsafeExpression(ValueError):
    """The text is not a plain arithmetic expression we are willing to evaluate."""


def parse_expression(text: str, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH,
                     max_literal: int = MAX_LITERAL) -> ast.expr:
    """The checked syntax tree of ``text``; raises :class:`UnsafeExpression` with the reason.

    >>> ast.dump(parse_expression("-3 + 4"))
    'BinOp(left=UnaryOp(op=USub(), operand=Constant(value=3)), op=Add(), right=Constant(value=4))'
    >>> try:
    ...     parse_expression("9 ** 9 ** 9")
    ... except UnsafeExpression as exc:
    ...     print(exc)
    operator Pow is not allowed (only + - * /)
    """
    if len(text) > max_length:
        raise UnsafeExpression(f"expression is {len(text)} characters long (at most {max_length})")
    if not _ALLOWED_TEXT.fullmatch(text):
        bad = sorted(set(re.sub(r"[0-9\s+\-*/()]", "", text)))
        raise UnsafeExpression(f"characters {''.join(bad)!r} are not allowed (only digits, spaces and + - * / ( ))")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeExpression(f"not a valid expression ({type(exc).__name__})") from None
    _check(tree.body, max_depth, max_literal)
    return tree.body


def _check(root: ast.expr, max_depth: int, max_literal: int) -> None:
    """Walk the tree without recursion, rejecting any node that is not plain arithmetic."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise UnsafeExpression(f"expression nests deeper than {max_depth}")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY_OPS:
                raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed (only + - * /)")
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub) or not isinstance(node.operand, ast.Constant):
                raise UnsafeExpression("a unary operator is allowed only as a minus sign on a number")
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant):
            if type(node.value) is not int:
                raise UnsafeExpression(f"literal {node.value!r} is not an integer")
            if node.value > max_literal:
                raise UnsafeExpression(f"literal {node.value} is larger than {max_literal}")
        else:
            raise UnsafeExpression(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _value(node: ast.expr) -> Fraction:
    """Exact value of a checked tree (depth is bounded, so recursion is safe). ZeroDivisionError on /0."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -_value(node.operand)
    return _BINARY_OPS[type(node.op)](_value(node.left), _value(node.right))


def literals(node: ast.expr) -> list[int]:
    """The numbers written in a checked tree, in reading order (a minus sign is not part of them).

    >>> literals(parse_expression("(25 - 3) * -7"))
    [25, 3, 7]
    """
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.UnaryOp):
        return literals(node.operand)
    return literals(node.left) + literals(node.right)


def evaluate(text: str, **limits) -> tuple[Fraction, list[int]]:
    """``(exact value, numbers used)`` of an arithmetic expression; raises :class:`UnsafeExpression`
    for anything else and ``ZeroDivisionError`` for a division by zero.

    >>> evaluate("(3 + 7) * 25 / 5")
    (Fraction(50, 1), [3, 7, 25, 5])
    >>> try:
    ...     evaluate("__import__('os')")
    ... except UnsafeExpression as exc:
    ...     print(exc)
    characters "'_imoprst" are not allowed (only digits, spaces and + - * / ( ))
    """
    tree = parse_expression(text, **limits)
    return _value(tree), literals(tree)
