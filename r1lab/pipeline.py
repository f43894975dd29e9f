"""``r1lab pipeline``: DeepSeek-R1 (not R1-Zero) as one resumable recipe, each stage a folder of its own.

The chain (paper section 2.3), each stage an r1lab command run with settings derived from the recipe::

    rm/helpful, rm/harmless   reward models for stage 4 (r1lab rm), unless the recipe names trained ones
    0-base                    the starting model, evaluated
    1-coldstart               cold-start data (r1lab coldstart), then SFT of the base model (r1lab sft)
    2-reasoning-rl            GRPO from stage 1: accuracy + format + language consistency (r1lab zero)
    3-rejection-sft           rejection sampling from stage 2 (r1lab sample: R1's filters, decontamination) plus
                              non-reasoning data, then SFT of the *base* model on that set, as the paper does
    4-rl-all                  GRPO from stage 3 over reasoning and general prompts (task ``mix``): rule rewards on
                              reasoning prompts, reward models on general ones (helpfulness on the summary,
                              harmlessness on the whole response)
    5-distill                 optional: the final model's verified traces, SFT of a smaller student (r1lab distill)

After every stage the same evaluation runs (:func:`evaluate_stage`): ``r1lab eval`` on the recipe's benchmarks with
a fixed seed, and one reply per general prompt scored by the reward models. ``report.md`` at the top holds one row
per stage and the stages' curves side by side; ``pipeline.json`` names the final checkpoint.

Resuming. A stage is finished when its ``stage.json`` is written (last, after its evaluation). Each stage has a
fingerprint: a hash of the settings of the commands it runs and of the fingerprint of the stage before it (and,
for stage 4 and the evaluations, of the reward models). A rerun skips a finished stage whose fingerprint is
unchanged, resumes an interrupted one (GRPO from its last checkpoint, eval and sampling from their finished
batches; an SFT cut off mid-way starts again), and reruns a stage whose settings changed together with every
stage after it, saying which settings changed. Nothing is deleted: replaced stage folders move to ``replaced/``.

Left out next to the paper: the paper's stage-3 set mixes ~600k reasoning and ~200k non-reasoning samples from
DeepSeek-V3's own SFT data; here the non-reasoning part is what the recipe gives (by default the helpful replies of
the general prompts). Stage 4's "diverse prompt distribution" is the mix of the recipe's reasoning task and the
``general`` task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1lab import __version__, tracking
from r1lab.config import (
    ColdstartConfig,
    DistillConfig,
    EvalConfig,
    PipelineConfig,
    RmConfig,
    SampleConfig,
    SftConfig,
    ZeroConfig,
    engine_choice,
    make_config,
    save_config,
)
from r1lab.console import say
from r1lab.engine import SamplingParams, check_engine, engine_kind, open_engine
from r1lab.evaluate.report import folder_name
from r1lab.evaluate.runner import run_eval
from r1lab.files import read_log, write_atomic, write_json, write_jsonl
from r1lab.models import is_complete_checkpoint
from r1lab.plots import plt, running_mean, save_figure
from r1lab.rewards.build import build_rewards
from r1lab.rewards.format import format_reward
from r1lab.rewards.language import language_consistency
from r1lab.rl.grpo import train
from r1lab.rm.train import train_rm
from r1lab.rollout import generate_groups, score_group
from r1lab.sft.coldstart import write_coldstart
from r1lab.sft.distill import run_distill, teacher_engine
from r1lab.sft.sample import run_sample
from r1lab.sft.trainer import train_sft
from r1lab.tasks import build_task, task_args_for
from r1lab.tasks.dataset import read_jsonl
from r1lab.tasks.general import helpful_requests

#: settings that do not change what a stage computes, left out of its fingerprint
LOCK = ".lock"  #: held by the pipeline running in a folder
#: settings that do not change what a stage makes (paths inside the run are fingerprinted relative to it)
#: the engine is how samples are drawn, like the device: switching engines does not redo finished stages
NOT_FINGERPRINTED = ("out", "threads", "nproc", "resume", "device", "engine", "engine_args", "report_to", "run_name",
                     "report_group")


@dataclass
class Stage:
    """One stage of the chain: its folder, what it runs, and where its checkpoint lands."""

    folder: str
    title: str
    commands: dict  # name -> the command's config (a dataclass), in the order they run
    checkpoint: str  # the stage's model, relative to its folder ("" for 0-base: the model itself)
    run: str = ""  # the pipeline's folder (paths under it are fingerprinted relative to it)
    inputs: dict = dataclasses.field(default_factory=dict)  # what else the stage's output depends on


# ------------------------------------------------------------------------------------------- the recipe
def plan(cfg: PipelineConfig) -> list[Stage]:
    """The stages ``cfg`` asks for, each with its commands' configs (paths inside ``cfg.out``)."""
    run = Path(cfg.out)
    base = _shared(cfg)
    _check_inputs(cfg, run)
    stages = [Stage("0-base", "the base model", {}, "", inputs={"model": cfg.model, "dtype": cfg.dtype})]

    s1 = run / "1-coldstart"
    coldstart = _make(ColdstartConfig, {"task": cfg.task, "task_args": cfg.task_args, "language": cfg.language,
                                        "seed": cfg.seed, "device": cfg.device, "dtype": cfg.dtype,
                                        "engine": cfg.engine, "engine_args": cfg.engine_args,
                                        "model": cfg.model}, _block(cfg, "coldstart"), key="coldstart",
                      out=s1 / "coldstart.jsonl")
    sft1 = _make(SftConfig, {**base, "model": cfg.model, "data": str(s1 / "coldstart.jsonl")}, _block(cfg, "sft"),
                 key="sft", out=s1 / "sft")
    stages.append(Stage(s1.name, "cold start: data, then SFT of the base model",
                        {"coldstart": coldstart, "sft": sft1}, "sft/final"))

    s2 = run / "2-reasoning-rl"
    rl = _make(ZeroConfig, {**base, "model": str(s1 / "sft" / "final"), "task": cfg.task, "task_args": cfg.task_args,
                            "language": cfg.language, "eval_examples": 0,
                            "rewards": {"accuracy": 1.0, "format": 0.5, "language_consistency": 0.1}},
               _block(cfg, "reasoning_rl"), key="reasoning_rl", out=s2 / "zero")
    stages.append(Stage(s2.name, "reasoning RL (accuracy + format + language consistency)", {"zero": rl},
                        "zero/final"))

    s3 = run / "3-rejection-sft"
    sample = _make(SampleConfig, {**base, "model": str(s2 / "zero" / "final"), "task": cfg.task,
                                  "task_args": cfg.task_args, "language": cfg.language,
                                  "non_reasoning": str(s3 / "non_reasoning.jsonl"), "non_reasoning_share": 0.25},
                   _block(cfg, "rejection"), key="rejection", out=s3 / "sample")
    sft3 = _make(SftConfig, {**base, "model": cfg.model, "data": str(s3 / "sample" / "sft.jsonl")},
                 _block(cfg, "rejection_sft"), key="rejection_sft", out=s3 / "sft")
    non_reasoning = _file_digest(Path(cfg.non_reasoning)) if cfg.non_reasoning else "general task, seed + 1"
    stages.append(Stage(s3.name, "rejection sampling + non-reasoning data, then SFT of the base model",
                        {"sample": sample, "sft": sft3}, "sft/final", inputs={"non_reasoning": non_reasoning}))

    s4 = run / "4-rl-all"
    mix = {"tasks": {cfg.task: {"share": 1, **(cfg.task_args or _default_args(cfg.task))},
                     "general": {"share": cfg.general_share}}}
    rl_all = _make(ZeroConfig, {**base, "model": str(s3 / "sft" / "final"), "task": "mix", "task_args": mix,
                                "language": cfg.language, "eval_examples": 0,
                                "rewards": {"accuracy": 1.0, "format": 0.5, "language_consistency": 0.1,
                                            **reward_model_rewards(cfg)}},
                   _block(cfg, "rl_all"), key="rl_all", out=s4 / "zero")
    stages.append(Stage(s4.name, "RL over all scenarios (rule rewards + reward models)", {"zero": rl_all},
                        "zero/final"))

    if cfg.distill:
        s5 = run / "5-distill"
        distill = _make(DistillConfig, {**base, "teacher": str(s4 / "zero" / "final"), "task": cfg.task,
                                        "task_args": cfg.task_args}, _block(cfg, "distill"), key="distill", out=s5)
        if not distill.student:
            raise ValueError("distill: name the student model, e.g. distill: {student: smollm2-135m}")
        stages.append(Stage(s5.name, "distillation into a smaller student", {"distill": distill}, "student/final"))
    for stage in stages:
        stage.run = str(run)
        stage.commands = {name: _tracked(cfg, command) for name, command in stage.commands.items()}
        for name, command in stage.commands.items():  # engines and their options, before anything runs
            if hasattr(command, "engine"):
                try:
                    _check_stage_engine(name, command)
                except ValueError as e:
                    raise ValueError(f"{stage.folder} ({name}): {e}") from None
    return stages


#: the one command of a pipeline that may sample from an endpoint: cold-start traces of an outside model (say
#: DeepSeek-R1 through its API); every other stage samples from a checkpoint the pipeline made
ENDPOINT_STAGES = ("coldstart",)


def _check_stage_engine(name: str, command) -> None:
    """A stage's engine and its options (with an endpoint's address, :func:`r1lab.config.engine_choice`), checked
    against the stage's template; an endpoint only where the stage's model may be an outside one."""
    engine, args = engine_choice(command)
    if not engine_kind(engine).local and name not in ENDPOINT_STAGES:
        raise ValueError(f"engine {engine} samples from an endpoint, but this stage samples from the pipeline's own "
                         f"checkpoint ({getattr(command, 'teacher', None) or getattr(command, 'model', '')}): drop "
                         f"engine: {engine} and base_url from its block (only coldstart: {{source: model}} may ask an "
                         "endpoint)")
    if isinstance(command, DistillConfig):
        teacher_engine(command)
    elif isinstance(command, ColdstartConfig):  # prompts a model in its own chat template
        check_engine(engine, args, "native")
    else:
        check_engine(engine, args, getattr(command, "template", None), getattr(command, "prefill", None))


def _block(cfg: PipelineConfig, name: str) -> dict:
    """A stage's command options: the recipe's block merged over the default block, so ``--rl-all '{steps: 40}'``
    changes the steps and keeps the default learning rate (a block naming a ``checkpoint`` stands alone)."""
    given = dict(getattr(cfg, name) or {})
    if "checkpoint" in given:
        return given
    default = PipelineConfig.__dataclass_fields__[name].default_factory()
    return {**default, **given}


def _check_inputs(cfg: PipelineConfig, run: Path) -> None:
    """What ``plan`` can check before anything runs besides the commands' own settings: the evaluation's options
    and the non-reasoning file."""
    try:
        _check_stage_engine("eval", make_config(EvalConfig, {**_eval_settings(cfg), "model": cfg.model,
                                                             "out": str(run / "eval-check")}))
    except ValueError as e:
        raise ValueError(f"eval: {e}") from None
    if cfg.non_reasoning:
        try:
            rows = read_jsonl(cfg.non_reasoning)
        except OSError as e:
            raise ValueError(f"non_reasoning: cannot read {cfg.non_reasoning} ({e.strerror or e}); give a JSONL file "
                             "of {prompt, response} rows") from None
        bad = [n for n, r in rows if not (isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str))]
        if bad or not rows:
            raise ValueError(f"non_reasoning: {cfg.non_reasoning}" + (f":{bad[0]} needs string fields prompt and "
                             "response" if bad else " has no rows") + " (a JSONL file of {prompt, response} rows)")


def reward_models(cfg: PipelineConfig) -> dict[str, RmConfig | str]:
    """``helpful`` and ``harmless``: an RM checkpoint the recipe names (a path), or the ``r1lab rm`` run that
    trains it inside the pipeline's folder."""
    out = {}
    for name, spec in (("helpful", cfg.rm_helpful), ("harmless", cfg.rm_harmless)):
        spec = _block(cfg, f"rm_{name}")
        if spec.get("checkpoint"):
            out[name] = str(spec["checkpoint"])
        else:
            out[name] = _tracked(cfg, _make(RmConfig, {"model": cfg.model, "seed": cfg.seed, "threads": cfg.threads,
                                                       "device": cfg.device, "dtype": cfg.dtype}, spec,
                                            out=Path(cfg.out) / "rm" / name, key=f"rm_{name}"))
    return out


def reward_model_rewards(cfg: PipelineConfig) -> dict:
    """Stage 4's reward-model rewards: helpfulness on the summary, harmlessness on the whole response."""
    paths = {name: rm if isinstance(rm, str) else str(Path(rm.out) / "final")
             for name, rm in reward_models(cfg).items()}
    return {"helpful": {"reward_model": paths["helpful"], "part": "summary", "weight": cfg.rm_weight,
                        "on": "general"},
            "harmless": {"reward_model": paths["harmless"], "part": "whole", "weight": cfg.rm_weight,
                         "on": "general"}}


def _tracked(cfg: PipelineConfig, command):
    """A command of the pipeline logged to the trackers of ``--report-to`` (or its block's own ``report_to``) as a
    run of its own, named by its folder in the pipeline's (``r1/2-reasoning-rl/zero``), in the pipeline's group."""
    if not hasattr(command, "report_to"):
        return command
    group = tracking_group(cfg)
    name = f"{group}/{Path(command.out).resolve().relative_to(Path(cfg.out).resolve())}"
    return dataclasses.replace(command, report_to=command.report_to or cfg.report_to,
                               run_name=command.run_name or name, report_group=command.report_group or group)


def tracking_group(cfg: PipelineConfig) -> str:
    """The trackers' group of a pipeline's runs: ``--run-name``, else the pipeline folder's name."""
    return cfg.run_name or Path(cfg.out).resolve().name


def _shared(cfg: PipelineConfig) -> dict:
    """Settings every stage's commands share (each takes those it has: SFT has no engine)."""
    return {"template": cfg.template, "seed": cfg.seed, "threads": cfg.threads, "device": cfg.device,
            "dtype": cfg.dtype, "engine": cfg.engine, "engine_args": cfg.engine_args}


def _default_args(task: str) -> dict:
    return task_args_for(task, None)


def _make(cls, derived: dict, given: dict, out: Path, key: str = ""):
    """``cls`` built from what the pipeline derives, overridden by the recipe's own settings for that command
    (the recipe's ``key`` block: errors name it)."""
    try:
        return _build(cls, derived, given, out)
    except ValueError as e:
        if not key:
            raise
        command = cls.__doc__.split(":")[0].strip("`")
        raise ValueError(f"{key}: {e} (the options of {command}: see `{command} --help`)") from None


def _build(cls, derived: dict, given: dict, out: Path):
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in derived.items() if k in known}
    if "engine" in given and "engine_args" not in given:  # the recipe's engine_args are another engine's
        values.pop("engine_args", None)
    for key in given:
        if key == "out":
            raise ValueError(f"{cls.__doc__.split(':')[0].strip('`')}: 'out' is set by the pipeline (a folder of its "
                             "run); choose the run's folder with --out")
    values.update(given)
    values["out"] = str(out)
    if not isinstance(values.get("rewards"), dict) or not any(isinstance(v, dict) for v in values["rewards"].values()):
        return make_config(cls, values)
    # reward-model checkpoints the pipeline trains do not exist yet: check everything else now (and them when used)
    cfg = make_config(cls, values, validate=False)
    dataclasses.replace(cfg, rewards={k: v for k, v in cfg.rewards.items() if not isinstance(v, dict)}).validate()
    return cfg


# ------------------------------------------------------------------------------------------- running it
def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) the chain ``cfg`` describes; returns what ``pipeline.json`` holds."""
    cfg.validate()
    run = Path(cfg.out)
    _check_folder(run)
    stages = plan(cfg)  # every stage's settings are checked before anything runs
    tracking.check([name for stage in stages for command in stage.commands.values()
                    for name in getattr(command, "report_to", [])] + list(cfg.report_to))
    run.mkdir(parents=True, exist_ok=True)
    with _only_run(run):
        saved = run / "pipeline.yaml"
        before = saved.read_text() if saved.is_file() else None
        save_config(cfg, run / "pipeline.yaml.new")
        if before is not None and before != (run / "pipeline.yaml.new").read_text():
            _set_aside(saved, "previous")  # the recipe this run was made with so far, kept
        os.replace(run / "pipeline.yaml.new", saved)
        return _run_stages(cfg, run, stages)


@contextlib.contextmanager
def _only_run(run: Path):
    """Hold ``run/.lock`` while the pipeline runs: a second pipeline on the same folder is refused, not mixed in."""
    with open(run / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another r1lab pipeline is running in {run} (it holds {run / LOCK}); wait for it, or "
                             "choose another --out") from None
        yield


def _run_stages(cfg: PipelineConfig, run: Path, stages: list[Stage]) -> dict:

    rms = reward_models(cfg)
    rm_print = _train_reward_models(rms, run)
    parent_print, results = "", []
    for index, stage in enumerate(stages):
        folder = run / stage.folder
        prints = {"stage": _fingerprint(stage, parent_print, rm_print if stage.folder.startswith("4") else "")}
        # the evaluation's samples depend on the engine too (a stage's weights do not, so its print leaves it out)
        prints["eval"] = _digest([prints["stage"], rm_print, _eval_settings(cfg), cfg.general_eval_prompts])
        done = _read_json(folder / "stage.json")
        if done and not _checkpoint_ok(folder, stage):  # finished once, but its model is gone: train it again
            _set_aside(folder / "stage.json", "checkpoint-missing")
            _set_aside(folder / "eval", "checkpoint-missing")  # it evaluated the lost weights
            say(f"   {stage.folder}: its checkpoint {folder / stage.checkpoint} is missing or incomplete; training "
                "the stage again (later stages rerun only if the new weights differ)")
            done = None
        if done and done.get("fingerprint") == prints["stage"] and done.get("eval_fingerprint") == prints["eval"]:
            say(f"== {stage.folder}: finished before, skipped ({stage.title})")
            results.append(done)
            parent_print = _parent_print(prints["stage"], folder, stage)
            continue
        _set_aside_if_changed(run, folder, stage, prints)
        say(f"== {stage.folder} ({index}/{len(stages) - 1}): {stage.title}")
        t0 = time.perf_counter()
        started = _read_json(folder / "started.json") or {}
        if started.get("fingerprint") != prints["stage"]:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "started.json", {"fingerprint": prints["stage"], "settings": _settings(stage)})
        run_stage(cfg, stage, folder)
        train_seconds = started.get("seconds_before", 0.0) + time.perf_counter() - t0
        checkpoint = str(folder / stage.checkpoint) if stage.checkpoint else cfg.model
        t1 = time.perf_counter()
        metrics = evaluate_stage(cfg, checkpoint, folder / "eval", rms)
        record = {"stage": stage.folder, "title": stage.title, "fingerprint": prints["stage"],
                  "eval_fingerprint": prints["eval"], "checkpoint": checkpoint, "seconds": train_seconds,
                  "eval_seconds": time.perf_counter() - t1, "eval": metrics,
                  "training": training_summary(folder, stage),
                  "lineage": lineage(stage, checkpoint, results[-1]["checkpoint"] if results else None),
                  "settings": _settings(stage)}
        write_json(folder / "stage.json", record)
        results.append(record)
        parent_print = _parent_print(prints["stage"], folder, stage)
        say(f"   {stage.folder}: {_one_line(record)}")
    final = Path(results[-1]["checkpoint"])
    in_run = str(final.relative_to(run)) if final.is_relative_to(run) else None
    summary = {"final_checkpoint": str(final), "final_checkpoint_in_run": in_run, "stages": [
        {k: r[k] for k in ("stage", "title", "checkpoint", "seconds", "eval_seconds", "eval", "training")}
        for r in results]}
    write_json(run / "pipeline.json", summary)
    write_report(run, summary)
    return summary


def run_stage(cfg: PipelineConfig, stage: Stage, folder: Path) -> None:
    """Run the stage's commands in order, each skipped where it finished before and resumed where it can be."""
    for name, command in stage.commands.items():
        RUNNERS[name](cfg, command, stage)


def _coldstart(cfg, command: ColdstartConfig, stage: Stage) -> None:
    if not Path(command.out).is_file() and not write_coldstart(command)["written"]:
        raise ValueError(f"{stage.folder}: the cold-start source gave no sample that passed; see `r1lab coldstart "
                         "--help` and the recipe's coldstart settings")


def _sft(cfg, command: SftConfig, stage: Stage) -> None:
    out = Path(command.out)
    if is_complete_checkpoint(out / "final") and (out / "summary.json").is_file():
        return
    _set_aside(out, "interrupted")  # SFT does not resume: a run cut off mid-way starts again (kept aside)
    train_sft(command)


def _zero(cfg, command: ZeroConfig, stage: Stage) -> None:
    out = Path(command.out)
    if (out / "summary.json").is_file():
        if is_complete_checkpoint(out / "final"):
            return
        _set_aside(out, "incomplete")  # finished once, but its final model is gone: train it again (kept aside)
    train(dataclasses.replace(command, resume=(out / "config.yaml").is_file()))  # resumes from its last checkpoint


def _sample(cfg, command: SampleConfig, stage: Stage) -> None:
    out = Path(command.out)
    if (out / "summary.json").is_file():
        return
    if command.non_reasoning:
        _write_non_reasoning(cfg, Path(command.non_reasoning))
    if not run_sample(command)["kept_reasoning"]:  # sampling resumes from its finished batches
        raise ValueError(f"{stage.folder}: rejection sampling kept no reasoning sample (see {out}/report.md); sample "
                         "more prompts or more per prompt (rejection: {limit: 0, n: 8})")


def _distill(cfg, command: DistillConfig, stage: Stage) -> None:
    out = Path(command.out)
    if not is_complete_checkpoint(out / "student" / "final"):
        _set_aside(out, "interrupted")
        run_distill(command)


RUNNERS = {"coldstart": _coldstart, "sft": _sft, "zero": _zero, "sample": _sample, "distill": _distill}


def _train_reward_models(rms: dict, run: Path) -> str:
    """Train the reward models the recipe does not name (skipping finished ones); their fingerprint."""
    parts = []
    for name, rm in rms.items():
        if isinstance(rm, str):
            if not is_complete_checkpoint(rm):
                raise ValueError(f"reward model {name}: {rm} is not a complete r1lab checkpoint (no "
                                 "r1lab_complete.json); train one with r1lab rm, or leave rm_{name} empty")
            parts.append(_file_digest(Path(rm) / "r1lab_complete.json"))
            continue
        out = Path(rm.out)
        settings = _config_settings(rm, run)
        marker = _read_json(out / "pipeline_rm.json")
        if not (marker and marker.get("settings") == settings and is_complete_checkpoint(out / "final")):
            if out.exists():
                _set_aside(out, "replaced" if marker else "interrupted")
            say(f"== rm/{name}: reward model ({rm.data or 'built-in pairs'})")
            t0 = time.perf_counter()
            summary = train_rm(rm)
            write_json(out / "pipeline_rm.json", {"settings": settings, "seconds": time.perf_counter() - t0,
                                                  "summary": summary})
        parts.append(_digest(settings))
    return _digest(parts)


def _write_non_reasoning(cfg: PipelineConfig, path: Path) -> None:
    """The non-reasoning SFT rows (simple queries answered without a chain of thought): the recipe's file, else the
    helpful replies of the ``general`` task's training prompts."""
    if cfg.non_reasoning:
        rows = [{"prompt": r["prompt"], "response": r["response"]} for _, r in read_jsonl(cfg.non_reasoning)]
    else:
        rows = [{"prompt": r["prompt"], "response": r["reply"]} for r in helpful_requests(200, seed=cfg.seed + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_stage(cfg: PipelineConfig, checkpoint: str, out: Path, rms: dict) -> dict:
    """The same evaluation after every stage: ``r1lab eval`` on the recipe's benchmarks (fixed seed), and one
    sampled reply per general prompt judged by the reward models."""
    eval_cfg = _tracked(cfg, make_config(EvalConfig, {**_eval_settings(cfg), "model": checkpoint,
                                                      "out": str(out / "reasoning"), "threads": cfg.threads,
                                                      "device": cfg.device, "dtype": cfg.dtype}))
    settings = {"eval": _config_settings(eval_cfg, Path(cfg.out)), "general_eval_prompts": cfg.general_eval_prompts,
                "reward_models": reward_model_rewards(cfg)}
    if (_read_json(out / "settings.json") or settings) != settings:  # an evaluation cut off, then changed
        _set_aside(out, "replaced")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "settings.json", settings)
    summary = run_eval(eval_cfg, progress=True) if not (out / "reasoning" / "summary.json").is_file() else \
        json.loads((out / "reasoning" / "summary.json").read_text())
    name = eval_cfg.benchmarks[0]
    bench = summary["benchmarks"][name]
    records = _eval_samples(out / "reasoning", name)
    metrics = {"benchmark": name, "accuracy": bench["metrics"]["pass@1"]["value"],
               "ci_low": bench["metrics"]["pass@1"]["ci_low"], "ci_high": bench["metrics"]["pass@1"]["ci_high"],
               "n": bench["n_problems"], "k": bench["k"], **_response_stats(records, cfg.language)}
    metrics.update(general_eval(cfg, checkpoint, out / "general.json", rms))
    return metrics


def _eval_settings(cfg: PipelineConfig) -> dict:
    settings = {"benchmarks": [f"task:{cfg.task}"], "task_args": cfg.task_args or _default_args(cfg.task),
                "template": cfg.template, "seed": cfg.seed, "limit": 32, "k": 2, "max_new_tokens": 128,
                "engine": cfg.engine, "engine_args": cfg.engine_args}
    if "engine" in cfg.eval and "engine_args" not in cfg.eval:  # the recipe's engine_args are another engine's
        settings["engine_args"] = {}
    return {**settings, **cfg.eval}


def _eval_samples(folder: Path, benchmark: str) -> list[dict]:
    return read_log(folder / folder_name(benchmark) / "samples.jsonl")


def _response_stats(records: list[dict], language: str) -> dict:
    if not records:
        return {"format_rate": math.nan, "language_consistency": math.nan, "mean_tokens": math.nan}
    responses = [r["completion"] for r in records]
    langs = [v for v in (language_consistency(r, language=language) for r in responses) if v is not None]
    return {"format_rate": sum(format_reward(r) for r in responses) / len(responses),
            "language_consistency": sum(langs) / len(langs) if langs else math.nan,
            "mean_tokens": sum(r["tokens"] for r in records) / len(records)}


def general_eval(cfg: PipelineConfig, checkpoint: str, path: Path, rms: dict) -> dict:
    """One sampled reply (T=0.6, top-p 0.95, the recipe's seed) per general test prompt: the helpfulness RM's mean
    score on the summary and the share of replies the harmlessness RM passes, judged on the whole reply."""
    saved = _read_json(path)
    if saved:
        return saved
    task = build_task("general", None)
    examples = task.examples("test")[:cfg.general_eval_prompts]
    if not examples:
        return {}
    engine = open_engine(checkpoint, cfg.engine, cfg.engine_args, cfg.threads, device=cfg.device, dtype=cfg.dtype)
    params = SamplingParams(n=1, temperature=0.6, top_p=0.95, max_new_tokens=_eval_settings(cfg)["max_new_tokens"],
                            seed=cfg.seed)
    try:
        groups = generate_groups(engine, examples, cfg.template, None, params, task)
    finally:
        engine.close()
    specs = reward_model_rewards(cfg)
    specs["harmless_pass"] = {**specs["harmless"], "output": "pass"}  # 1 above the RM's stored threshold, else 0
    rewards = build_rewards(specs, task, language=cfg.language, device=cfg.device)
    for group in groups:
        score_group(group, rewards)
    result = {"rm_helpful": _mean(g.per_reward["helpful"] for g in groups),
              "rm_harmless": _mean(g.per_reward["harmless"] for g in groups),
              "harmless_pass": _mean(g.per_reward["harmless_pass"] for g in groups),
              "general_prompts": len(examples)}
    write_jsonl(path.with_suffix(".samples.jsonl"), [
        {"prompt": g.example["prompt"], "response": g.responses[0], "helpful": g.per_reward["helpful"][0],
         "harmless": g.per_reward["harmless"][0]} for g in groups])
    write_json(path, result)
    return result


def _mean(lists) -> float:
    values = [v for values in lists for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------- records
def training_summary(folder: Path, stage: Stage) -> dict:
    """What the stage's training did, from its own logs: reward first/last steps (RL), loss (SFT), kept (sample)."""
    out = {}
    for name, command in stage.commands.items():
        summary = _read_json(Path(command.out) / "summary.json") if name != "coldstart" else None
        if name == "zero" and summary:
            out.update({"reward_first": summary["reward_first_steps"], "reward_last": summary["reward_last_steps"],
                        "steps": command.steps})
        elif name == "sft" and summary:
            out[f"sft_loss_{stage.folder[0]}"] = [summary["train_loss_first"], summary["train_loss_last"]]
        elif name == "sample" and summary:
            out.update({"kept_reasoning": summary["kept_reasoning"], "non_reasoning": summary["non_reasoning"]})
        elif name == "coldstart":
            out["coldstart_samples"] = len(Path(command.out).read_text(encoding="utf-8").splitlines())
    return out


def lineage(stage: Stage, checkpoint: str, parent: str | None) -> dict:
    """Where the stage's model came from: parent checkpoint, data files (sha256), code version."""
    data = {}
    for command in stage.commands.values():
        for field in ("data", "non_reasoning"):
            path = getattr(command, field, None)
            if path and Path(path).is_file():
                data[str(path)] = _file_digest(Path(path))
    if "coldstart" in stage.commands:
        data[stage.commands["coldstart"].out] = _file_digest(Path(stage.commands["coldstart"].out))
    return {"parent_checkpoint": parent, "checkpoint": checkpoint, "data_sha256": data,
            "r1lab": __version__, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


# ------------------------------------------------------------------------------------------- fingerprints
def _config_settings(command, run: Path) -> dict:
    values = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(command)))
    return {k: _portable(v, run) for k, v in values.items() if k not in NOT_FINGERPRINTED}


def _portable(value, run: Path):
    """``value`` with paths inside the run written as ``<run>/...``: a run moved, or named relative or absolute,
    keeps its fingerprints."""
    if isinstance(value, str):
        prefix = str(Path(run))
        return "<run>" + value[len(prefix):] if value == prefix or value.startswith(prefix + os.sep) else value
    if isinstance(value, dict):
        return {k: _portable(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, run) for v in value]
    return value


def _settings(stage: Stage) -> dict:
    settings = {name: _config_settings(command, Path(stage.run)) for name, command in stage.commands.items()}
    return {**settings, **({"inputs": stage.inputs} if stage.inputs else {})}


def _parent_print(fingerprint: str, folder: Path, stage: Stage) -> str:
    """What the next stage's fingerprint chains on: this stage's settings and the weights it produced, so a stage
    trained again (its checkpoint was lost) that comes out different sends every later stage round again."""
    checkpoint = folder / stage.checkpoint
    weights = sorted(checkpoint.glob("*.safetensors")) if stage.checkpoint and checkpoint.is_dir() else []
    return _digest([fingerprint, [_file_digest(path) for path in weights]])


def _fingerprint(stage: Stage, parent: str, extra: str) -> str:
    return _digest([stage.folder, _settings(stage), parent, extra])


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, torn or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _checkpoint_ok(folder: Path, stage: Stage) -> bool:
    return not stage.checkpoint or is_complete_checkpoint(folder / stage.checkpoint)


def _set_aside_if_changed(run: Path, folder: Path, stage: Stage, prints: dict) -> None:
    """A stage folder made with other settings (or after a changed earlier stage) moves to ``replaced/``; a stage
    whose only change is its evaluation keeps its training and redoes the evaluation."""
    done = _read_json(folder / "stage.json")
    started = _read_json(folder / "started.json")
    if done and done.get("fingerprint") == prints["stage"]:
        _set_aside(folder / "eval", "replaced")
        (folder / "stage.json").unlink()
        say(f"   {stage.folder}: only the evaluation changed; it runs again")
        return
    if not (done or started) or (started or {}).get("fingerprint") == prints["stage"]:
        if folder.exists() and not done and started:
            say(f"   {stage.folder}: interrupted before; resuming it")
        return
    old = (done or started).get("settings", {})
    new = _settings(stage)
    changed = sorted(f"{name}.{key}" for name in set(old) | set(new)
                     for key in set(old.get(name, {})) | set(new.get(name, {}))
                     if old.get(name, {}).get(key) != new.get(name, {}).get(key))
    why = f"its settings changed ({', '.join(changed)})" if changed else "an earlier stage changed"
    where = _set_aside(folder, "replaced", into=run / "replaced")
    say(f"   {stage.folder}: {why}; rerunning it and every stage after it (the old one is in {where})")


def _set_aside(path: Path, why: str, into: Path | None = None) -> Path | None:
    """Move ``path`` out of the way (never delete it): to ``into/NAME.WHY-N`` or beside it as ``NAME.WHY-N``."""
    path = Path(path)
    if not path.exists():
        return None
    into = into or path.parent
    into.mkdir(parents=True, exist_ok=True)
    n = 1
    while (into / f"{path.name}.{why}-{n}").exists():
        n += 1
    target = into / f"{path.name}.{why}-{n}"
    os.replace(path, target)
    return target


def _check_folder(run: Path) -> None:
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run} is a file; choose a folder for the pipeline run")
    saved = run / "pipeline.yaml"
    ours = run.is_dir() and any((p / "started.json").is_file() for p in run.iterdir() if p.is_dir())
    if run.is_dir() and any(p.name != LOCK for p in run.iterdir()) and not saved.is_file() and not ours:
        raise ValueError(f"{run} holds files but no pipeline run (no pipeline.yaml); choose another --out")
    if saved.is_file() and not saved.read_text().startswith("# r1lab pipeline"):
        raise ValueError(f"{saved} was not written by r1lab pipeline; choose another --out")


# ------------------------------------------------------------------------------------------- report
COLUMNS = [("accuracy", "held-out pass@1 [95% CI]"), ("format_rate", "format"),
           ("language_consistency", "language"), ("mean_tokens", "mean length (tokens)"),
           ("rm_helpful", "RM helpful (general)"), ("harmless_pass", "harmless pass")]


def _one_line(record: dict) -> str:
    e = record["eval"]
    return (f"pass@1 {_pct(e.get('accuracy'))}, format {_pct(e.get('format_rate'))}, RM helpful "
            f"{_num(e.get('rm_helpful'))}, harmless pass {_pct(e.get('harmless_pass'))} "
            f"({record['seconds']:.0f} s + eval {record['eval_seconds']:.0f} s)")


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.1%}"


def _num(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def write_report(run: Path, summary: dict) -> Path:
    """``report.md``: one row per stage, then the stages' curves side by side (``plots/stages.png``)."""
    rows = []
    for s in summary["stages"]:
        e, t = s["eval"], s["training"]
        acc = f"{_pct(e.get('accuracy'))} [{_pct(e.get('ci_low'))}, {_pct(e.get('ci_high'))}]"
        reward = (f"{_num(t['reward_first'])} → {_num(t['reward_last'])}" if "reward_first" in t else "")
        rows.append(f"| {s['stage']} | {s['seconds'] / 60:.1f} | {acc} | {_pct(e.get('format_rate'))} | "
                    f"{_pct(e.get('language_consistency'))} | {_num(e.get('mean_tokens'))} | "
                    f"{_num(e.get('rm_helpful'))} | {_pct(e.get('harmless_pass'))} | {reward} |")
    first = summary["stages"][0]["eval"]
    plot = plot_stages(run, summary)
    lines = ["# r1lab pipeline", "",
             f"Final model: `{summary['final_checkpoint']}`. Evaluation after every stage: "
             f"`{first.get('benchmark')}`, {first.get('n')} problems × k = {first.get('k')} (pass@1, fixed seed), and "
             f"{first.get('general_prompts', 0)} general prompts, one reply each, judged by the reward models "
             "(helpfulness on the summary, harmlessness on the whole reply).", "",
             "| stage | minutes | " + " | ".join(label for _, label in COLUMNS) + " | RL reward (first → last) |",
             "|---|---:|" + "---:|" * len(COLUMNS) + "---|", *rows, "",
             "Minutes: the stage's training, without its evaluation.", "",
             f"![stages]({plot.relative_to(run)})" if plot else "", ""]
    for s in summary["stages"]:
        lines.append(f"- **{s['stage']}**: {s['title']} — `{s['checkpoint']}`")
    path = run / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def plot_stages(run: Path, summary: dict) -> Path | None:
    """The stages' training curves side by side (SFT loss, RL reward and format rate), and the per-stage
    evaluation."""
    panels = []
    for s in summary["stages"][1:]:
        folder = run / s["stage"]
        for name in ("sft", "zero", "student"):
            metrics = read_log(folder / name / "metrics.jsonl") if (folder / name).is_dir() else []
            if name == "student" and not metrics:
                metrics = read_log(folder / "student" / "metrics.jsonl")
            if metrics:
                panels.append((f"{s['stage']} ({name})", metrics))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.6), dpi=100, squeeze=False)
    for ax, (title, metrics) in zip(axes[0], panels):
        steps = [m["step"] for m in metrics]
        keys = ("reward", "format_rate") if "reward" in metrics[0] else ("loss",)
        for i, key in enumerate(keys):
            values = [m.get(key) if m.get(key) is not None else math.nan for m in metrics]
            ax.plot(steps, values, color=f"C{i}", alpha=0.25)
            ax.plot(steps, running_mean(values, 5), color=f"C{i}", label=key.replace("_", " "))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    names = [s["stage"].split("-")[0] for s in summary["stages"]]
    for i, (key, label) in enumerate([("accuracy", "pass@1"), ("format_rate", "format"),
                                      ("harmless_pass", "harmless pass")]):
        ax.plot(names, [s["eval"].get(key) if s["eval"].get(key) is not None else math.nan
                        for s in summary["stages"]], "o-", color=f"C{i}", label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("evaluation after each stage", fontsize=9)
    ax.set_xlabel("stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, run / "plots" / "stages.png")
