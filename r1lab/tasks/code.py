"""Code tasks, judged by the ``code`` reward (:mod:`r1lab.rewards.code`) in the sandbox.

- ``code_functions`` (procedural): generated function specs with hidden tests computed in the parent by a
  reference implementation.
- ``code_dataset``: MBPP/HumanEval-style JSONL (``assert`` lines, judged as :func:`r1lab.sandbox.judge.judge_asserts`
  says, with ``test_imports`` run first; MBPP's prompt lists the tests, as the benchmark's own prompt does),
  CodeContests-style JSONL (stdin/stdout ``tests``; a row's ``tolerance`` allows slack on decimals) or
  LiveCodeBench rows (``public_test_cases``, stdin or functional).
"""

from __future__ import annotations

import ast
import builtins
import json
import random
import re
import sys
from pathlib import Path

from r1lab.rewards.code import code_reward
from r1lab.sandbox.judge import plan_assert
from r1lab.tasks.base import Task, register_task, seeded_split
from r1lab.tasks.dataset import read_jsonl

_SPECS = [
    ("sum_even", "takes a list of integers `xs` and returns the sum of its even numbers",
     lambda rng: [[rng.randint(-20, 20) for _ in range(rng.randint(0, 8))]],
     lambda xs: sum(x for x in xs if x % 2 == 0)),
    ("count_vowels", "takes a string `s` and returns how many of its characters are vowels (a, e, i, o, u, "
     "upper or lower case)", lambda rng: ["".join(rng.choice("abcdeiouXYZ ") for _ in range(rng.randint(0, 12)))],
     lambda s: sum(c in "aeiouAEIOU" for c in s)),
    ("second_largest", "takes a list of integers `xs` with at least two distinct values and returns the second "
     "largest distinct value", lambda rng: [rng.sample(range(-50, 50), rng.randint(2, 7))],
     lambda xs: sorted(set(xs))[-2]),
    ("run_lengths", "takes a string `s` and returns a list of [character, count] pairs for its runs of equal "
     "characters, in order", lambda rng: ["".join(rng.choice("aab") for _ in range(rng.randint(0, 9)))],
     lambda s: [[c, len(m.group())] for m in re.finditer(r"(.)\1*", s) for c in [m.group()[0]]]),
    ("is_palindrome", "takes a string `s` and returns True if it reads the same backwards ignoring case, else "
     "False", lambda rng: [rng.choice(["Abba", "abc", "", "racecaR", "ab"])], lambda s: s.lower() == s.lower()[::-1]),
]


class _CodeTask(Task):
    """What the code tasks share: the verifier is the ``code`` reward, run in the sandbox."""

    def verify(self, completion: str, **example) -> float | None:
        return code_reward(completion, **example)


def _livecodebench(row: dict, prompt: str, where: str) -> dict:
    """A LiveCodeBench row: ``public_test_cases`` (and ``private_test_cases`` when given as plain JSON; the
    compressed form is a pickle, which r1lab never loads) of ``testtype`` stdin (stdin/stdout runs) or functional
    (LeetCode style: each input line a JSON argument of ``Solution().<metadata.func_name>``)."""
    cases = []
    for key in ("public_test_cases", "private_test_cases"):
        raw = row.get(key)
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            continue  # the compressed private tests: left out
        cases += [c for c in value or [] if isinstance(c, dict) and "input" in c and "output" in c]
    if not cases:
        raise ValueError(f"{where}: no test cases r1lab can read in public_test_cases/private_test_cases")
    if all(c.get("testtype", "stdin") == "stdin" for c in cases):
        return {"prompt": prompt, "func": None, "answer": "", "setup": "",
                "tests": [{"input": c["input"], "output": c["output"], "tolerance": None} for c in cases]}
    metadata = row.get("metadata")
    metadata = json.loads(metadata) if isinstance(metadata, str) and metadata else metadata or {}
    name = metadata.get("func_name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}: functional tests need metadata.func_name")
    asserts = []
    for c in cases:
        args = [json.loads(line) for line in str(c["input"]).splitlines() if line.strip()]
        asserts.append(f"assert Solution().{name}({', '.join(map(repr, args))}) == {json.loads(c['output'])!r}")
    return {"prompt": prompt, "func": None, "answer": "", "setup": "", "tests": [{"assert": a} for a in asserts]}


def _self_contained(line: str) -> bool:
    """Whether an assert line can be judged on its own: every name it uses is a builtin, a stdlib module or a
    function it calls (the solution's). HumanEval's ``check`` bodies also hold asserts on loop variables
    (``assert f(x) == y`` inside ``for x, y in ...``): those are left out rather than failed for every solution."""
    tree = ast.parse(line)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return all(n in called or hasattr(builtins, n) or n in sys.stdlib_module_names for n in names)


@register_task("code_functions")
class CodeFunctionsTask(_CodeTask):
    """Write one small function; hidden tests (arguments and the reference's results) stay in the parent."""

    name = "code_functions"
    instruction = "Write the function in Python inside a ```python code block."

    def __init__(self, n_train: int = 200, n_test: int = 50, tests: int = 6, seed: int = 0):
        rng = random.Random(seed)
        examples = []
        for i in range(n_train + n_test):
            name, text, draw, reference = _SPECS[i % len(_SPECS)]
            cases = [draw(rng) for _ in range(tests)]
            examples.append({"prompt": f"Write a Python function `{name}` that {text}.", "func": name,
                             "tests": [{"args": c, "expected": reference(*c)} for c in cases], "answer": ""})
        self._splits = dict(zip(("train", "test"), seeded_split(examples, n_test, seed)))


@register_task("code_dataset")
class CodeDatasetTask(_CodeTask):
    """MBPP/HumanEval-style rows (``text``/``prompt``, ``test_list`` or ``test`` asserts, optional ``entry_point``)
    or CodeContests/LiveCodeBench-style rows (``question``, ``tests``: [{input, output}])."""

    name = "code_dataset"
    instruction = "Write your solution in Python inside a ```python code block."

    def __init__(self, path: str, test_size: int | float = 0.2, seed: int = 0):
        examples = [self._example(row, f"{path}:{n}") for n, row in read_jsonl(Path(path))]
        examples = [e for e in examples if e["tests"]]
        if not examples:
            raise ValueError(f"{path}: no row has tests r1lab can judge: assert lines (test_list, or test with "
                             "entry_point) or stdin/stdout tests ([{input, output}])")
        self._splits = dict(zip(("train", "test"), seeded_split(examples, test_size, seed)))

    @staticmethod
    def _example(row: dict, where: str) -> dict:
        prompt = row.get("prompt") or row.get("text") or row.get("question") or row.get("question_content")
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: no prompt, text or question field")
        if "public_test_cases" in row or "private_test_cases" in row:
            return _livecodebench(row, prompt or row.get("question_content"), where)
        tests = row.get("tests")
        if isinstance(tests, list) and tests and isinstance(tests[0], dict) and "input" in tests[0]:
            tolerance = row.get("tolerance")
            return {"prompt": prompt, "func": None, "answer": "", "setup": "",
                    "tests": [{"input": t["input"], "output": t["output"], "tolerance": tolerance} for t in tests]}
        lines = row.get("test_list") or str(row.get("test", "")).splitlines()
        entry = row.get("entry_point")
        asserts = [line.strip().replace("candidate(", f"{entry}(") if entry else line.strip() for line in lines
                   if isinstance(line, str)]
        asserts = [a for a in asserts if plan_assert(a) is not None and _self_contained(a)]
        setup = "\n".join(row.get("test_imports") or []) + "\n" + str(row.get("test_setup_code") or "")
        if asserts and "test_list" in row:  # MBPP's prompt: the task, then the tests it must pass (names the function)
            prompt = prompt + "\nYour code should pass these tests:\n" + "\n".join(asserts)
        return {"prompt": prompt, "func": None, "answer": "", "setup": setup.strip() + "\n" if setup.strip() else "",
                "tests": [{"assert": a} for a in asserts]}
