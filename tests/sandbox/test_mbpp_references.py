"""MBPP's sanitized problems (../shared/data/mbpp/sanitized.jsonl, 427 problems) through ``code_reward`` with their
own asserts: every reference solution scores 1.0, and the same reference with its return value altered scores 0.

The whole file is a slow test (about a minute and a half on 2 cores); a sample of its hardest shapes runs by
default: ``set(f(x)) == set(y)``, ``math.isclose``, ``sys.getsizeof`` on the expected side, a ``Counter`` against a
dict, truthy ``re.Match`` results, and the problem that takes seconds.
"""

import ast
import json

import pytest

from r1lab.evaluate.benchmarks import find_shared
from r1lab.rewards.code import code_reward
from r1lab.sandbox.pool import run_many
from r1lab.sandbox.run import Limits, isolation_level
from r1lab.tasks.code import CodeDatasetTask

MBPP = find_shared("mbpp/sanitized.jsonl")
pytestmark = [pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and unshare for namespaces"),
              pytest.mark.skipif(MBPP is None, reason="../shared/data/mbpp is not beside this checkout")]
SAMPLE = {2, 3, 82, 88, 98, 123, 124, 596, 737, 787}
ROOMY = Limits(wall=30, cpu=30)  # task 123 needs 3 s of CPU alone; the default 5 s is tight on a busy machine

# The reference runs in a namespace of its own (so its recursive calls reach the real function), and the name the
# asserts call returns an altered value: a different value of the same kind, falsy for truthy and back.
ALTERED = '''
def __r1lab_alter(r):
    if r is None:
        return "r1lab-altered"
    kind = type(r)
    if kind is bool:
        return not r
    if kind in (int, complex):
        return r + 1
    if kind is float:
        return r * 1.5 + 1.0
    if kind is str:
        return r + "x"
    if kind is list:
        return r + [None]
    if kind is tuple:
        return r + (None,)
    if kind in (set, frozenset):
        return kind(r) | {"r1lab-altered"}
    if kind is dict:
        return {**r, "r1lab-altered": 1}
    return None
__r1lab_reference = {"__name__": "reference"}
exec(%(source)r, __r1lab_reference)
def %(name)s(*args, **kwargs):
    return __r1lab_alter(__r1lab_reference[%(name)r](*args, **kwargs))
'''


def function_under_test(row: dict) -> str:
    test = ast.parse(row["test_list"][0].strip()).body[0].test
    calls = [n.func.id for n in ast.walk(test) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return next(name for name in calls if name not in ("set", "sorted", "list", "tuple"))


def judge(rows: list[dict]) -> tuple[list, list]:
    examples = [CodeDatasetTask._example(row, str(row["task_id"])) for row in rows]
    fenced = lambda code: f"```python\n{code}\n```"  # noqa: E731
    right = run_many([lambda r=r, e=e: code_reward(fenced(r["code"]), **e, limits=ROOMY)
                      for r, e in zip(rows, examples)], workers=2)
    wrong = run_many([lambda r=r, e=e: code_reward(fenced(ALTERED % {"source": r["code"], "name": function_under_test(r)}),
                                                   **e, limits=ROOMY) for r, e in zip(rows, examples)], workers=2)
    return right, wrong


def rows() -> list[dict]:
    return [json.loads(line) for line in MBPP.read_text().splitlines() if line.strip()]


def check(chosen: list[dict]) -> None:
    right, wrong = judge(chosen)
    failing = [(r["task_id"], a, b) for r, a, b in zip(chosen, right, wrong) if a != 1.0 or b != 0.0]
    assert failing == [], f"(task_id, reference score, altered score): {failing}"


def test_a_sample_of_mbpp_references_pass_and_altered_ones_fail():
    chosen = [r for r in rows() if r["task_id"] in SAMPLE]
    assert len(chosen) == len(SAMPLE)
    check(chosen)


@pytest.mark.slow
def test_every_mbpp_reference_passes_and_every_altered_one_fails():
    everything = rows()
    assert len(everything) == 427
    check(everything)
