"""A third review of ``r1lab eval``, each a test that failed before its fix: credit for cut replies through an empty
``\\boxed{}`` or a code fence, code sets' ``question`` field and dropped rows, run folders reused with another
``--limit``/``--benchmarks``/batching, ``--compare`` across data, clear errors for bad ``--data``, names and
``--task-args``, LiveCodeBench JSON, BOM files, and per-problem sd at k = 1."""

import json

import pytest
from test_eval_round2 import Scripted
from test_runner import fake_run

from r1lab.config import EvalConfig
from r1lab.engine import SamplingParams
from r1lab.engine.base import Completion, Prompt
from r1lab.evaluate import batches, runner
from r1lab.evaluate.benchmarks import Benchmark, load_benchmark, task_benchmark
from r1lab.evaluate.compare import compare_runs
from r1lab.models import save_checkpoint
from r1lab.rollout import Group, sample_problems, score_group

from conftest import make_model, make_tokenizer  # tests/conftest.py


def feed():
    return Benchmark("feed", [{"id": "0", "prompt": "How many cups?", "answer": "20"}])


def cut_at(reply: str, end: str) -> list[dict]:
    """The records of ``reply`` cut at the length limit just after ``end`` (two samples)."""
    tok = make_tokenizer()
    cut = len(tok(reply[:reply.index(end) + len(end)], add_special_tokens=False)["input_ids"])
    params = SamplingParams(n=2, max_new_tokens=cut, temperature=0.0)
    records = sample_problems(Scripted(tok, reply), feed(), feed().examples(), params, "r1zero", None)[0]
    assert records[0]["finish_reason"] == "length"
    return records


def test_a_cut_reply_gets_no_math_credit_from_an_empty_box_or_a_code_fence():
    empty_box = "I must put my answer within \\boxed{}. Each hen eats 6 cups so she makes 20 and then the rest"
    fenced = "Let me compute:\n```\n3 * 6 = 18\n```\nSo she sells them and makes 20 and then the rest of it"
    for reply in (empty_box, fenced):
        records = cut_at(reply, "makes 20")
        assert [(r["answer"], r["correct"]) for r in records] == [(None, 0.0)] * 2, reply


def test_a_cut_reply_is_judged_on_the_answer_it_closed_not_on_later_text():
    reply = "So the answer is \\boxed{20}. I was told to put it within \\boxed{} and 35 more and the rest"
    records = cut_at(reply, "35")
    assert records[0]["answer"] == "20" and records[0]["correct"] == 1.0


def group_of(example: dict, texts: list[str]) -> Group:
    return Group(example=example, prompt=Prompt((1,)),
                 completions=[Completion(0, [1] * 5, [0.0] * 5, "length", t) for t in texts])


def test_grpo_accuracy_judges_a_cut_reply_as_evaluation_does():
    seen = []

    def accuracy(completion, **_):
        seen.append(completion)
        return float("20" in completion)

    rewards = {"accuracy": (accuracy, 2.0), "length": (lambda c, **_: 0.5, 1.0)}
    group = group_of({"answer": "20"}, ["put it in \\boxed{} then 20", "\\boxed{20} and then 35", "```\nx=20\n```"])
    score_group(group, rewards)
    assert group.per_reward["accuracy"] == [0.0, 1.0, 0.0]  # code fences close nothing for a math example
    assert group.rewards == [0.5, 2.5, 0.5] and list(group.per_reward) == ["accuracy", "length"]
    assert "\\boxed{20}" in seen and not any("35" in s for s in seen)  # judged on the closed part only
    code = group_of({"tests": [{"assert": "assert f() == 20"}]}, ["```python\ndef f(): return 20\n``` and then"])
    seen.clear()
    score_group(code, rewards)  # a code example: a closed fence is a closed answer
    assert code.per_reward["accuracy"] == [1.0] and seen == ["```python\ndef f(): return 20\n```"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_a_code_set_honours_its_question_field_and_says_which_rows_it_left_out(tmp_path, capsys):
    rows = [{"task_id": "t1", "task_text": "Write f returning 1.", "prompt": "def f():", "test_list": ["assert f() == 1"]},
            {"task_id": "t2", "task_text": "No tests here.", "test_list": []},
            {"task_id": "t3", "task_text": "Nor here.", "test_list": []}]
    bench = load_benchmark("mycode", {"path": write(tmp_path / "c.jsonl", rows), "kind": "code", "question": "task_text"})
    [example] = bench.examples()
    assert example["prompt"].startswith("Write f returning 1.") and example["id"] == "t1"
    assert bench.notes == ("2 of 3 rows were left out: they have no tests r1lab can judge (ids t2, t3).",)
    assert "2 of 3 rows were left out" in capsys.readouterr().err


def test_a_livecodebench_row_with_bad_json_names_its_file_row_and_field(tmp_path):
    row = {"question_id": "lc1", "question_content": "Add.", "metadata": json.dumps({"func_name": "add"}),
           "public_test_cases": json.dumps([{"input": "1\n{2", "output": "3", "testtype": "functional"}])}
    path = write(tmp_path / "lcb.jsonl", [row])
    with pytest.raises(ValueError, match=r"lcb.jsonl row 1: public_test_cases\[0\].input .*not valid JSON"):
        load_benchmark("lcb", path)


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"question": "1+1?", "answer": "2"}\r\n')
    assert load_benchmark("bom", str(path)).examples()[0]["answer"] == "2"


def test_bad_data_specs_give_clear_errors(tmp_path):
    path = write(tmp_path / "small.jsonl", [{"id": "a", "question": "2+3?", "answer": "5"}])
    for spec, match in (({"path": 5}, "path must be a file path"), ([path], "give a file path or"),
                        ({"path": path, "question": ["question"]}, "question must be a field name"),
                        ({"path": path, "choices": "answer"}, "choices must be a list"),
                        ({"path": path, "id": "uid"}, "no id field 'uid'")):
        with pytest.raises(ValueError, match=match):
            load_benchmark("myset", spec)
    nulls = write(tmp_path / "null.jsonl", [{"question": "2+3?", "answer": None}])
    with pytest.raises(ValueError, match="null.jsonl row 1: its answer field 'answer' is null"):
        load_benchmark("nulls", nulls)


def test_a_choice_set_may_have_more_than_four_options_and_names_its_letters(tmp_path):
    fields = [f"o{i}" for i in range(6)]
    path = write(tmp_path / "six.jsonl", [{"q": "Pick o0.", **{f: f"option {f}" for f in fields}}])
    bench = load_benchmark("six", {"path": path, "kind": "choice", "question": "q", "choices": fields})
    [example] = bench.examples()
    assert "(A, B, C, D, E or F)" in bench.instruction and "F) option" in example["prompt"]
    assert bench.verify(f"\\boxed{{{example['answer']}}}", **example) == 1.0
    assert bench.extract("The answer is F.") == "F"


@pytest.mark.parametrize("name", ["summary.json", "config.yaml", "report.md", "plots", "..", ".hidden", "a/b"])
def test_a_benchmark_name_that_is_no_folder_of_its_own_is_refused_before_the_model_loads(tmp_path, name):
    cfg = EvalConfig(model="no/such/model", benchmarks=[name], data={name: "x.jsonl"}, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="cannot name a benchmark"):
        runner.run_eval(cfg, progress=False)


@pytest.mark.parametrize("digits", [float("inf"), 1.5, True, 10**23, "2"])
def test_task_args_out_of_range_name_the_option_and_its_range(digits):
    with pytest.raises(ValueError, match="digits=.*: must be a whole number, digits >= 1 and digits <= 30"):
        task_benchmark("arithmetic", {"digits": digits})


def test_a_task_with_no_test_problems_is_refused_up_front():
    with pytest.raises(ValueError, match="no test problems"):
        task_benchmark("arithmetic", {"n_test": 0, "n_train": 5})


def test_compare_refuses_runs_on_different_data(tmp_path):
    a = fake_run(tmp_path / "a", "gsm8k", [[0, 1]] * 5, source="gsm8k/test.jsonl")
    b = fake_run(tmp_path / "b", "gsm8k", [[1, 1]] * 5, source="other.jsonl")
    with pytest.raises(ValueError, match="different data"):
        compare_runs(a, b)


# ------------------------------------------------------------------- run folders, on a tiny random model
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path_factory.mktemp("m") / "tiny"))


def config(tiny_path, out, **kw):
    base = dict(model=tiny_path, benchmarks=["task:arithmetic"], task_args={"n_train": 10, "n_test": 7},
                k=3, max_new_tokens=6, problems_per_batch=2, template="native", out=str(out), threads=1)
    return EvalConfig(**{**base, **kw})


def samples_by_problem(summary_dir, n):
    rows = [json.loads(line) for line in (summary_dir / "task-arithmetic" / "samples.jsonl").read_text().splitlines()]
    return {(r["problem"], r["sample"]): (r["completion"], r["tokens"]) for r in rows if r["problem"] < n}


def test_samples_do_not_depend_on_batching_max_rows_or_limit(tiny_path, tmp_path):
    runs = {"base": {}, "batches": dict(problems_per_batch=3, max_rows=2), "limit": dict(limit=4, max_rows=0)}
    got = {}
    for name, kw in runs.items():
        runner.run_eval(config(tiny_path, tmp_path / name, **kw), progress=False)
        got[name] = samples_by_problem(tmp_path / name, 4)
    assert got["base"] == got["batches"] == got["limit"] and len(got["base"]) == 12


def test_a_rerun_with_other_batching_or_limit_reuses_samples_and_reports_only_its_problems(tiny_path, tmp_path,
                                                                                           monkeypatch):
    whole = runner.run_eval(config(tiny_path, tmp_path / "run"), progress=False)
    calls, plotted = [], []
    real_sample, real_plot = batches.sample_problems, runner.write_eval_report

    monkeypatch.setattr(batches, "sample_problems", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    monkeypatch.setattr(runner, "write_eval_report",
                        lambda out, summary, records: plotted.append(records) or real_plot(out, summary, records))
    again = runner.run_eval(config(tiny_path, tmp_path / "run", problems_per_batch=3, max_rows=4), progress=False)
    assert calls == []  # another batch size and row budget: every problem's samples are reused
    metrics = [s["benchmarks"]["task:arithmetic"]["metrics"] for s in (whole, again)]
    assert metrics[0] == metrics[1]
    runner.run_eval(config(tiny_path, tmp_path / "run", limit=3), progress=False)
    assert calls == [] and len(plotted[-1]["task:arithmetic"]) == 3 * 3  # the report: this run's 3 problems only
    assert "problem 3" not in (tmp_path / "run" / "report.md").read_text().split("**A wrong sample**")[-1][:40]
    runner.run_eval(config(tiny_path, tmp_path / "run", limit=5, problems_per_batch=4), progress=False)
    assert calls == []


def test_a_rerun_that_leaves_out_a_benchmark_is_refused_before_the_model_loads(tiny_path, tmp_path):
    runner.run_eval(config(tiny_path, tmp_path / "run", limit=2, greedy=True), progress=False)
    cfg = config("no/such/model", tmp_path / "run", benchmarks=["task:countdown"], task_args={}, limit=2,
                 greedy=True)
    with pytest.raises(ValueError, match=r"holds results for task:arithmetic, which --benchmarks does not name"):
        runner.run_eval(cfg, progress=False)


def test_the_report_says_n_a_for_the_per_problem_sd_at_k_1(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "open_engine", lambda *a, **k: Scripted(make_tokenizer(), "\\boxed{3}"))
    cfg = EvalConfig(benchmarks=["task:arithmetic"], task_args={"n_test": 3, "n_train": 3}, greedy=True,
                     max_new_tokens=8, out=str(tmp_path / "eval"), template="r1zero")
    summary = runner.run_eval(cfg, progress=False)
    assert summary["benchmarks"]["task:arithmetic"]["per_problem_sd"] is None
    assert "per-problem sd of correctness across samples n/a (k = 1)" in (tmp_path / "eval" / "report.md").read_text()
