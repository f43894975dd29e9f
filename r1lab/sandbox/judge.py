"""The judge lives outside the sandbox: expected values never enter it, and exit code 0 never means "pass".

Three kinds of test:

- **stdin/stdout** (:class:`IOTest`): the program reads the input; the parent compares its captured stdout with
  the expected output token by token after normalising whitespace. Tokens must be equal as text, with one
  exception: where the test gives a ``tolerance``, an expected decimal (``2.50``) accepts an ASCII decimal
  within it. Integers compare exactly; ``+7``, ``1_00``, ``３`` are not numbers.
- **function calls** (:class:`CallTest`): the sandbox gets the solution plus a driver that calls the function on
  each test's arguments (sent type-tagged, so tuples, sets, bytes and int dict keys arrive as they are) and
  prints each result, type-tagged (:mod:`r1lab.sandbox.values`), after a random marker.
- **dataset asserts** (:class:`AssertTest`): ``assert f(x) == y``, ``assert set(f(x)) == set(y)``,
  ``assert math.isclose(f(x), y, rel_tol=...)``, ``assert abs(f(x) - y) < 1e-6``, ``assert not f(x)``, ... Only
  the calls into the solution are evaluated with it, to plain values. A simple comparison (``f(x) == y``) is then
  made here; anything else is evaluated in a second sandbox without the solution, the calls replaced by their
  plain values, so no object the solution made (a rigged ``__sub__``, a patched ``abs``) takes part. The other
  side is read with ``literal_eval`` or evaluated without the solution (``set((4, 5))``, ``sys.getsizeof(t)``).

Comparisons follow Python's ``==`` over plain values (``20 == 20.0``, ``(1, 2) != [1, 2]``). A result that is
not a plain value (a rigged ``__eq__``) cannot be encoded and fails. Anything the program prints is decoded with
bounds (size, nesting depth), and any failure to decode or compare is a wrong answer, never an exception.
Printing fake result lines does not help without the expected values, which stay here.

A run that failed for the sandbox's own reasons gives an error (verdict None); the program cannot fake one.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import json
import math
import re
import secrets
import sys
from dataclasses import dataclass, field

from r1lab.sandbox import values
from r1lab.sandbox.run import Limits, run
from r1lab.sandbox.values import tag, untag


@dataclass
class IOTest:
    input: str
    output: str
    tolerance: float | None = None  # absolute/relative slack for expected decimals; None: exact tokens


@dataclass
class CallTest:
    args: list
    expected: object


@dataclass
class AssertTest:
    source: str  # one ``assert ...`` line from a dataset


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


# The program a sandbox runs for function and assert tests. The solution is executed as a module named
# ``solution`` (so an ``if __name__ == "__main__":`` block does not run, as in HumanEval's harness, and its names
# cannot collide with the driver's), after the test's setup; then each item is evaluated in its namespace and the
# tagged value written on a copy of stdout taken before the solution ran, each line after the run's marker.
_DRIVER = """
def __r1lab_driver():
    import json, os, sys, types
    out = os.dup(1)
    codec = {"__name__": "r1lab_values"}
    exec(%(codec)r, codec)
    module = types.ModuleType("solution")
    module.__file__ = __file__
    sys.modules["solution"] = module
    space = module.__dict__
    for name, value in codec["untag"](json.loads(%(bindings)r)).items():
        space[name] = value
    failure = None
    try:
        exec(compile(%(setup)r, "setup.py", "exec"), space)
        exec(compile(%(solution)r, "solution.py", "exec"), space)
    except BaseException as exc:
        failure = type(exc).__name__
    for item in json.loads(%(items)r):
        try:
            if failure is not None:
                raise RuntimeError(failure)
            if item[0] == "call":
                value = space[item[1]](*codec["untag"](item[2]))
            else:
                value = eval(compile(item[1], "test.py", "eval"), space)
            try:
                line = json.dumps(["ok", codec["tag"](value)])
            except TypeError:
                if item[0] != "truth":
                    raise
                line = json.dumps(["ok", codec["tag"](bool(value))])
        except BaseException as exc:
            line = json.dumps(["raised", failure or type(exc).__name__])
        os.write(out, ("\\n" + %(marker)r + line + "\\n").encode())

__r1lab_driver()
"""
_FAILED = object()  # an item that did not give a plain value


def _evaluate(solution: str, items: list, limits: Limits | None, setup: str = "",
              bindings: dict | None = None) -> tuple[list, str | None]:
    """Run ``setup`` and ``solution`` in a sandbox, then evaluate ``items`` there: ``["call", func, tagged_args]``,
    ``["expr", source]``, or ``["truth", source]`` (whose value may come back as its truthiness when it is not a
    plain value, as ``assert re.search(...)`` needs). ``bindings`` (names to values already tagged) are set first.
    Gives each item's decoded value or ``_FAILED`` with a reason, and the sandbox's own error, if any."""
    marker = f"@@r1lab-{secrets.token_hex(8)}@@"
    tagged = ["dict", [[tag(name), node] for name, node in (bindings or {}).items()]]
    program = _DRIVER % {"codec": inspect.getsource(values), "items": json.dumps(items), "marker": marker,
                         "setup": setup, "solution": solution, "bindings": json.dumps(tagged)}
    result = run(program, limits=limits)
    if result.status == "sandbox_error":
        return [], result.stderr[-500:] or "sandbox error"
    lines = [line[len(marker):] for line in result.stdout.splitlines() if line.startswith(marker)]
    if len(lines) > len(items):
        return [(_FAILED, "more results than tests: rejected")] * len(items), None
    decoded = []
    for i in range(len(items)):
        if i >= len(lines):
            decoded.append((_FAILED, f"no result ({result.status})"))
            continue
        try:
            kind, payload = json.loads(lines[i])
            reason = payload[:80] if type(payload) is str else "?"
            decoded.append((untag(payload), "") if kind == "ok" else (_FAILED, f"raised {reason}"))
        except Exception:  # noqa: BLE001 - untrusted output: deep, malformed, huge... all just wrong
            decoded.append((_FAILED, "unreadable result"))
    return decoded, None


def judge_calls(solution: str, func: str, tests: list[CallTest], limits: Limits | None = None,
                float_tolerance: float | None = None) -> Verdict:
    """Call ``func`` on each test's arguments; pass when the result equals the expected value (Python's ``==``
    on plain values, or within ``float_tolerance`` for floats when given)."""
    if not func.isidentifier():
        raise ValueError(f"not a function name: {func!r}")
    got, error = _evaluate(solution, [["call", func, tag(list(t.args))] for t in tests], limits)
    if error is not None:
        return Verdict(0, len(tests), error=error)
    passed, details = 0, []
    for i, (test, (value, why)) in enumerate(zip(tests, got)):
        if value is not _FAILED and _holds("eq", value, test.expected, {"tolerance": float_tolerance}):
            passed += 1
        else:
            details.append(f"test {i}: {why or 'wrong value'}")
    return Verdict(passed, len(tests), details)


# --- dataset asserts --------------------------------------------------------------------------------------------

_OPS = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.In: "in",
        ast.NotIn: "not_in", ast.Is: "is", ast.IsNot: "is_not"}
_MIRROR = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "is": "is", "is_not": "is_not"}
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"math", "re", "sys", "collections", "itertools"}


@dataclass
class _Plan:
    """How one assert is judged.

    ``probes``: the calls into the solution, evaluated in its sandbox to plain values. With ``check`` one of the
    comparisons, the single probe is compared here with ``expected`` (a literal, or an expression of builtins
    evaluated in a sandbox without the solution). With ``check == "expression"``, the whole assert, its probes
    replaced by those values (``__r1lab_v0``, ...), is evaluated in a sandbox without the solution: no object the
    solution made ever takes part in it.
    """
    check: str
    probes: list[str]
    expected: str | None = None
    options: dict = field(default_factory=dict)
    rewritten: str | None = None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _builtin(name: str) -> bool:
    return hasattr(builtins, name) or name in _STDLIB


def _setup_names(setup: str) -> set[str]:
    """Names the test's setup binds (``from math import sqrt``, ``import numpy as np``, helper definitions): like
    builtins, they are the test's, never the solution's."""
    try:
        tree = ast.parse(setup)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
    return found


def functions_under_test(sources: list[str], setup: str = "") -> set[str]:
    """The names a row's asserts call that belong to the solution: those that are not builtins, stdlib modules or
    bound by the setup. When every called name is a builtin (MBPP's ``assert sum(10, 15) == 6`` asks for a
    function named ``sum``), the one name every assert calls. A solution that redefines ``abs`` or ``set`` does
    not make the test's own ``abs`` or ``set`` its call.

    >>> functions_under_test(["assert abs(mad([1]) - 0.5) < 1e-6"]), functions_under_test(["assert sum(1, 2) == 3"])
    ({'mad'}, {'sum'})
    """
    test_names = _setup_names(setup)
    called_sets = []
    for source in sources:
        try:
            tree = ast.parse(source.strip())
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        called_sets.append({n.func.id for n in ast.walk(tree)
                            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)})
    own = {n for called in called_sets for n in called if not _builtin(n) and n not in test_names}
    if own or not called_sets:
        return own
    common = set.intersection(*called_sets)
    return common if len(common) == 1 else set()


def plan_assert(source: str, under_test: set[str] | None = None) -> _Plan | None:
    """How an ``assert`` line is judged (see :class:`_Plan`), or None if it is not one assert statement. A call is a
    probe when what it calls names one of ``under_test`` (default: :func:`functions_under_test` of this line).

    >>> plan_assert("assert add(2, 3) == 5")
    _Plan(check='eq', probes=['add(2, 3)'], expected='5', options={}, rewritten=None)
    >>> plan_assert("assert abs(f(x) - 2) < 1e-6").rewritten, plan_assert("assert x = 1")
    ('abs(__r1lab_v0 - 2) < 1e-06', None)
    """
    try:
        tree = ast.parse(source.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    if under_test is None:
        under_test = functions_under_test([source])

    def solution_call(node) -> bool:
        """A call of the solution's function: ``f(x)``, or a method of an object the test makes of the solution's
        class, ``Solution().f(x)`` (a capitalised name). A method, attribute or operator applied to what the
        solution returned (``f(x).startswith(y)``) is not: it runs in the checker, on the plain decoded value."""
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Name):
            return func.id in under_test
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return func.value.id in under_test  # a module-like name of the solution's: ``helpers.f(x)``
        made = func.value if isinstance(func, ast.Attribute) else None
        return (isinstance(made, ast.Call) and isinstance(made.func, ast.Name) and made.func.id in under_test
                and made.func.id[:1].isupper())

    def clean(node) -> bool:
        return not _names(node) & under_test

    # A call into the solution inside a comprehension, lambda or walrus reads names that exist only there; taken out
    # as a probe it would run at the solution's module level, where the solution decides what those names are.
    # Such an assert cannot be judged call by call: no plan (a dataset row leaves it out).
    if any(solution_call(n) and _names(n) & _scoped_names(test) for n in ast.walk(test)):
        return None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS:
        left, right, check = test.left, test.comparators[0], _OPS[type(test.ops[0])]
        if solution_call(right) and clean(left) and check in _MIRROR:
            left, right, check = right, left, _MIRROR[check]  # assert 5 == f(x)
        if solution_call(left) and clean(right):
            return _Plan(check, [ast.unparse(left)], ast.unparse(right))
    if (isinstance(test, ast.Call) and ast.unparse(test.func) in ("math.isclose", "isclose") and len(test.args) == 2
            and solution_call(test.args[0]) and clean(test.args[1])):
        options = {k.arg: _literal(k.value) for k in test.keywords}
        if all(k in ("rel_tol", "abs_tol") and type(v) in (int, float) for k, v in options.items()):
            return _Plan("isclose", [ast.unparse(test.args[0])], ast.unparse(test.args[1]), options)
    if solution_call(test):
        return _Plan("truthy", [ast.unparse(test)])
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and solution_call(test.operand):
        return _Plan("falsy", [ast.unparse(test.operand)])
    probes: list[str] = []

    class Swap(ast.NodeTransformer):  # the outermost calls into the solution become placeholders
        def visit_Call(self, node):
            if solution_call(node):
                probes.append(ast.unparse(node))
                return ast.Name(id=f"__r1lab_v{len(probes) - 1}", ctx=ast.Load())
            return self.generic_visit(node)

    rewritten = ast.unparse(Swap().visit(test))
    return _Plan("expression", probes, rewritten=rewritten)


def _scoped_names(tree: ast.AST) -> set[str]:
    """Names bound inside an expression: comprehension targets, lambda parameters, walrus targets.

    >>> sorted(_scoped_names(ast.parse("all(f(p) for p in xs) and (lambda v: g(v))(1) and (n := 3)", mode="eval")))
    ['n', 'p', 'v']
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            found |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Lambda):
            found |= {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
            found |= {a.arg for a in (node.args.vararg, node.args.kwarg) if a is not None}
        elif isinstance(node, ast.NamedExpr):
            found.add(node.target.id)
    return found


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _FAILED


def _imports(sources: list[str]) -> str:
    names = {n for s in sources for n in _names(ast.parse(s, mode="eval"))}
    return "".join(f"import {n}\n" for n in sorted(names & _STDLIB) if not hasattr(builtins, n))


_expected_values: dict[tuple[str, str], object] = {}  # (setup, source) -> value; they need no solution


def _expected(setup: str, sources: list[str], limits: Limits | None) -> str | None:
    """Fill ``_expected_values`` for ``sources`` (literals here, the rest in a sandbox without the solution)."""
    need = []
    for source in sorted(set(sources)):
        if (setup, source) not in _expected_values:
            value = _literal(ast.parse(source, mode="eval").body)
            if value is _FAILED:
                need.append(source)
            else:
                _expected_values[(setup, source)] = value
    if need:
        got, error = _evaluate("", [["expr", s] for s in need], limits, setup=setup + "\n" + _imports(need))
        if error is not None:
            return error
        for source, (value, _why) in zip(need, got):
            if value is not _FAILED:  # a failure (a timeout on a busy machine) is tried again next time
                _expected_values[(setup, source)] = value
    return None


def judge_asserts(solution: str, tests: list[AssertTest], setup: str = "", limits: Limits | None = None) -> Verdict:
    """Judge a dataset's assert lines (see :class:`_Plan`); ``setup`` (the test's imports) runs first."""
    under_test = functions_under_test([t.source for t in tests], setup)
    plans = [plan_assert(t.source, under_test) for t in tests]
    if any(p is None for p in plans):
        bad = next(t.source for t, p in zip(tests, plans) if p is None)
        raise ValueError(f"not an assert statement: {bad[:200]!r}")
    error = _expected(setup, [p.expected for p in plans if p.expected is not None], limits)
    if error is not None:
        return Verdict(0, len(tests), error=error)
    items = [["truth" if p.check in ("truthy", "falsy") else "expr", probe] for p in plans for probe in p.probes]
    got, error = _evaluate(solution, items, limits, setup=setup + "\n" + _imports([i[1] for i in items]))
    if error is not None:
        return Verdict(0, len(tests), error=error)
    outcomes: list[tuple[bool, str]] = []
    pending: list[int] = []  # tests checked as a whole expression, in one sandbox without the solution
    bindings: dict[str, list] = {}  # name -> the tagged values of an assert's probes
    cursor = 0
    for i, p in enumerate(plans):
        results = got[cursor:cursor + len(p.probes)]
        cursor += len(p.probes)
        why = next((w for v, w in results if v is _FAILED), "")
        if why:
            outcomes.append((False, why))
        elif p.check == "expression":
            try:  # tagged once (an iterator is consumed), sent on to the checker a level deeper than it came
                encoded = tag(tuple(v for v, _ in results), depth=2)
            except Exception:  # noqa: BLE001 - untrusted values: any failure (at the depth limit) is a wrong answer
                outcomes.append((False, "result too deep or large to check"))
                continue
            pending.append(i)
            bindings[f"__r1lab_args{i}"] = encoded
            outcomes.append((False, "pending"))
        else:
            want = _expected_values.get((setup, p.expected), _FAILED) if p.expected is not None else None
            ok = want is not _FAILED and _holds(p.check, results[0][0], want, p.options)
            outcomes.append((ok, "" if ok else "wrong value" if want is not _FAILED else "expected side failed"))
    if pending:
        checks = []
        for i in pending:  # each assert sees its own values under the placeholder names
            params = ", ".join(f"__r1lab_v{k}" for k in range(len(plans[i].probes)))
            checks.append(["truth", f"(lambda {params}: {plans[i].rewritten})(*__r1lab_args{i})"])
        verdicts, error = _evaluate("", checks, limits, setup=setup + "\n" + _imports([c[1] for c in checks]),
                                    bindings=bindings)
        if error is not None:
            return Verdict(0, len(tests), error=error)
        for i, (value, why) in zip(pending, verdicts):
            ok = value is not _FAILED and _holds("truthy", value, None, {})
            outcomes[i] = (ok, "" if ok else why or "assertion failed")
    details = [f"test {i}: {why}" for i, (ok, why) in enumerate(outcomes) if not ok]
    return Verdict(sum(ok for ok, _ in outcomes), len(tests), details)


def _holds(check: str, got, want, options: dict) -> bool:
    """The assert's comparison on plain values; anything that raises is a failure."""
    try:
        if check == "eq" and options.get("tolerance") is not None:
            return _close(got, want, options["tolerance"])
        outcome = {
            "eq": lambda: got == want, "ne": lambda: got != want, "lt": lambda: got < want,
            "le": lambda: got <= want, "gt": lambda: got > want, "ge": lambda: got >= want,
            "in": lambda: got in want, "not_in": lambda: got not in want,
            "is": lambda: _same_object(got, want), "is_not": lambda: not _same_object(got, want),
            "isclose": lambda: math.isclose(got, want, **options),
            "truthy": lambda: bool(got), "falsy": lambda: not got,
        }[check]()
        return outcome is True
    except Exception:  # noqa: BLE001 - e.g. TypeError comparing a str with an int, RecursionError
        return False


def _same_object(got, want) -> bool:
    """``is`` on decoded values: identity for None/True/False, else equal value and type."""
    if any(want is s for s in (None, True, False)):
        return got is want
    return type(got) is type(want) and got == want


def _close(got, want, tolerance: float) -> bool:
    if type(want) is float and type(got) in (int, float):
        return math.isclose(got, want, rel_tol=tolerance, abs_tol=tolerance)
    if type(got) is not type(want) and not (type(got) in (int, float) and type(want) in (int, float)):
        return False
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(_close(a, b, tolerance) for a, b in zip(got, want))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k], tolerance) for k in want)
    return got == want


# --- stdin/stdout -----------------------------------------------------------------------------------------------

def judge_io(program: str, tests: list[IOTest], limits: Limits | None = None, stop_at_failure: bool = False
             ) -> Verdict:
    """Run ``program`` once per test on its input and compare its output (:func:`outputs_match`). The runs of one
    completion share one time budget (``limits.budget`` + ``limits.budget_per_test`` per test, wall seconds; each
    run also within ``limits.wall``): a test the budget no longer covers fails unrun. With ``stop_at_failure`` (an
    all-or-nothing reward) the first failed test ends the judging, the rest counted failed: a verdict already decided
    costs no more runs."""
    limits = limits or Limits()
    budget = limits.budget + limits.budget_per_test * len(tests)
    passed, details, left = 0, [], budget
    for i, test in enumerate(tests):
        if left <= 0.05:
            details.append(f"tests {i}-{len(tests) - 1}: the completion's time budget ({budget:g} s) is spent")
            break
        result = run(program, stdin=test.input, limits=dataclasses.replace(limits, wall=min(limits.wall, left)))
        left -= result.seconds
        if result.status == "sandbox_error":
            return Verdict(0, len(tests), error=result.stderr[-500:] or "sandbox error")
        if result.status == "ok" and outputs_match(result.stdout, test.output, test.tolerance):
            passed += 1
            continue
        details.append(f"test {i}: {'wrong output' if result.status == 'ok' else result.status}")
        if stop_at_failure:
            details.append(f"tests {i + 1}-{len(tests) - 1}: not run (the verdict was decided)" * (i + 1 < len(tests)))
            break
    return Verdict(passed, len(tests), [d for d in details if d])


_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]+", re.ASCII)
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", re.ASCII)


def outputs_match(got: str, want: str, tolerance: float | None = None) -> bool:
    """Token by token after normalising whitespace. Tokens must be equal, except that with a ``tolerance`` an
    expected decimal accepts an ASCII number within it (relative or absolute).

    >>> outputs_match("1 2\\n3  \\n", "1 2 3"), outputs_match("1 2", "1 2 3"), outputs_match("yes", "Yes")
    (True, False, False)
    >>> outputs_match("0.3333333", "0.333333333", 1e-6), outputs_match("0.3333333", "0.333333333")
    (True, False)
    >>> outputs_match("3e0", "3", 1e-6), outputs_match("+7", "7", 1e-6), outputs_match("1000000000001", "1e12", 1)
    (False, False, False)
    """
    a, b = got.split(), want.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if tolerance is None or not _DECIMAL.fullmatch(y) or not _NUMBER.fullmatch(x):
            return False
        gx, gy = float(x), float(y)
        if not (math.isfinite(gx) and math.isclose(gx, gy, rel_tol=tolerance, abs_tol=tolerance)):
            return False
    return True
