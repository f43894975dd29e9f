"""r1lab eval end to end on a tiny random model: files written, resume equals an uninterrupted run, compare."""

import json

import pytest

from r1lab.cli import main
from r1lab.config import EvalConfig
from r1lab.evaluate import batches, runner
from r1lab.evaluate.compare import compare_runs
from r1lab.models import save_checkpoint

from conftest import make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path_factory.mktemp("m") / "tiny"))


def config(tiny_path, out, **kw):
    base = dict(model=tiny_path, benchmarks=["task:arithmetic"], task_args={"n_train": 10, "n_test": 7},
                k=3, max_new_tokens=6, problems_per_batch=2, template="native", out=str(out), threads=1)
    base.update(kw)
    return EvalConfig(**base)


def samples(run, bench="task-arithmetic"):
    rows = [json.loads(l) for l in (run / bench / "samples.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows),
                  key=lambda r: (r["problem"], r["sample"]))


def comparable(summary):
    out = json.loads(json.dumps(summary))
    for result in out["benchmarks"].values():
        result.pop("seconds"), result.pop("tokens_per_second")
    return out


def test_writes_samples_summary_report_and_plots(tiny_path, tmp_path):
    summary = runner.run_eval(config(tiny_path, tmp_path / "run"), progress=False)
    result = summary["benchmarks"]["task:arithmetic"]
    assert result["n_problems"] == 7 and result["k"] == 3 and result["n_samples"] == 21
    assert set(result["metrics"]) == {"pass@1", "pass@2", "pass@3", "cons@3"}
    rows = samples(tmp_path / "run")
    assert len(rows) == 21 and {"prompt", "completion", "answer", "correct", "tokens", "finish_reason"} <= set(rows[0])
    for name in ("summary.json", "report.md", "report.html", "config.yaml", "plots/task-arithmetic_accuracy_vs_k.png",
                 "plots/task-arithmetic_lengths.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "| pass@1 |" in (tmp_path / "run" / "report.md").read_text()


def test_resume_after_interruption_gives_the_same_summary(tiny_path, tmp_path, monkeypatch):
    whole = runner.run_eval(config(tiny_path, tmp_path / "whole"), progress=False)

    real = batches.sample_problems
    calls = []

    def dies_in_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "sample_problems", dies_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        runner.run_eval(config(tiny_path, tmp_path / "cut"), progress=False)
    assert len(samples(tmp_path / "cut")) == 2 * 2 * 3  # the two finished batches were kept
    # a torn last line (killed mid-write) is dropped too
    with open(tmp_path / "cut" / "task-arithmetic" / "samples.jsonl", "a") as f:
        f.write('{"id": "4", "sample": 0, "batch": 2, "batch_pro')

    counted = []

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "sample_problems", counting)
    resumed = runner.run_eval(config(tiny_path, tmp_path / "cut"), progress=False)
    assert len(counted) == 2  # batches 2 and 3 only (7 problems in batches of 2)
    assert samples(tmp_path / "cut") == samples(tmp_path / "whole")
    assert comparable(resumed) == comparable(whole)


def test_an_incomplete_batch_is_redone_and_a_larger_earlier_run_is_reused(tiny_path, tmp_path):
    runner.run_eval(config(tiny_path, tmp_path / "run"), progress=False)
    path = tmp_path / "run" / "task-arithmetic" / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the last batch lost two samples
    done = batches.read_complete_batches(path, 7, 2, 3)
    assert sorted(done) == [0, 1, 2] and len(path.read_text().splitlines()) == 18
    # a smaller limit reuses the first batches without touching the file
    summary = runner.run_eval(config(tiny_path, tmp_path / "run", limit=4), progress=False)
    assert summary["benchmarks"]["task:arithmetic"]["n_problems"] == 4
    assert len(path.read_text().splitlines()) == 18


def test_other_settings_in_the_same_folder_are_refused(tiny_path, tmp_path):
    runner.run_eval(config(tiny_path, tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match="temperature: 0.6 there, 0.9 now"):
        runner.run_eval(config(tiny_path, tmp_path / "run", temperature=0.9), progress=False)


def test_samples_made_in_another_precision_are_refused_and_a_folder_that_recorded_none_resumes(tiny_path, tmp_path):
    run = tmp_path / "run"
    runner.run_eval(config(tiny_path, run, dtype="fp32"), progress=False)
    settings_path = run / "task-arithmetic" / "settings.json"
    assert json.loads(settings_path.read_text())["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision: 'fp32' there, 'bf16' now"):
        runner.run_eval(config(tiny_path, run, dtype="bf16"), progress=False)
    # a folder written before precisions (and engines) were recorded resumes, whatever precision picks now
    saved = json.loads(settings_path.read_text())
    settings_path.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("precision", "engine")}))
    before = samples(run)
    runner.run_eval(config(tiny_path, run, dtype="bf16"), progress=False)
    assert samples(run) == before  # every batch was on disk: nothing sampled again


def test_bad_settings_are_refused_before_the_model_loads(tmp_path):
    for bad, match in ((dict(benchmarks=["nope"]), "unknown benchmark"), (dict(template="x"), "template"),
                       (dict(temperature=0.0), "--greedy"), (dict(data={"math500": "x"}), "not among")):
        with pytest.raises((KeyError, ValueError), match=match):
            runner.run_eval(config("no/such/model", tmp_path / "r", **bad), progress=False)


def test_greedy_takes_one_sample(tiny_path, tmp_path):
    summary = runner.run_eval(config(tiny_path, tmp_path / "g", greedy=True), progress=False)
    result = summary["benchmarks"]["task:arithmetic"]
    assert result["k"] == 1 and result["settings"]["temperature"] == 0.0


def fake_run(folder, name, correct_by_problem, source="gsm8k/test.jsonl"):
    """A run folder as r1lab eval writes it, with chosen verdicts (one batch of all the problems)."""
    (folder / name).mkdir(parents=True)
    lines = []
    n, k = len(correct_by_problem), len(correct_by_problem[0])
    for p, verdicts in enumerate(correct_by_problem):
        for j, c in enumerate(verdicts):
            lines.append(json.dumps({"id": str(p), "problem": p, "sample": j, "correct": c, "batch": 0,
                                     "batch_problems": n}))
    (folder / name / "samples.jsonl").write_text("\n".join(lines) + "\n")
    result = {"n_problems": n, "k": k, "source": source, "settings": {"source": source}}
    (folder / "summary.json").write_text(json.dumps({"benchmarks": {name: result}}))
    return folder


def test_compare_says_whether_a_difference_exceeds_the_noise(tmp_path, capsys):
    weak = fake_run(tmp_path / "a", "gsm8k", [[0, 0, 0, 1]] * 60)
    strong = fake_run(tmp_path / "b", "gsm8k", [[1, 1, 0, 1]] * 60)
    noisy = fake_run(tmp_path / "c", "gsm8k", [[0, 0, 0, 1]] * 30 + [[0, 1, 0, 0]] * 30)
    [row] = compare_runs(weak, strong)
    assert row["difference"] == pytest.approx(0.5) and row["significant"]
    [row] = compare_runs(weak, noisy)
    assert row["difference"] == pytest.approx(0.0) and not row["significant"]
    assert main(["eval", "--compare", str(weak), str(strong)]) == 0
    assert "larger than the noise" in capsys.readouterr().out
    assert main(["eval", "--compare", str(weak)]) == 2
    assert main(["eval", "--compare", str(weak), str(tmp_path / "missing")]) == 2
    assert "summary.json not found" in capsys.readouterr().err
