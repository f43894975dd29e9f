"""What a user types at the command line: help that explains every option, bare boolean flags, one-line errors
for bad YAML and mistyped model paths."""

import dataclasses

import pytest

from r1lab import config, options
from r1lab.cli import main

CONFIGS = [config.ZeroConfig, config.EvalConfig, config.SftConfig, config.ColdstartConfig, config.SampleConfig,
           config.DistillConfig, config.ServeConfig, config.ChatConfig, config.RmConfig, config.ExportConfig,
           config.PipelineConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_option_is_explained_in_help(cls, capsys):
    with pytest.raises(SystemExit):
        options.parse_values(cls, ["--help"], prog="r1lab x")
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for f in dataclasses.fields(cls):
        explanation = options.option_help(cls)[f.name]
        assert len(explanation) > 8, f"{cls.__name__}.{f.name} has no help"
        assert "".join(explanation.split()) in text


def test_help_lists_allowed_values_and_eval_help_shows_compare(capsys):
    with pytest.raises(SystemExit):
        main(["zero", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "grpo | drgrpo | rloo | batch_std" in out and "cosine | linear | constant" in out and "native-zero" in out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--compare RUN_A RUN_B" in capsys.readouterr().out


def test_a_bare_boolean_flag_means_true():
    assert options.load_config(config.EvalConfig, ["--greedy"]).greedy is True
    assert options.load_config(config.EvalConfig, ["--greedy", "--limit", "3"]).limit == 3
    assert options.load_config(config.EvalConfig, ["--greedy", "false"]).greedy is False


def test_bad_yaml_is_one_clear_line(capsys):
    assert main(["zero", "--task-args", "{digits: 2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--task-args" in err and "{digits: 2}" in err


@pytest.mark.parametrize("command", ["serve", "chat", "eval"])
def test_a_mistyped_relative_model_path_says_no_such_folder(command, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "zero" / "final").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # eval: a task benchmark, which needs no data, so the model is what fails (gsm8k needs ../shared or the hub)
    bench = ["--benchmarks", "task:arithmetic"]
    args = [command, "runs/zero/fina"] if command != "eval" else [command, "--model", "runs/zero/fina", *bench]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "runs/zero/fina does not exist" in err and "runs/zero/final" in err and "Traceback" not in err
    assert main([command, "runs/nonexistent"] if command != "eval" else [command, "--model", "runs/nonexistent", *bench]) == 2
    assert "runs/nonexistent does not exist" in capsys.readouterr().err


def test_numbers_and_lists_are_read_as_a_user_writes_them():
    assert options.load_config(config.ZeroConfig, ["--lr", "1e-5"]).lr == 1e-5  # YAML 1.1 alone reads a string
    assert config.make_config(config.ZeroConfig, {"lr": "3e-6"}).lr == 3e-6  # in a recipe too
    assert options.load_config(config.EvalConfig, ["--benchmarks", "gsm8k"]).benchmarks == ["gsm8k"]
    with pytest.raises(ValueError, match="lr must be float"):
        options.load_config(config.ZeroConfig, ["--lr", "fast"])


def test_a_file_or_a_run_folder_given_as_the_model_says_what_it_is(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert main(["chat", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a model" in capsys.readouterr().err
    assert main(["chat", str(tmp_path / "run")]) == 2
    assert f"its trained model is {tmp_path / 'run' / 'final'}" in capsys.readouterr().err


def test_ctrl_c_in_a_command_called_from_python_leaves_the_callers_signal_handling_alone(monkeypatch, capsys):
    import signal

    import r1lab.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "zero", interrupted)
    before = signal.getsignal(signal.SIGINT)
    assert main(["zero"]) == 130 and "--resume true" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_the_documented_install_brings_what_documented_commands_import():
    """`pip install -e .` (no extras) must carry distill's client and the Parquet/hub benchmark readers."""
    import re
    from importlib.metadata import requires

    core = {re.split(r"[\[<>=! ;]", r)[0].lower() for r in requires("r1lab") if "extra ==" not in r}
    assert {"openai", "datasets", "fastapi", "uvicorn", "math-verify"} <= core
