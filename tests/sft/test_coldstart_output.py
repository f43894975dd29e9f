"""`r1lab coldstart` output: an empty result writes nothing and says so; an existing set is never replaced."""

import pytest

from r1lab.cli import main
from r1lab.config import ColdstartConfig
from r1lab.sft.coldstart import write_coldstart


def test_an_empty_result_writes_no_file_and_points_nowhere(tmp_path, capsys, monkeypatch):
    from r1lab.tasks import ArithmeticTask

    monkeypatch.setattr(ArithmeticTask, "trace", lambda self, example: ("no idea", "wrong"))  # every trace fails
    out = tmp_path / "cs.jsonl"
    assert main(["coldstart", "--examples", "5", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert not out.exists() and "next:" not in captured.out + captured.err
    assert "nothing was written" in captured.err


def test_an_existing_set_is_never_overwritten_with_other_rows(tmp_path):
    out = tmp_path / "cs.jsonl"
    write_coldstart(ColdstartConfig(examples=5, out=str(out)), progress=False)
    first = out.read_text()
    write_coldstart(ColdstartConfig(examples=5, out=str(out)), progress=False)  # the same set again: fine
    with pytest.raises(ValueError, match="already exists with other samples"):
        write_coldstart(ColdstartConfig(examples=6, out=str(out)), progress=False)
    assert out.read_text() == first


def test_source_model_for_a_task_without_traces_does_not_suggest_source_model(tmp_path, capsys):
    assert main(["coldstart", "--source", "model", "--task", "gsm8k", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--source jsonl" in err and "use --source model" not in err
