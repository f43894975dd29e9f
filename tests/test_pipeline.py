"""`r1lab pipeline` on a tiny random model: every stage runs and leaves its folder, a rerun skips finished stages,
an interrupted stage resumes without redoing the ones before it, and a changed stage reruns with those after it."""

import hashlib
import json

import pytest
import yaml

import r1lab.pipeline as pipeline
import r1lab.rl.grpo as grpo
from r1lab.cli import main
from r1lab.config import PipelineConfig, read_recipe
from r1lab.models import save_checkpoint
from r1lab.tasks import ArithmeticTask, register_task

from conftest import make_model, make_tokenizer, rejection_keeps_something


@register_task("lenient_arithmetic")
class LenientArithmetic(ArithmeticTask):
    """Arithmetic whose verifier passes every finished reply, so a random model's samples survive rejection
    sampling and every stage has data."""

    def verify(self, completion, **example):
        return 1.0


def recipe(model: str, out, **changes) -> dict:
    values = {
        "model": model, "task": "lenient_arithmetic", "task_args": {"n_train": 30, "n_test": 6}, "template": "native",
        "coldstart": {"examples": 12}, "sft": {"epochs": 1, "max_steps": 2, "eval_size": 0},
        "reasoning_rl": {"steps": 3, "save_every": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6,
                         "warmup_steps": 0},
        "rejection": {"limit": 6, "n": 2, "max_new_tokens": 6, "drop_truncated": False, "min_language_share": 0,
                      "max_paragraph_chars": 0, "near_duplicate": 1.0},
        "rejection_sft": {"epochs": 1, "max_steps": 2, "eval_size": 0},
        "rl_all": {"steps": 2, "save_every": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6,
                   "warmup_steps": 0},
        "eval": {"limit": 3, "k": 1, "max_new_tokens": 6},
        "rm_helpful": {"data": "helpful-procedural", "limit": 12, "test_size": 4, "max_length": 48, "batch_size": 4},
        "rm_harmless": {"data": "harmless-sample", "limit": 12, "test_size": 4, "max_length": 48, "batch_size": 4},
        "general_eval_prompts": 3, "threads": 1, "out": str(out)}
    values.update(changes)
    return values


def run(tmp_path, values) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return main(["pipeline", "--config", str(path)])


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def keeps_something(monkeypatch):
    rejection_keeps_something(monkeypatch)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path_factory.mktemp("model") / "tiny"))


def test_the_default_is_the_shipped_recipe():
    shipped = read_recipe("recipes/r1-mini.yaml", PipelineConfig)
    assert shipped == {k: v for k, v in PipelineConfig().__dict__.items()}


def test_the_chain_runs_resumes_and_reruns_only_what_changed(tiny_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r1"
    values = recipe(tiny_model, out)

    # killed in stage 2 (at its second update), after stage 1 finished
    real_update, calls = grpo.update_policy, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(grpo, "update_policy", interrupted)
    assert run(tmp_path, values) == 130
    monkeypatch.setattr(grpo, "update_policy", real_update)
    assert (out / "1-coldstart" / "stage.json").is_file() and not (out / "2-reasoning-rl" / "stage.json").exists()
    stage1 = snapshot(out / "1-coldstart")
    rms = snapshot(out / "rm")

    capsys.readouterr()
    assert run(tmp_path, values) == 0
    said = capsys.readouterr().out
    assert "1-coldstart: finished before, skipped" in said and "2-reasoning-rl: interrupted before; resuming" in said
    assert snapshot(out / "1-coldstart") == stage1 and snapshot(out / "rm") == rms  # not redone
    steps = [json.loads(line)["step"] for line in (out / "2-reasoning-rl/zero/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed from step 1's checkpoint: no step lost or logged twice

    summary = json.loads((out / "pipeline.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["0-base", "1-coldstart", "2-reasoning-rl", "3-rejection-sft",
                                                       "4-rl-all"]
    assert summary["final_checkpoint"].endswith("4-rl-all/zero/final")
    for stage in summary["stages"]:
        assert {"accuracy", "format_rate", "language_consistency", "mean_tokens", "rm_helpful",
                "harmless_pass"} <= set(stage["eval"])
    report = (out / "report.md").read_text()
    assert report.count("\n| ") == 6 and (out / "plots" / "stages.png").stat().st_size > 0
    lineage = json.loads((out / "3-rejection-sft" / "stage.json").read_text())["lineage"]
    assert lineage["parent_checkpoint"].endswith("2-reasoning-rl/zero/final") and lineage["data_sha256"]
    # stage 3 trains the base model, not stage 2's: its SFT starts from the recipe's model
    assert yaml.safe_load((out / "3-rejection-sft/sft/config.yaml").read_text())["model"] == tiny_model
    stage4_rewards = yaml.safe_load((out / "4-rl-all/zero/config.yaml").read_text())["rewards"]
    assert stage4_rewards["helpful"]["part"] == "summary" and stage4_rewards["harmless"]["part"] == "whole"

    # a rerun with nothing changed does nothing
    before = snapshot(out)
    assert run(tmp_path, values) == 0
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "pipeline.yaml"} == \
        {k: v for k, v in before.items() if k != "pipeline.yaml"}

    # stage 2's final model deleted after the run finished: the stage trains again (the lost run kept aside); it
    # comes out the same (fixed seed, fp32), so stages 3-4 stand
    import shutil
    shutil.rmtree(out / "2-reasoning-rl" / "zero" / "final")
    capsys.readouterr()
    assert run(tmp_path, values) == 0
    said = capsys.readouterr().out
    assert "2-reasoning-rl: its checkpoint" in said and "missing or incomplete" in said
    assert (out / "2-reasoning-rl" / "zero" / "final" / "model.safetensors").is_file()
    assert (out / "2-reasoning-rl" / "zero.incomplete-1" / "summary.json").is_file()
    assert "3-rejection-sft: finished before, skipped" in said and "4-rl-all: finished before, skipped" in said
    assert (out / "2-reasoning-rl" / "eval.checkpoint-missing-1").is_dir()  # it judged the lost weights: redone
    assert (out / "2-reasoning-rl" / "eval" / "settings.json").is_file()
    weights = [out / "2-reasoning-rl" / zero / "checkpoints" / "step-000003" / "model.safetensors"
               for zero in ("zero", "zero.incomplete-1")]
    assert weights[0].read_bytes() == weights[1].read_bytes()

    # a changed stage-3 setting reruns stages 3 and 4 only; the old ones are kept aside
    changed = recipe(tiny_model, out, rejection={**values["rejection"], "n": 3})
    capsys.readouterr()
    assert run(tmp_path, changed) == 0
    said = capsys.readouterr().out
    for stage in ("0-base", "1-coldstart", "2-reasoning-rl"):
        assert f"{stage}: finished before, skipped" in said
    assert "3-rejection-sft: its settings changed (sample.n)" in said
    assert "4-rl-all: an earlier stage changed" in said
    assert snapshot(out / "1-coldstart") == stage1
    assert (out / "replaced" / "3-rejection-sft.replaced-1" / "stage.json").is_file()
    assert (out / "replaced" / "4-rl-all.replaced-1" / "stage.json").is_file()
    assert yaml.safe_load((out / "3-rejection-sft/sample/config.yaml").read_text())["n"] == 3
    assert "n: 2" in (out / "pipeline.yaml.previous-1").read_text()  # the recipe the run was made with, kept

    # a changed evaluation reruns the evaluations only: every stage's training is kept as it was
    trained = {k: v for k, v in snapshot(out).items() if "/eval/" not in k and not k.endswith("stage.json")}
    capsys.readouterr()
    assert run(tmp_path, {**changed, "eval": {**values["eval"], "limit": 2}}) == 0
    assert capsys.readouterr().out.count("only the evaluation changed") == 5
    assert all(snapshot(out).get(k) == v for k, v in trained.items() if not k.startswith(("pipeline", "report",
                                                                                           "plots")))
    assert json.loads((out / "4-rl-all" / "stage.json").read_text())["eval"]["n"] == 2


def test_bad_recipes_are_refused_before_anything_runs(tiny_model, tmp_path, capsys):
    out = tmp_path / "r1"
    assert run(tmp_path, recipe(tiny_model, out, sft={"epochz": 1})) == 2
    assert "sft: unknown option 'epochz'" in capsys.readouterr().err  # names the recipe's block
    assert run(tmp_path, recipe(tiny_model, out, eval={"limt": 3})) == 2  # refused now, not after the RMs trained
    assert "eval:" in capsys.readouterr().err
    (tmp_path / "nr.jsonl").write_text('{"prompt": "hi"}\n')
    assert run(tmp_path, recipe(tiny_model, out, non_reasoning=str(tmp_path / "nr.jsonl"))) == 2
    assert "non_reasoning:" in capsys.readouterr().err and "response" in capsys.readouterr().err + "response"
    assert run(tmp_path, recipe(tiny_model, out, rl_all={"out": "elsewhere"})) == 2
    assert "'out' is set by the pipeline" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    assert run(tmp_path, recipe(tiny_model, tmp_path / "notes")) == 2
    assert "no pipeline.yaml" in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "mine"


def fingerprints(values) -> dict:
    """Every stage's fingerprint for a recipe, as run_pipeline chains them (weights digests left out)."""
    cfg = PipelineConfig(**{k: v for k, v in values.items()})
    prints, parent = {}, ""
    for stage in pipeline.plan(cfg):
        parent = prints[stage.folder] = pipeline._fingerprint(stage, parent, "")
    return prints


def test_what_a_stage_makes_is_fingerprinted_and_where_the_run_lies_is_not(tiny_model, tmp_path, monkeypatch):
    base = recipe(tiny_model, "runs/r1")
    monkeypatch.chdir(tmp_path)
    prints = fingerprints(base)
    assert fingerprints({**base, "out": str(tmp_path / "runs" / "r1")}) == prints  # relative or absolute --out
    assert fingerprints({**base, "out": "moved/elsewhere"}) == prints  # a moved run
    other_model = fingerprints({**base, "model": tiny_model + "/."})
    assert all(other_model[s] != prints[s] for s in prints)  # another base model: every stage
    other_dtype = fingerprints({**base, "dtype": "bf16"})
    assert all(other_dtype[s] != prints[s] for s in prints)
    (tmp_path / "nr.jsonl").write_text('{"prompt": "hi", "response": "Hello!"}\n')
    mine = fingerprints({**base, "non_reasoning": str(tmp_path / "nr.jsonl")})
    assert [s for s in prints if mine[s] != prints[s]] == ["3-rejection-sft", "4-rl-all"]


def test_every_stage_that_generates_samples_with_the_recipes_engine_unless_its_block_names_one(tiny_model, tmp_path,
                                                                                             monkeypatch):
    checked = []  # every command that generates has its engine checked before anything runs (vLLM's import)
    monkeypatch.setattr(pipeline, "check_engine", lambda name, args, *template: checked.append((name, args)))
    cfg = PipelineConfig(engine="vllm", engine_args={"enforce_eager": True}, rl_all={"engine": "torch"})
    stages = {s.folder: s for s in pipeline.plan(cfg)}
    # a block that names its own engine does not take the recipe's engine_args (they are another engine's)
    assert sorted(checked, key=str) == sorted([("vllm", {"enforce_eager": True})] * 4 + [("torch", {})], key=str)
    made = {(folder, name): getattr(c, "engine", None) for folder, s in stages.items() for name, c in s.commands.items()}
    assert made == {("1-coldstart", "coldstart"): "vllm", ("1-coldstart", "sft"): None, ("2-reasoning-rl", "zero"): "vllm",
                    ("3-rejection-sft", "sample"): "vllm", ("3-rejection-sft", "sft"): None, ("4-rl-all", "zero"): "torch"}
    assert stages["2-reasoning-rl"].commands["zero"].engine_args == {"enforce_eager": True}
    assert pipeline._eval_settings(cfg)["engine"] == "vllm"
    with pytest.raises(ValueError, match=r"engine='openai': this command runs the model here"):
        PipelineConfig(engine="openai").validate()
    base = recipe(tiny_model, "runs/r1")  # switching engines does not redo finished stages
    monkeypatch.chdir(tmp_path)
    assert fingerprints({**base, "engine": "vllm", "engine_args": {"max_model_len": 512}}) == fingerprints(base)


def test_an_endpoint_only_where_a_stage_may_sample_an_outside_model_and_each_block_is_checked_as_it_runs():
    url = "http://127.0.0.1:9/v1"
    # cold-start traces from an outside model's API: checked with the endpoint's address
    cfg = PipelineConfig(coldstart={"source": "model", "model": "deepseek-reasoner", "engine": "openai",
                                    "base_url": url})
    coldstart = pipeline.plan(cfg)[1].commands["coldstart"]
    assert (coldstart.engine, coldstart.base_url) == ("openai", url)
    # the stages that sample the pipeline's own checkpoints refuse an endpoint, naming what to drop
    for block in ("rejection", "eval"):
        with pytest.raises(ValueError, match=r"samples from an endpoint, but this stage samples from the pipeline's "
                                             r"own checkpoint.*drop engine: openai"):
            pipeline.plan(PipelineConfig(**{block: {"engine": "openai", "base_url": url}}))
    with pytest.raises(ValueError, match=r"5-distill \(distill\): engine openai samples from an endpoint"):
        pipeline.plan(PipelineConfig(distill={"student": "smollm2-135m", "base_url": url}))
    # an eval block naming its own engine does not take the recipe's engine_args, and its options are checked
    cfg = PipelineConfig(engine="torch", engine_args={"max_batch": 8}, eval={"engine": "openai"})
    assert "engine_args" not in {k for k, v in pipeline._eval_settings(cfg).items() if v}
    with pytest.raises(ValueError, match=r"eval: .*max_rows"):
        pipeline.plan(PipelineConfig(eval={"engine_args": {"max_rows": "many"}}))


def test_a_block_given_keeps_the_defaults_it_does_not_name():
    cfg = PipelineConfig(rl_all={"steps": 40}, rm_helpful={"limit": 64}, rejection={"limit": 32})
    stages = {s.folder: s for s in pipeline.plan(cfg)}
    rl_all = stages["4-rl-all"].commands["zero"]
    assert (rl_all.steps, rl_all.lr, rl_all.max_new_tokens, rl_all.save_every) == (40, 1e-5, 96, 4)
    assert stages["3-rejection-sft"].commands["sample"].max_new_tokens == 128
    helpful = pipeline.reward_models(cfg)["helpful"]
    assert (helpful.data, helpful.limit, helpful.max_length) == ("helpful-procedural", 64, 96)


def test_a_second_pipeline_on_the_same_folder_is_refused(tiny_model, tmp_path, capsys):
    import fcntl

    out = tmp_path / "r1"
    out.mkdir()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run(tmp_path, recipe(tiny_model, out)) == 2
    assert "another r1lab pipeline is running" in capsys.readouterr().err
    assert not (out / "pipeline.yaml").exists()


def test_a_torn_or_odd_marker_reads_as_none(tmp_path):
    for text in ("[1]", "5", '{"fingerprint": ', ""):
        (tmp_path / "stage.json").write_text(text)
        assert pipeline._read_json(tmp_path / "stage.json") is None
