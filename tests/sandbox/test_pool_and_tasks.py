import time

import pytest

from r1lab.rewards.code import code_reward, extract_code
from r1lab.sandbox.judge import CallTest, judge_calls
from r1lab.sandbox.pool import run_many
from r1lab.sandbox.run import Limits, isolation_level
from r1lab.tasks import get_task
from r1lab.tasks.code import CodeDatasetTask

pytestmark = pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and unshare for namespaces")

KINDS = {
    "pass": ("def f(x): return x * 2", 1.0),
    "fail": ("def f(x): return x + 1", 0.0),
    "timeout": ("def f(x):\n    while True: pass", 0.0),
    "crash": ("import os\nos.abort()\ndef f(x): return x * 2", 0.0),
}


def test_100_concurrent_mixed_jobs_each_land_in_their_slot():
    order = [list(KINDS)[i % 4] for i in range(100)]
    # a short deadline only where the program spins for ever; the others get room: 16 runs at once on a small
    # machine, a quarter of them spinning, may take seconds each to start, and a passing run must not time out
    limits = {k: Limits(wall=2, cpu=2) if k == "timeout" else Limits(wall=60, cpu=60) for k in KINDS}
    jobs = [lambda k=k: judge_calls(KINDS[k][0], "f", [CallTest([3], 6)], limits=limits[k]).score() for k in order]
    t0 = time.monotonic()
    results = run_many(jobs, workers=16)
    assert results == [KINDS[k][1] for k in order]
    assert time.monotonic() - t0 < 300  # 25 timeouts of 2 s on 16 workers, no hang (about 10 s here)


def test_gold_solutions_of_the_procedural_code_task_pass_and_the_reward_reads_fenced_code():
    task = get_task("code_functions", n_train=10, n_test=5)
    gold = {
        "sum_even": "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
        "count_vowels": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
        "second_largest": "def second_largest(xs):\n    return sorted(set(xs))[-2]",
        "run_lengths": "def run_lengths(s):\n    out = []\n    for c in s:\n        if out and out[-1][0] == c:\n"
                        "            out[-1][1] += 1\n        else:\n            out.append([c, 1])\n    return out",
        "is_palindrome": "def is_palindrome(s):\n    return s.lower() == s.lower()[::-1]",
    }
    for example in task.examples("train") + task.examples("test"):
        reply = f"<think>easy</think>Here it is:\n```python\n{gold[example['func']]}\n```"
        assert task.verify(reply, **example) == 1.0, example["func"]
        assert task.verify("```python\ndef nothing(): pass\n```", **example) == 0.0
    assert code_reward("no code at all", tests=[{"args": [1], "expected": 1}], func="f") == 0.0
    assert code_reward("```python\nprint(1)\n```", tests=[]) is None


def test_mbpp_and_stdin_style_rows_load_and_judge(tmp_path):
    import json

    path = tmp_path / "code.jsonl"
    rows = [{"text": "Write a function to add two numbers.", "code": "def add(a, b): return a + b",
             "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) in (4, 5)",
                           "assert not add(0, 0)", "x = 1"]},
            {"question": "Read two numbers and print their product.",
             "tests": [{"input": "3 4\n", "output": "12\n"}, {"input": "0 9\n", "output": "0\n"}]}] * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = CodeDatasetTask(str(path), test_size=2)
    for example in task.examples("train") + task.examples("test"):
        if "assert" in example["tests"][0]:
            assert len(example["tests"]) == 4  # a line that is not an assert is skipped, never run
            assert task.verify("```python\ndef add(a, b): return a + b\n```", **example) == 1.0
            assert task.verify("```python\ndef add(a, b): return a + b + 1\n```", **example) == 0.0
        else:
            assert task.verify("```python\na, b = map(int, input().split())\nprint(a * b)\n```", **example) == 1.0
    assert extract_code("```js\nx\n```") is None


def test_a_sandbox_that_fails_on_its_own_gives_no_verdict_not_a_zero(monkeypatch):
    from r1lab.sandbox import judge
    from r1lab.sandbox.run import Result

    monkeypatch.setattr(judge, "run", lambda *a, **k: Result("sandbox_error", 125, "", "mount failed", 0.1, "namespaces"))
    assert judge.judge_calls("def f(x): return x", "f", [CallTest([1], 1)]).score() is None
    assert judge.judge_io("print(1)", [judge.IOTest("", "1")]).score() is None
    assert code_reward("```python\ndef f(x): return x\n```", tests=[{"args": [1], "expected": 1}], func="f") is None
