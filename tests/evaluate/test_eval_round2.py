"""Issue 14's bugs, each a test that failed before the fix: credit for unfinished replies, templates that open
the think block, ``test_size: 1.0``, the sample spread at small k, and the automatic k after ``--limit``; plus
benchmarks of one's own by name and code benchmarks."""

import json

import numpy as np
import pytest

from r1lab.chat import render
from r1lab.engine import SamplingParams
from r1lab.engine.base import Completion, render_prompt
from r1lab.evaluate.benchmarks import load_benchmark
from r1lab.evaluate.metrics import estimate, per_problem_pass_at_k
from r1lab.evaluate.runner import summarize_records
from r1lab.rollout import sample_problems
from r1lab.tasks.base import seeded_split

from conftest import make_tokenizer  # tests/conftest.py


class Scripted:
    """Every row replies ``script`` token by token, cut at ``max_new_tokens`` ("length") unless it ends first."""

    def __init__(self, tokenizer, script: str):
        self.tokenizer, self.script, self.context_length = tokenizer, script, 4096

    def encode(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, messages, template, prefill=None):
        return render_prompt(self.tokenizer, messages, template, prefill)

    def close(self):
        pass

    def generate(self, prompts, params, on_token=None, stream_ids=None):
        ids = self.encode(self.script) + [self.tokenizer.eos_token_id]
        cut = ids[:params.max_new_tokens]
        reason = "stop" if cut and cut[-1] == self.tokenizer.eos_token_id else "length"
        text = self.tokenizer.decode(cut, skip_special_tokens=True)
        return [[Completion(i, list(cut), [0.0] * len(cut), reason, text) for _ in range(params.n)]
                for i in range(len(prompts))]


def _feed():
    from r1lab.evaluate.benchmarks import Benchmark

    return Benchmark("feed", [{"id": "0", "prompt": "How many cups?", "answer": "20"}])


def judged(script: str, max_new_tokens: int, template: str = "r1zero", tokenizer=None):
    engine = Scripted(tokenizer or make_tokenizer(), script)
    params = SamplingParams(n=2, max_new_tokens=max_new_tokens, temperature=0.0)
    return sample_problems(engine, _feed(), _feed().examples(), params, template, None)


def test_a_reply_cut_at_the_length_limit_gets_no_credit_unless_it_closed_its_answer():
    text = "Each hen eats 6 cups, so 120 cups of feed are needed to feed 20 hens and then we must also count"
    cut = len(make_tokenizer()(text.split(" hens")[0], add_special_tokens=False)["input_ids"])
    records = judged(text, max_new_tokens=cut)[0]
    assert records[0]["finish_reason"] == "length" and records[0]["completion"].rstrip().endswith("feed 20")
    assert [r["answer"] for r in records] == [None, None] and [r["correct"] for r in records] == [0.0, 0.0]
    summary = summarize_records([records], _feed())
    assert summary["answered"] == 0 and summary["correct_truncated"] == 0
    reply = "So the answer is \\boxed{20}. Let me also double check the other hens"
    cut = len(make_tokenizer()("So the answer is \\boxed{20}. Let", add_special_tokens=False)["input_ids"])
    closed = judged(reply, max_new_tokens=cut)[0]
    assert closed[0]["finish_reason"] == "length" and closed[0]["correct"] == 1.0  # it had closed its answer


def thinking_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]<think>\n{% endif %}")
    return tok


def test_a_template_that_opens_the_think_block_keeps_unfinished_reasoning_out_of_the_answer():
    tok = thinking_tokenizer()
    rendered = render([{"role": "user", "content": "n?"}], "native", tok)
    assert rendered.prefill == "<think>\n" and rendered.thinking
    unfinished = judged("Let me see. Next I check whether n = 20", 200, "native", tok)[0]
    assert unfinished[0]["finish_reason"] == "stop" and unfinished[0]["completion"].startswith("<think>\n")
    assert unfinished[0]["answer"] is None and unfinished[0]["correct"] == 0.0
    finished = judged("Let me see, 20.\n</think>\nIt is \\boxed{20}.", 200, "native", tok)[0]
    assert finished[0]["correct"] == 1.0


def test_a_float_test_size_is_a_fraction_and_1_0_is_the_whole_set():
    train, test = seeded_split(list(range(10)), 1.0, seed=0)
    assert len(test) == 10 and train == []
    assert len(seeded_split(list(range(10)), 0.3, seed=0)[1]) == 3 and len(seeded_split(list(range(10)), 3, 0)[1]) == 3
    with pytest.raises(ValueError, match="fraction"):
        seeded_split(list(range(10)), 2.5, seed=0)


def test_the_sample_spread_is_unbiased_at_small_k_and_absent_at_k_1():
    coin = [[0.0, 1.0]] * 200  # unbiased per-problem variance 0.5 over k = 2: sd of pass@1 = sqrt(200 * .5 / 2) / 200
    assert estimate(lambda c: per_problem_pass_at_k(c, 1), coin).sample_sd == pytest.approx(0.0354, abs=0.003)
    assert estimate(lambda c: per_problem_pass_at_k(c, 1), [[1.0], [0.0]]).sample_sd is None
    rng = np.random.default_rng(0)  # k = 4 with p = 0.3: sqrt(n * p(1-p) / k) / n
    draws = [list(rng.binomial(1, 0.3, size=4).astype(float)) for _ in range(400)]
    expected = np.sqrt(400 * 0.21 / 4) / 400
    assert estimate(lambda c: per_problem_pass_at_k(c, 1), draws).sample_sd == pytest.approx(expected, rel=0.15)


def test_the_automatic_k_comes_from_the_whole_set_not_the_limit(tmp_path, monkeypatch):
    from r1lab.config import EvalConfig
    from r1lab.evaluate import runner

    monkeypatch.setattr(runner, "open_engine", lambda *a, **k: Scripted(make_tokenizer(), "\\boxed{3}"))
    cfg = EvalConfig(benchmarks=["task:arithmetic"], task_args={"digits": 3, "n_test": 300}, limit=2, max_new_tokens=8, out=str(tmp_path / "eval"),
                     template="r1zero")
    summary = runner.run_eval(cfg, progress=False)
    n_test = len(runner.get_benchmark("task:arithmetic", cfg).examples("test"))
    from r1lab.evaluate.benchmarks import default_k

    assert summary["benchmarks"]["task:arithmetic"]["k"] == default_k(n_test) != default_k(2)


def test_any_benchmark_file_by_a_name_of_ones_own(tmp_path):
    path = tmp_path / "aime25.jsonl"
    rows = [{"id": f"2025-I-{i}", "problem": f"What is {i} + {i}?", "solution": f"So $\\boxed{{{2 * i}}}$."}
            for i in (3, 1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, data in (("aime25", str(path)), ("my-set", {"path": str(path), "question": "problem"})):
        b = load_benchmark(name, data)
        assert [e["id"] for e in b.examples()] == ["2025-I-3", "2025-I-1", "2025-I-2"]  # order and ids kept
        assert [e["answer"] for e in b.examples()] == ["6", "2", "4"]  # the solution's \boxed{}
    aime24 = load_benchmark("aime24", str(path))  # the aime24 loader reads a solution's \boxed{} too
    assert aime24.examples()[0]["answer"] == "6"
    with pytest.raises(KeyError, match="a file of your own"):
        load_benchmark("nothing-here")
    with pytest.raises(ValueError, match="kind"):
        load_benchmark("x", {"path": str(path), "kind": "poetry"})


def test_code_benchmarks_judge_the_answer_part_in_the_sandbox(tmp_path):
    from r1lab.sandbox.run import isolation_level

    if isolation_level() != "namespaces":
        pytest.skip("needs the sandbox's namespaces")
    path = tmp_path / "lcb.jsonl"
    stdin_row = {"question_id": "abc1", "question_content": "Print a + b.",
                 "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])}
    functional = {"question_id": "lc9", "question_content": "Add.", "metadata": json.dumps({"func_name": "add"}),
                  "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}])}
    path.write_text(json.dumps(stdin_row) + "\n" + json.dumps(functional) + "\n")
    b = load_benchmark("lcb", str(path))
    first, second = b.examples()
    assert (first["id"], second["id"]) == ("abc1", "lc9")
    assert b.verify("```python\na, b = map(int, input().split())\nprint(a + b)\n```", **first) == 1.0
    assert b.verify("<think>```python\nprint(3)\n```</think>no code here", **first) == 0.0  # thinking never counts
    solution = "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"
    assert b.verify(solution, **second) == 1.0 and b.equivalent is None
