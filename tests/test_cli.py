import pytest

from r1lab.cli import main


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "zero" in capsys.readouterr().out
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_bad_settings_are_refused_before_loading_anything(tmp_path, capsys):
    assert main(["zero", "--template", "foo", "--out", str(tmp_path / "r")]) == 2
    assert "r1lab zero: template='foo'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, said", [
    (["zero", "--bogus"], "r1lab zero: unrecognized arguments: --bogus\nusage: r1lab zero [--config FILE]"),
    (["zero", "--lr"], "r1lab zero: argument --lr: expected one argument\nusage: r1lab zero"),
    (["zero", "--lr", "abc"], "r1lab zero: option lr must be float (a number, e.g. 0.5 or 2e-5), got 'abc' (str)\n"),
    (["zero", "--config", "missing.yaml"], "r1lab zero: recipe missing.yaml not found"),
    (["eval", "--template", "foo"], "r1lab eval: template='foo': choose one of r1zero, r1, native, native-zero\n"),
    (["serve", "--template", "foo"], "r1lab serve: template='foo': choose one of r1zero, r1, native, native-zero\n"),
    (["chat", "--template", "foo"], "r1lab chat: template='foo': choose one of"),
    (["sft"], "r1lab sft: give the training data: --data FILE.jsonl"),
])
def test_input_errors_are_a_line_or_two_and_exit_2(argv, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") <= 2 and "Traceback" not in err


def test_missing_model_is_a_clean_error(tmp_path, capsys):
    assert main(["zero", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
