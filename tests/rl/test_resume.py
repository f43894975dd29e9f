"""`r1lab zero --resume` through the command line: a finished run is left exactly as it is, an interrupted one
continues with its own settings (other flags are refused), and the trained policy is on disk before the final
evaluation starts."""

import hashlib
import json
import os

import pytest

import r1lab.policy as policy_module
import r1lab.rl.grpo as grpo
from r1lab.cli import main
from r1lab.models import is_complete_checkpoint, save_checkpoint

from conftest import ctrl_c_in_step, make_model, make_tokenizer


@pytest.fixture
def tiny_path(tmp_path):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))


def flags(tiny_path, out, steps=2):
    return ["zero", "--model", tiny_path, "--task-args", "{n_train: 30, n_test: 6}", "--template", "native",
            "--rewards", "{format: 0.5, tag_count: 0.5}", "--steps", str(steps), "--prompts-per-step", "2",
            "--group-size", "2", "--max-new-tokens", "6", "--eval-examples", "2", "--eval-max-new-tokens", "4",
            "--warmup-steps", "0", "--threads", "1", "--out", str(out)]


def snapshot(folder):
    """Every file under ``folder`` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_changes_nothing(tiny_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run)) == 0
    before = snapshot(run)
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 0  # the repro of the report, word for word
    assert snapshot(run) == before
    assert "finished run" in capsys.readouterr().out


def test_an_interrupted_run_resumes_with_its_saved_settings_and_refuses_others(tiny_path, tmp_path, monkeypatch,
                                                                               capsys):
    run = tmp_path / "run"
    with ctrl_c_in_step(3, monkeypatch):
        assert main(flags(tiny_path, run, steps=3) + ["--save-every", "1"]) == 130  # Ctrl-C: one line, exit 130
    config_before = (run / "config.yaml").read_bytes()

    assert main(["zero", "--out", str(run), "--resume", "true", "--lr", "0.001", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "lr: 2e-05 there, 0.001 given now" in err and "steps: 3 there, 5 given now" in err
    assert (run / "config.yaml").read_bytes() == config_before  # refused: nothing touched

    assert main(["zero", "--out", str(run), "--resume", "true", "--threads", "1"]) == 0  # threads may change
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the saved steps (3), not the default (40)
    assert (run / "config.yaml").read_bytes() == config_before


def test_a_resumed_library_call_with_other_settings_is_refused(tiny_path, tmp_path):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run)) == 0
    from r1lab.config import ZeroConfig
    from r1lab.options import load_config

    cfg = load_config(ZeroConfig, flags(tiny_path, run)[1:] + ["--resume", "true", "--seed", "7"])
    with pytest.raises(ValueError, match="seed: 0 there, 7 now"):
        grpo.train(cfg, progress=False)


def test_the_policy_is_saved_before_the_final_evaluation(tiny_path, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_evaluate = grpo.evaluate

    def dies_in_eval_after(*args, desc="eval", **kwargs):
        if desc == "eval after":
            raise KeyboardInterrupt  # killed during the final evaluation
        return real_evaluate(*args, desc=desc, **kwargs)

    monkeypatch.setattr(grpo, "evaluate", dies_in_eval_after)
    assert main(flags(tiny_path, run, steps=2)) == 130
    assert is_complete_checkpoint(run / "final") and is_complete_checkpoint(run / "checkpoints" / "step-000002")
    assert not (run / "summary.json").exists()

    monkeypatch.setattr(grpo, "evaluate", real_evaluate)
    trained = []
    monkeypatch.setattr(grpo, "update_policy", lambda *a, **k: trained.append(1))
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 0
    assert trained == []  # nothing left to train: only the final evaluation ran
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "accuracy" in summary["eval_after"]


def test_lines_past_the_resume_point_are_kept_aside_not_deleted(tiny_path, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with ctrl_c_in_step(2, monkeypatch):
        assert main(flags(tiny_path, run, steps=3) + ["--save-every", "5"]) == 130  # no checkpoint before it
    logged = (run / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in logged.splitlines()] == [1]

    assert main(["zero", "--out", str(run), "--resume", "true"]) == 0
    assert (run / "metrics.discarded.jsonl").read_text() == logged  # step 1 was redone; its old line kept aside
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_checkpoints_record_their_template_and_are_readable_by_others(tiny_path, tmp_path):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run) + ["--template", "native-zero"]) == 0
    meta = json.loads((run / "final" / "r1lab_complete.json").read_text())
    assert meta["template"] == "native-zero"
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (run / "final").iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # 0644 under the usual umask, as other files

    from r1lab.config import ChatConfig, ServeConfig, ZeroConfig
    from r1lab.options import load_config

    assert load_config(ServeConfig, ["--model", str(run / "final")]).template == "native-zero"
    assert load_config(ChatConfig, ["--model", str(run / "checkpoints" / "step-000002")]).template == "native-zero"
    assert load_config(ServeConfig, ["--model", str(run / "final"), "--template", "r1"]).template == "r1"
    assert load_config(ZeroConfig, ["--model", "smollm2-135m"]).template == "native-zero"  # no record: default


def test_summaries_and_logs_are_strict_json_even_when_a_mean_is_over_nothing(tiny_path, tmp_path):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run)) == 0  # no accuracy reward: the accuracy column is a mean over nothing

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    summary = strict((run / "summary.json").read_text())
    rows = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["accuracy"] is None and summary["steps"] == 2
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 0  # and it reads them back


def test_no_command_writes_into_another_commands_run(tiny_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run)) == 0
    before = snapshot(run)
    evaluate = ["eval", "--model", tiny_path, "--template", "native", "--benchmarks", "task:arithmetic", "--limit",
                "2", "--greedy", "--max-new-tokens", "4", "--out", str(run)]
    assert main(evaluate) == 2 and "holds an `r1lab zero` run" in capsys.readouterr().err
    sample = ["sample", "--model", tiny_path, "--template", "native", "--limit", "2", "--out", str(run)]
    assert main(sample) == 2 and "holds an `r1lab zero` run" in capsys.readouterr().err
    assert snapshot(run) == before
    (run / "notes.txt").write_text("mine")
    assert main(flags(tiny_path, tmp_path / "run" / "notes.txt")) == 2  # --out is a file
    assert "is a file" in capsys.readouterr().err


def test_resume_refuses_a_run_without_its_settings_or_a_folder_that_is_not_there(tiny_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(flags(tiny_path, run)) == 0
    (run / "config.yaml").unlink()
    before = snapshot(run)
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 2
    assert "no config.yaml" in capsys.readouterr().err and snapshot(run) == before
    assert main(["zero", "--out", str(tmp_path / "rnu"), "--resume", "true"]) == 2  # a typo
    assert "no run in" in capsys.readouterr().err and not (tmp_path / "rnu").exists()
    (run / "config.yaml").write_text("model: [unclosed\n")
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 2
    assert "config.yaml cannot be read" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_with_files_in_it(tiny_path, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "report.md").write_text("my notes")
    assert main(flags(tiny_path, folder)) == 2
    assert (folder / "report.md").read_text() == "my notes" and "already holds files" in capsys.readouterr().err


def test_a_torn_last_log_line_is_dropped_on_resume_and_the_folder_may_be_named_another_way(tiny_path, tmp_path,
                                                                                          monkeypatch):
    run = tmp_path / "run"
    with ctrl_c_in_step(3, monkeypatch):
        assert main(flags(tiny_path, run, steps=3) + ["--save-every", "2"]) == 130
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # killed while writing a line
    monkeypatch.chdir(tmp_path)
    assert main(["zero", "--out", "run/", "--resume", "true"]) == 0  # relative, trailing slash: the same run
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_run_that_died_before_its_first_step_may_be_started_again(tiny_path, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(policy_module, "load_policy", lambda *a: (_ for _ in ()).throw(FileNotFoundError("no model")))
    assert main(flags(tiny_path, run)) == 2 and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    monkeypatch.undo()
    assert main(flags(tiny_path, run) + ["--seed", "3"]) == 2  # other settings: refused, named
    assert "seed: 0 there, 3 now" in capsys.readouterr().err
    assert main(flags(tiny_path, run)) == 0  # the same command again just runs
