"""``--report-to``: a 2-step ``r1lab zero`` on a tiny model logs to each tracker in its offline/local mode, and the
values read back through the tracker's own reader (TensorBoard's event reader, ``wandb leet inspect`` on W&B's
offline run file, MLflow's client on its local store, trackio's local database) are those of ``metrics.jsonl``,
at the same steps; a resumed run goes on in the same tracker run; a tracker that cannot start is one error before
anything trains."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from r1lab import tracking
from r1lab.cli import main
from r1lab.files import read_log
from r1lab.models import save_checkpoint

from conftest import ctrl_c_in_step, make_model, make_tokenizer, rejection_keeps_something


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path_factory.mktemp("tiny") / "tiny"))


@pytest.fixture(scope="module", autouse=True)
def trackio_dir(tmp_path_factory):
    """trackio reads TRACKIO_DIR once, when it is imported: one folder for the module, set before that."""
    folder = tmp_path_factory.mktemp("trackio")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACKIO_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Every tracker local, in this test's folder; no network, no login, nothing written to the home folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb-{name.lower()}"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns)


def zero(tiny_path, out, tracker, steps=2, extra=()):
    return ["zero", "--model", tiny_path, "--task-args", "{n_train: 30, n_test: 6}", "--template", "native",
            "--rewards", "{format: 0.5, tag_count: 0.5}", "--steps", str(steps), "--prompts-per-step", "2",
            "--group-size", "2", "--max-new-tokens", "6", "--eval-examples", "2", "--eval-max-new-tokens", "4",
            "--warmup-steps", "0", "--threads", "1", "--out", str(out), "--report-to", tracker, *extra]


def expected(run: Path) -> dict[str, dict[int, float]]:
    """What the trackers must hold: every number of every ``metrics.jsonl`` row under its tracker name, at the
    row's step, and the held-out accuracy before (step 0) and after training (the last step)."""
    want = logged_rows(run)
    summary = json.loads((run / "summary.json").read_text())
    want.setdefault("eval/accuracy", {}).update({0: summary["eval_before"]["accuracy"],
                                                 summary["steps"]: summary["eval_after"]["accuracy"]})
    return want


def logged_rows(run: Path) -> dict[str, dict[int, float]]:
    """Every number of every ``metrics.jsonl`` row under its tracker name, at the row's step."""
    want: dict[str, dict[int, float]] = {}
    for row in read_log(run / "metrics.jsonl"):
        for key, value in tracking.scalars(row).items():
            want.setdefault(key, {})[row["step"]] = value
    return want


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """The scalars of the event files in ``folder``, through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def same(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> None:
    missing = sorted(set(want) - set(got))
    assert not missing, f"not logged: {missing}"
    for key, steps in want.items():
        assert sorted(got[key]) == sorted(steps), key
        for step, value in steps.items():
            assert math.isclose(got[key][step], value, rel_tol=1e-6, abs_tol=1e-9), (key, step)


def train_keys(got: dict) -> set:
    return {k for k in got if k.startswith(("train/", "eval/"))}


# ------------------------------------------------------------------------------------------ each tracker
def test_tensorboard_event_files_hold_the_metrics(tiny_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "tensorboard")) == 0
    same(tensorboard_scalars(run), expected(run))
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert {"plots/reward", "plots/length"} <= set(events.Tags()["images"])
    texts = set(events.Tags()["tensors"])  # add_text is stored as a text tensor
    assert {"config/text_summary", "report/text_summary"} <= texts


def read_wandb(run: Path) -> tuple[dict, dict]:
    """The (last) offline run through W&B's own reader of its transaction log (``wandb leet inspect --json``):
    the values per step, and the summary (config, exit code)."""
    log = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))[-1]
    records = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    got: dict[str, dict[int, float]] = {}
    for line in records.splitlines():
        record = json.loads(line)
        if record.get("type") != "history":
            continue
        step = int(record["history"]["step"].get("num", 0))
        for key, value in record["history"]["item"].items():
            if not key.startswith("_") and isinstance(value, (int, float)):
                got.setdefault(key, {})[step] = float(value)
    summary = json.loads(subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(log)],
                                        capture_output=True, text=True, timeout=120, check=True).stdout)
    return got, summary


@pytest.mark.skipif(shutil.which("wandb") is None, reason="wandb is not installed (pip install 'r1lab[tracking]')")
def test_wandb_offline_run_holds_the_metrics_config_and_plots(tiny_path, tmp_path):
    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "wandb", extra=["--run-name", "tiny-zero"])) == 0
    got, summary = read_wandb(run)
    same({k: v for k, v in got.items() if k in train_keys(got)}, expected(run))
    assert summary["exit_code"] == 0 and summary["state"] == "finished" and summary["name"] == "tiny-zero"
    assert summary["config"]["group_size"] == 2 and summary["config"]["report_to"] == ["wandb"]
    assert {"plots/reward", "plots/length"} <= set(summary["summary"])  # the plots, as images
    files = {p.name for p in (run / "wandb").glob("offline-run-*/files/**/*") if p.is_file()}
    assert {"report.md", "summary.json", "config.yaml"} <= files


def test_mlflow_local_store_holds_the_metrics_params_and_artifacts(tiny_path, tmp_path):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "mlflow")) == 0
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(state["tracking_uri"])
    info = client.get_run(state["run_id"])
    got = {key: {m.step: m.value for m in client.get_metric_history(state["run_id"], key)}
           for key in info.data.metrics}
    same(got, {tracking.mlflow_key(k): v for k, v in expected(run).items()})
    assert "train/reward.tag_count" in got  # MLflow's spelling of train/reward/tag_count
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert info.data.params["group_size"] == "2" and info.data.params["rewards.format"] == "0.5"
    artifacts = {a.path for a in client.list_artifacts(state["run_id"])}
    plots = {a.path for a in client.list_artifacts(state["run_id"], "plots")}
    assert {"report.md", "summary.json", "config.yaml"} <= artifacts and "plots/reward.png" in plots


def read_trackio(project: str, name: str) -> dict[str, dict[int, float]]:
    from trackio.sqlite_storage import SQLiteStorage

    got: dict[str, dict[int, float]] = {}
    for row in SQLiteStorage.get_logs(project, name):
        for key, value in row.items():
            if key not in ("step", "timestamp") and isinstance(value, (int, float)):
                got.setdefault(key, {})[row["step"]] = float(value)
    return got


def test_trackio_local_database_holds_the_metrics_and_config(tiny_path, tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "trackio")) == 0
    state = json.loads((run / "trackers.json").read_text())["trackio"]
    assert (trackio_dir / f"{state['project']}.db").is_file()  # the local database, under TRACKIO_DIR
    got = read_trackio(state["project"], state["name"])
    same({k: v for k, v in got.items() if k in train_keys(got)}, expected(run))
    assert SQLiteStorage.get_run_config(state["project"], state["name"])["group_size"] == 2


# ------------------------------------------------------------------------------------ resume, groups, errors
def test_a_resumed_run_goes_on_in_the_same_tracker_runs(tiny_path, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    with ctrl_c_in_step(3, monkeypatch):
        assert main(zero(tiny_path, run, "tensorboard,mlflow,wandb", steps=3, extra=["--save-every", "1"])) == 130
    first = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(first["mlflow"]["tracking_uri"])
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "FAILED"  # cut off, not left running
    if shutil.which("wandb"):
        assert read_wandb(run)[1]["exit_code"] == 1
    assert main(["zero", "--out", str(run), "--resume", "true"]) == 0
    assert json.loads((run / "trackers.json").read_text()) == first  # the same runs, not new ones
    want = expected(run)
    assert sorted(want["train/reward"]) == [1, 2, 3]
    assert len(client.search_runs([client.get_run(first["mlflow"]["run_id"]).info.experiment_id])) == 1
    got = {k: {m.step: m.value for m in client.get_metric_history(first["mlflow"]["run_id"], tracking.mlflow_key(k))}
           for k in want}
    same(got, want)
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "FINISHED"
    same(tensorboard_scalars(run), want)


def test_a_run_on_several_trackers_names_each_in_trackers_json(tiny_path, tmp_path):
    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "tensorboard,mlflow,trackio", extra=["--report-group", "sweep"])) == 0
    state = json.loads((run / "trackers.json").read_text())
    assert set(state) == {"tensorboard", "mlflow", "trackio"}
    other = tmp_path / "elsewhere" / "run"  # a run of the same name: trackio, which resumes by name, gets another
    assert main(zero(tiny_path, other, "trackio")) == 0
    assert json.loads((other / "trackers.json").read_text())["trackio"]["name"] != state["trackio"]["name"]


def test_a_tracker_that_fails_to_start_leaves_the_folder_as_it_was(tiny_path, tmp_path, monkeypatch, capsys):
    from conftest import tiny_sft_run

    model, data = tiny_sft_run(tmp_path)

    def unreachable(self, *args):
        raise ConnectionError("the tracking server went away")

    command = ["sft", "--model", model, "--data", data, "--max-steps", "1", "--threads", "1",
               "--out", str(tmp_path / "sft"), "--report-to", "tensorboard,mlflow"]
    with monkeypatch.context() as m:
        m.setattr(tracking.MLflow, "__init__", unreachable)
        assert main(command) == 2
    err = capsys.readouterr().err
    assert "--report-to mlflow: it could not start a run (ConnectionError" in err and "Traceback" not in err
    assert not (tmp_path / "sft").exists()  # nothing left behind: the same command runs once the server is back
    assert main(command) == 0

    run = tmp_path / "zero"  # a resume that adds a tracker which cannot start keeps trackers.json as it was
    with ctrl_c_in_step(2, monkeypatch):
        assert main(zero(model, run, "tensorboard", steps=2, extra=["--save-every", "1"])) == 130
    before = (run / "trackers.json").read_text()
    with monkeypatch.context() as m:
        m.setattr(tracking.MLflow, "__init__", unreachable)
        assert main(["zero", "--out", str(run), "--resume", "true", "--report-to", "wandb,mlflow"]) == 2
    assert (run / "trackers.json").read_text() == before and not (run / "wandb").exists()


def test_a_tracker_that_cannot_start_is_one_error_before_anything_trains(tiny_path, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no `wandb login` here
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "wandb")) == 2
    err = capsys.readouterr().err
    assert "not logged in to W&B" in err and "WANDB_MODE=offline" in err and "Traceback" not in err
    assert not run.exists()  # refused before anything was written
    monkeypatch.setenv("WANDB_MODE", "OFFLINE")  # W&B takes lower case only
    assert main(zero(tiny_path, run, "wandb")) == 2
    err = capsys.readouterr().err
    assert "--report-to wandb: WANDB_MODE='OFFLINE' is not a mode W&B takes" in err and err.count("\n") == 1
    monkeypatch.delenv("WANDB_MODE")
    assert main(zero(tiny_path, run, "tensorbored")) == 2
    assert "not a tracker" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert main(zero(tiny_path, run, "mlflow")) == 2
    err = capsys.readouterr().err
    assert "tracking server http://127.0.0.1:9 does not answer" in err and "Traceback" not in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    assert main(zero(tiny_path, run, "mlflow")) == 2
    assert "MLFLOW_ALLOW_FILE_STORE=true" in capsys.readouterr().err
    assert not run.exists()


def test_a_tracker_failing_mid_run_is_a_warning_and_the_run_goes_on(tiny_path, tmp_path, monkeypatch, capsys):
    def broken(self, values, step):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(tracking.MLflow, "log", broken)
    run = tmp_path / "run"
    assert main(zero(tiny_path, run, "mlflow,tensorboard")) == 0
    err = capsys.readouterr().err
    assert err.count("mlflow stopped logging") == 1 and "the run goes on" in err
    assert (run / "summary.json").is_file() and len(read_log(run / "metrics.jsonl")) == 2


def test_tracker_names_follow_the_trackers_conventions():
    assert tracking.scalars({"step": 5, "reward": 0.25, "eval_accuracy": 0.5, "memory/peak_mb": 10}) == {
        "train/reward": 0.25, "eval/accuracy": 0.5, "train/memory/peak_mb": 10.0}
    assert tracking.mlflow_key("eval/math500/pass@1") == "eval/math500.pass_at_1"


# ------------------------------------------------------------------------------ the other commands that log
def test_sft_rm_and_eval_log_what_they_write(tmp_path):
    from conftest import tiny_sft_run

    model, data = tiny_sft_run(tmp_path)
    sft = tmp_path / "sft"
    assert main(["sft", "--model", model, "--data", data, "--max-steps", "3", "--tokens-per-step", "64",
                 "--eval-size", "4", "--threads", "1", "--out", str(sft), "--report-to", "tensorboard"]) == 0
    want = logged_rows(sft)
    want["eval/loss"][0] = json.loads((sft / "summary.json").read_text())["eval_loss_before"]
    same(tensorboard_scalars(sft), want)

    rm = tmp_path / "rm"
    assert main(["rm", "--model", model, "--data", "helpful-procedural", "--limit", "12", "--test-size", "4",
                 "--max-length", "48", "--batch-size", "4", "--threads", "1", "--out", str(rm),
                 "--report-to", "tensorboard"]) == 0
    same(tensorboard_scalars(rm), logged_rows(rm))
    assert "eval/accuracy" in logged_rows(rm)

    ev = tmp_path / "eval"
    assert main(["eval", "--model", model, "--benchmarks", "task:arithmetic", "--limit", "3", "--k", "2",
                 "--max-new-tokens", "6", "--threads", "1", "--out", str(ev), "--report-to", "tensorboard"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    pass1 = summary["benchmarks"]["task:arithmetic"]["metrics"]["pass@1"]
    got = tensorboard_scalars(ev)
    assert got["eval/task:arithmetic/pass@1"] == {0: pytest.approx(pass1["value"])}
    assert got["eval/task:arithmetic/pass@1/ci_high"] == {0: pytest.approx(pass1["ci_high"])}


@pytest.fixture
def keeps_something(monkeypatch):
    rejection_keeps_something(monkeypatch)


def test_each_pipeline_stage_is_its_own_run_in_the_pipelines_group(tiny_path, tmp_path, keeps_something):
    import yaml
    from mlflow import MlflowClient

    out = tmp_path / "r1"
    recipe = {
        "model": tiny_path, "task": "arithmetic", "task_args": {"n_train": 30, "n_test": 6}, "template": "native",
        "coldstart": {"examples": 12}, "sft": {"epochs": 1, "max_steps": 2, "eval_size": 0},
        "reasoning_rl": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "warmup_steps": 0},
        "rejection": {"limit": 6, "n": 2, "max_new_tokens": 6, "drop_truncated": False, "min_language_share": 0,
                      "max_paragraph_chars": 0, "near_duplicate": 1.0},
        "rejection_sft": {"epochs": 1, "max_steps": 2, "eval_size": 0},
        "rl_all": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "warmup_steps": 0},
        "eval": {"limit": 2, "k": 1, "max_new_tokens": 6},
        "rm_helpful": {"data": "helpful-procedural", "limit": 12, "test_size": 4, "max_length": 48, "batch_size": 4},
        "rm_harmless": {"data": "harmless-sample", "limit": 12, "test_size": 4, "max_length": 48, "batch_size": 4},
        "general_eval_prompts": 2, "threads": 1, "out": str(out), "report_to": ["mlflow"]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["pipeline", "--config", str(tmp_path / "recipe.yaml")]) == 0
    state = json.loads((out / "2-reasoning-rl" / "zero" / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs([client.get_run(state["run_id"]).info.experiment_id],
                              filter_string="tags.`r1lab.group` = 'r1'")
    names = {r.info.run_name for r in runs}
    assert {"r1/1-coldstart/sft", "r1/2-reasoning-rl/zero", "r1/3-rejection-sft/sft", "r1/4-rl-all/zero",
            "r1/rm/helpful", "r1/rm/harmless", "r1/2-reasoning-rl/eval/reasoning"} <= names
    assert all(r.info.status == "FINISHED" for r in runs)
