import pytest

from r1lab.cli import main


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "zero" in capsys.readouterr().out
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_bad_settings_are_refused_before_loading_anything(tmp_path):
    with pytest.raises(SystemExit, match="template='foo'"):
        main(["zero", "--template", "foo", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_missing_model_is_a_clean_error(tmp_path, capsys):
    assert main(["zero", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
