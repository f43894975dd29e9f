"""The judge lives outside the sandbox: expected outputs never enter it, and exit code 0 never means "pass".

Two kinds of test:

- **stdin/stdout** (:class:`IOTest`): the program reads the input; the parent compares its captured stdout with
  the expected output, token by token after normalising whitespace, numbers within ``float_tolerance``.
- **function calls** (:class:`CallTest`): the sandbox gets the solution plus a driver that calls the function on
  each test's arguments and prints one line per call: the result encoded as type-tagged JSON (``1``, ``1.0``,
  ``True`` and ``"1"`` all differ, as do lists and tuples), after a random marker. The parent decodes the lines
  and compares them with the expected values it alone holds. An object with a rigged ``__eq__`` cannot be
  encoded and fails; a program that exits before the driver has printed every line fails; printing fake lines
  does not help without knowing the answers.

A run that failed for the sandbox's own reasons (it could not start) is an error: the verdict is None, never 0.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import secrets
from dataclasses import dataclass, field

from r1lab.sandbox.run import Limits, run


@dataclass
class IOTest:
    input: str
    output: str


@dataclass
class CallTest:
    args: list
    expected: object


@dataclass
class Verdict:
    passed: int
    total: int
    details: list[str] = field(default_factory=list)
    error: str | None = None  # the sandbox failed: no verdict

    def score(self, partial: bool = False) -> float | None:
        if self.error is not None or self.total == 0:
            return None
        return self.passed / self.total if partial else float(self.passed == self.total)


def _r1lab_tag(value):
    """Type-tagged JSON form, so equality is strict about types. The same source runs inside the sandbox (see
    ``_DRIVER``): its name and local imports keep it apart from anything the solution defines.

    >>> _r1lab_tag([1, True, 1.0, "1", (2,)])
    ['list', [['int', 1], ['bool', True], ['float', 1.0], ['str', '1'], ['tuple', [['int', 2]]]]]
    """
    import json
    import math

    kind = type(value)
    if kind in (int, bool, str) or value is None:
        return [kind.__name__, value]
    if kind is float:
        return ["float", value if math.isfinite(value) else repr(value)]
    if kind in (list, tuple, set, frozenset):
        items = [_r1lab_tag(v) for v in value]
        if kind in (set, frozenset):
            items.sort(key=json.dumps)
        return [kind.__name__, items]
    if kind is dict:
        return ["dict", sorted(([_r1lab_tag(k), _r1lab_tag(v)] for k, v in value.items()), key=json.dumps)]
    raise TypeError(f"cannot compare a {kind.__name__}")


tag = _r1lab_tag

# Appended to the solution and run in the sandbox: call the function on each case, print each tagged result
# after the run's marker.
_DRIVER = """

%(tag_source)s

def __r1lab_driver():
    import json as _json, sys as _sys

    for args in _json.loads(%(cases)r):
        try:
            line = _json.dumps(["ok", _r1lab_tag(%(func)s(*args))])
        except BaseException as exc:
            line = _json.dumps(["raised", type(exc).__name__])
        _sys.stdout.write(%(marker)r + line + "\\n")
        _sys.stdout.flush()

__r1lab_driver()
"""


def judge_calls(solution: str, func: str, tests: list[CallTest], limits: Limits | None = None,
                float_tolerance: float = 1e-6) -> Verdict:
    if not func.isidentifier():
        raise ValueError(f"not a function name: {func!r}")
    marker = f"@@r1lab-{secrets.token_hex(8)}@@"
    cases = json.dumps([list(t.args) for t in tests])
    driver = _DRIVER % {"tag_source": inspect.getsource(_r1lab_tag), "cases": cases, "func": func, "marker": marker}
    result = run(solution + driver, limits=limits)
    if result.status == "sandbox_error":
        return Verdict(0, len(tests), error=result.stderr[-500:] or "sandbox error")
    lines = [line[len(marker):] for line in result.stdout.splitlines() if line.startswith(marker)]
    passed, details = 0, []
    for i, test in enumerate(tests):
        if i >= len(lines):
            details.append(f"test {i}: no result ({result.status})")
            continue
        try:
            kind, value = json.loads(lines[i])
        except (ValueError, TypeError):
            details.append(f"test {i}: unreadable result")
            continue
        if kind == "ok" and _same(value, tag(test.expected), float_tolerance):
            passed += 1
        else:
            details.append(f"test {i}: {'raised ' + str(value) if kind == 'raised' else 'wrong value'}")
    if len(lines) > len(tests):
        return Verdict(0, len(tests), details + ["more results than tests: rejected"])
    return Verdict(passed, len(tests), details)


def _same(got, want, tolerance: float) -> bool:
    if not isinstance(got, list) or len(got) != 2 or got[0] != want[0]:
        return False
    kind = want[0]
    if kind == "float" and isinstance(got[1], (int, float)) and isinstance(want[1], (int, float)):
        return math.isclose(got[1], want[1], rel_tol=tolerance, abs_tol=tolerance)
    if kind in ("list", "tuple", "set", "frozenset"):
        return len(got[1]) == len(want[1]) and all(_same(a, b, tolerance) for a, b in zip(got[1], want[1]))
    if kind == "dict":
        return len(got[1]) == len(want[1]) and all(_same(ka, kb, tolerance) and _same(va, vb, tolerance)
                                                   for (ka, va), (kb, vb) in zip(got[1], want[1]))
    return got[1] == want[1] and type(got[1]) is type(want[1])


def judge_io(program: str, tests: list[IOTest], limits: Limits | None = None,
             float_tolerance: float = 1e-6) -> Verdict:
    passed, details = 0, []
    for i, test in enumerate(tests):
        result = run(program, stdin=test.input, limits=limits)
        if result.status == "sandbox_error":
            return Verdict(0, len(tests), error=result.stderr[-500:] or "sandbox error")
        if result.status == "ok" and outputs_match(result.stdout, test.output, float_tolerance):
            passed += 1
        else:
            details.append(f"test {i}: {'wrong output' if result.status == 'ok' else result.status}")
    return Verdict(passed, len(tests), details)


def outputs_match(got: str, want: str, float_tolerance: float = 1e-6) -> bool:
    """Token-by-token after normalising whitespace; two numbers match within the tolerance.

    >>> outputs_match("1 2\\n3.0000001  \\n", "1 2 3"), outputs_match("1 2", "1 2 3"), outputs_match("yes", "Yes")
    (True, False, False)
    """
    a, b = got.split(), want.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            if not math.isclose(float(x), float(y), rel_tol=float_tolerance, abs_tol=float_tolerance):
                return False
        except ValueError:
            return False
    return True


def parse_assert(line: str) -> tuple[str, CallTest] | None:
    """``assert f(1, [2]) == 3`` -> ``("f", CallTest([1, [2]], 3))``, read in the parent with ``literal_eval``
    (never run); None for an assert of another shape.

    >>> parse_assert("assert add(2, 3) == 5"), parse_assert("assert is_ok(x)")
    (('add', CallTest(args=[2, 3], expected=5)), None)
    """
    try:
        node = ast.parse(line.strip()).body[0]
    except (SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
        return None
    compare = node.test
    if len(compare.ops) != 1 or not isinstance(compare.ops[0], ast.Eq):
        return None
    call, expected = compare.left, compare.comparators[0]
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.keywords:
        return None
    try:
        return call.func.id, CallTest([ast.literal_eval(a) for a in call.args], ast.literal_eval(expected))
    except (ValueError, SyntaxError, TypeError):
        return None
