"""A short SFT run is one flag away (max_steps, limit), and the run folder's JSON stays JSON without a held-out set."""

import json

import pytest

from r1lab.config import SftConfig
from r1lab.sft.trainer import train_sft

from conftest import tiny_sft_run


def strict_json(text: str):
    """Parse as a strict parser would: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def setup(tmp_path):
    model_path, data = tiny_sft_run(tmp_path)
    return lambda **kw: SftConfig(**{"model": model_path, "data": data, "template": "native",
                                     "warmup_steps": 0, "tokens_per_step": 200, "row_tokens": 120,
                                     "out": str(tmp_path / "run"), "threads": 1, **kw})


def test_max_steps_stops_early_with_the_schedule_sized_to_it(setup, tmp_path):
    cfg = setup(epochs=3, max_steps=2, lr=1e-3, eval_size=4)
    summary = train_sft(cfg, progress=False)
    records = [strict_json(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [r["step"] for r in records] == [1, 2]
    assert records[-1]["lr"] == pytest.approx(0.1 * cfg.lr)  # the cosine schedule ended at its floor
    assert "eval_loss" in records[-1] and summary["eval_loss_after"] is not None  # always measured at the end
    assert (tmp_path / "run" / "final" / "r1lab_complete.json").is_file()


def test_limit_uses_only_the_first_samples(setup):
    summary = train_sft(setup(epochs=1, limit=10, eval_size=2), progress=False)
    assert summary["samples"] + summary["held_out"] == 10


def test_no_held_out_set_is_null_in_the_summary_not_nan(setup, tmp_path):
    summary = train_sft(setup(epochs=1, eval_size=0.01), progress=False)  # 0.01 * 40 rounds to 0
    assert summary["held_out"] == 0 and summary["eval_loss_before"] is None and summary["eval_loss_after"] is None
    written = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert written["eval_loss_before"] is None and written["eval_loss_after"] is None
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert "eval_loss" not in strict_json(line)
    assert "No held-out set" in (tmp_path / "run" / "report.md").read_text()


def test_eval_every_that_misses_the_last_step_still_reports_a_final_loss(setup, tmp_path):
    summary = train_sft(setup(epochs=1, eval_every=100, eval_size=4), progress=False)
    strict_json((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval_loss_after"] is not None


def test_sft_never_writes_over_an_interrupted_run_or_another_commands_folder(tmp_path):
    import pytest

    from r1lab.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "response": "<think>\\none and one\\n</think>\\n\\n2"}\n' * 4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("# r1lab sft\nmodel: x\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert main(["sft", "--data", str(data), "--out", str(run)]) == 2
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'  # not truncated
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "config.yaml").write_text("# r1lab zero\nsteps: 3\n")
    with pytest.raises(ValueError, match="holds an `r1lab zero` run"):
        from r1lab.config import SftConfig
        from r1lab.sft.trainer import train_sft

        train_sft(SftConfig(data=str(data), out=str(tmp_path / "zero")), progress=False)
