import dataclasses
import re
import typing

import pytest

from r1lab import config, options
from r1lab.config import ChatConfig, DistillConfig, EvalConfig, SampleConfig, ServeConfig, ZeroConfig
from r1lab.options import load_config


def test_defaults_run_without_arguments():
    cfg = load_config(ZeroConfig, [])
    assert cfg == ZeroConfig()


def test_recipe_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 7\nlr: 1.0e-4\ntask_args: {digits: 2}\nrewards: {accuracy: 1, tag_count: 0.2}\n")
    cfg = load_config(ZeroConfig, ["--config", str(recipe), "--steps", "9", "--group-size", "4", "--beta", "0.04",
                                   "--dynamic_sampling", "true", "--prefill", "<think>\n"])
    assert cfg.steps == 9 and cfg.lr == 1e-4 and cfg.group_size == 4 and cfg.beta == 0.04
    assert cfg.task_args == {"digits": 2} and cfg.rewards == {"accuracy": 1, "tag_count": 0.2}
    assert cfg.dynamic_sampling is True and cfg.prefill == "<think>\n"


@pytest.mark.parametrize("argv, match", [
    (["--steps", "ten"], "steps must be int"),
    (["--dynamic-sampling", "maybe"], "true or false"),
    (["--task-args", "[1, 2]"], "task_args must be dict"),
    (["--lr", "{a: 1}"], "lr must be float"),
])
def test_bad_values_say_what_to_fix(argv, match):
    with pytest.raises(ValueError, match=match):
        load_config(ZeroConfig, argv)


def test_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="unknown option 'stepz'"):
        load_config(ZeroConfig, ["--config", str(recipe)])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(ZeroConfig, ["--config", str(tmp_path / "missing.yaml")])


def test_every_task_builds_with_the_default_task_args():
    from r1lab.config import ZeroConfig
    from r1lab.tasks import TASKS, get_task, task_args_for

    for name in sorted(TASKS):
        if name in ("dataset", "code_dataset", "gsm8k"):
            continue  # these need a data path
        cfg = ZeroConfig(task=name)
        assert get_task(name, **task_args_for(name, cfg.task_args)).examples("train")


def test_an_option_the_task_does_not_take_is_a_clear_error():
    import pytest

    from r1lab.tasks import get_task

    with pytest.raises(ValueError, match="task 'countdown'.*--task-args"):
        get_task("countdown", digits=2)


# --------------------------------------------------------------------------------- each config checks itself
CONFIGS = [config.ZeroConfig, config.EvalConfig, config.SftConfig, config.ColdstartConfig, config.SampleConfig,
           config.DistillConfig, config.ServeConfig, config.ChatConfig]
ZERO_COUNTS = ["steps", "prompts_per_step", "max_new_tokens", "eval_max_new_tokens", "save_every",
               "updates_per_batch", "groups_per_micro_batch", "max_sampling_rounds", "keep_checkpoints", "eval_samples"]
REFUSED = [
    *[(config.ZeroConfig, {name: 0}, f"{name}=0: must be at least 1") for name in ZERO_COUNTS],
    (config.ZeroConfig, {"template": "foo"}, "template='foo': choose one of r1zero, r1, native, native-zero"),
    (config.ZeroConfig, {"advantage": "ppo"}, "advantage='ppo': choose one of grpo, drgrpo, rloo, batch_std, "
                                              "reinforce_plus_plus, reinforce_plus_plus_baseline"),
    (config.ZeroConfig, {"loss_aggregation": "x"},
     "loss_aggregation='x': choose one of token, sequence, constant, micro_batch"),
    (config.ZeroConfig, {"loss_type": "ppo"}, "loss_type='ppo': choose one of grpo, gspo, cispo"),
    (config.ZeroConfig, {"top_entropy": 1.5}, "top_entropy=1.5: the share of tokens that get gradient, in (0, 1]"),
    (config.ZeroConfig, {"off_policy_threshold": -1}, "off_policy_threshold=-1: must be at least 0"),
    (config.ZeroConfig, {"entropy_coef": float("nan")}, "entropy_coef=nan: use a finite number"),
    (config.ZeroConfig, {"reward_args": {"cosine": {}}}, "reward_args: 'cosine' is not one of the run's rewards"),
    (config.ZeroConfig, {"reward_args": {"format": 3}}, "reward_args: format: 3: write its options as a mapping"),
    (config.ZeroConfig, {"tags": {"reasoning": ["<r>", "</r>"]}}, "tags: 'reasoning': use think | answer"),
    (config.ZeroConfig, {"tags": {"think": ["<r>"]}}, "tags: think: ['<r>']: give [opening, closing]"),
    (config.ZeroConfig, {"tags": {"think": ["<answer>", "</r>"]}}, "the four delimiters (think and answer, opening"),
    (config.ZeroConfig, {"tags": {"think": ["<t>", "</t>"], "answer": ["<t>a", "</t>a"]}}, "'<t>a' holds '<t>'"),
    (config.ZeroConfig, {"normalize_rewards": True}, "normalize_rewards with advantage=grpo: grpo z-scores"),
    (config.ZeroConfig, {"lr_schedule": "step"}, "lr_schedule='step': choose one of cosine, linear, constant"),
    (config.ZeroConfig, {"rewards": {"accuracy": "high"}}, "the weight of 'accuracy' is 'high'; write a number"),
    (config.ZeroConfig, {"rewards": {"format": True}}, "the weight of 'format' is True"),
    (config.ZeroConfig, {"rewards": {"format": float("nan")}}, "the weight of 'format' is nan"),
    (config.ZeroConfig, {"group_size": 1}, "group_size=1: GRPO compares samples within a group, use at least 2"),
    (config.ZeroConfig, {"temperature": 0.0}, "temperature=0.0: RL needs sampling"),
    (config.ZeroConfig, {"temperature": float("inf")}, "temperature=inf: RL needs sampling"),
    (config.ZeroConfig, {"eval_samples": 4, "eval_temperature": 0.0}, "eval_temperature=0.0: sampled evaluation"),
    (config.ZeroConfig, {"eval_samples": 4, "eval_top_p": 0.0}, "eval_top_p=0.0: use a value in (0, 1]"),
    (config.ZeroConfig, {"beta": -0.1}, "beta=-0.1: must be at least 0"),
    (config.ZeroConfig, {"clip_low": -0.1}, "clip_low=-0.1: must be at least 0"),
    (config.ZeroConfig, {"clip_high": -0.1}, "clip_high=-0.1: must be at least 0"),
    (config.ZeroConfig, {"lr": 0.0}, "lr=0.0: use a value > 0"),
    (config.ZeroConfig, {"parallel": "ddp"}, "parallel='ddp': choose one of replicate, fsdp"),
    (config.ZeroConfig, {"parallel": "fsdp", "lora_r": 8}, "parallel=fsdp shards full fine-tuning; with LoRA"),
    (config.SftConfig, {"parallel": "zero3"}, "parallel='zero3': choose one of replicate, fsdp"),
    (config.SftConfig, {"parallel": "fsdp", "lora_r": 8}, "parallel=fsdp shards full fine-tuning; with LoRA"),
    (config.EvalConfig, {"benchmarks": []}, "benchmarks is empty; name at least one, e.g. --benchmarks '[gsm8k]'"),
    (config.EvalConfig, {"template": "foo"}, "template='foo': choose one of"),
    (config.EvalConfig, {"max_new_tokens": 0}, "max_new_tokens=0: must be at least 1"),
    (config.EvalConfig, {"k": -1}, "k=-1: must be at least 0 (0 = automatic / all)"),
    (config.EvalConfig, {"limit": -1}, "limit=-1: must be at least 0"),
    (config.EvalConfig, {"problems_per_batch": -1}, "problems_per_batch=-1: must be at least 0"),
    (config.EvalConfig, {"temperature": 0.0}, "temperature=0.0: sampling needs a value > 0 (0.6); use --greedy true"),
    (config.EvalConfig, {"top_p": 0.0}, "top_p=0.0: use a value in (0, 1]"),
    (config.EvalConfig, {"top_p": 1.5}, "top_p=1.5: use a value in (0, 1]"),
    (config.EvalConfig, {"interval": "wald"}, "interval='wald': choose one of bootstrap, normal"),
    (config.EvalConfig, {"data": {"aime24": "a.jsonl"}}, "data names ['aime24'], which are not among benchmarks"),
    (config.SftConfig, {"data": ""}, "give the training data: --data FILE.jsonl"),
    (config.SftConfig, {"template": "foo"}, "template='foo': choose one of"),
    (config.SftConfig, {"lr_schedule": "step"}, "lr_schedule='step': choose one of"),
    *[(config.SftConfig, {name: 0}, f"{name}=0: must be at least 1")
      for name in ("epochs", "tokens_per_step", "row_tokens", "max_length")],
    *[(config.SftConfig, {name: -1}, f"{name}=-1: must be at least 0 (0 = off)")
      for name in ("max_steps", "limit", "eval_every")],
    (config.SftConfig, {"lr": 0.0}, "lr=0.0: use a value > 0"),
    (config.SftConfig, {"eval_size": -0.1}, "eval_size=-0.1: must be at least 0"),
    (config.ColdstartConfig, {"source": "web"}, "source='web': choose one of traces, model, jsonl"),
    (config.ColdstartConfig, {"source": "jsonl"}, "source=jsonl needs --data FILE.jsonl"),
    (config.SampleConfig, {"template": "foo"}, "template='foo': choose one of"),
    *[(config.SampleConfig, {name: 0}, f"{name}=0: must be at least 1") for name in ("n", "keep", "max_new_tokens")],
    (config.SampleConfig, {"non_reasoning_share": 1.0, "non_reasoning": "x.jsonl"}, "non_reasoning_share=1.0: use a "
                                                                                    "share in [0, 1)"),
    (config.SampleConfig, {"non_reasoning_share": 0.25}, "non_reasoning_share needs --non-reasoning FILE.jsonl"),
    (config.SampleConfig, {"near_duplicate": 0.0}, "near_duplicate=0.0: use a value in (0, 1]"),
    (config.DistillConfig, {"concurrency": 0}, "concurrency=0: must be at least 1"),
    (config.DistillConfig, {"max_tokens": 0}, "max_tokens=0: must be at least 1"),
    (config.DistillConfig, {"max_retries": -1}, "max_retries=-1: must be at least 0"),
    (config.DistillConfig, {"base_url": "api.deepseek.com"}, "base_url='api.deepseek.com': must start with http://"),
    (config.DistillConfig, {"template": "foo"}, "template='foo': choose one of"),  # a local teacher renders with it
    (config.DistillConfig, {"template": "foo", "base_url": "http://x", "student": "s"}, "template='foo'"),
    (config.ServeConfig, {"template": "foo"}, "template='foo': choose one of"),
    (config.ChatConfig, {"template": "foo"}, "template='foo': choose one of"),
]


@pytest.mark.parametrize("cls, changes, match", REFUSED, ids=lambda x: getattr(x, "__name__", None) or str(x)[:40])
def test_each_config_refuses_what_cannot_work_naming_the_field(cls, changes, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        dataclasses.replace(cls(data="d.jsonl") if cls is config.SftConfig else cls(), **changes).validate()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_the_defaults_are_valid(cls):
    (cls(data="d.jsonl") if cls is config.SftConfig else cls()).validate()  # sft alone needs its data named


def test_what_is_allowed_is_not_refused():
    config.ZeroConfig(rewards={"my_reward": 1, "format": 0.5}).validate()  # names: an open registry, built later
    config.ZeroConfig(eval_temperature=0.0, eval_top_p=0.0).validate()  # unused with one greedy answer
    config.EvalConfig(greedy=True, temperature=0.0).validate()
    config.EvalConfig(benchmarks=["aime24"], data={"aime24": "a.jsonl"}).validate()
    config.DistillConfig(template="foo", base_url="https://api.deepseek.com").validate()  # an endpoint renders itself
    config.SampleConfig(non_reasoning_share=0.25, non_reasoning="nr.jsonl").validate()
    config.ColdstartConfig(source="jsonl", data="c.jsonl").validate()


def test_several_problems_are_named_together_and_make_config_checks():
    with pytest.raises(ValueError, match=r"bad settings:\n  template='foo'.*\n  steps=0") as refused:
        config.make_config(config.ZeroConfig, {"template": "foo", "steps": 0})
    assert refused.value.args[0].count("\n") == 2
    with pytest.raises(ValueError, match=r"^template='foo': choose one of"):  # one problem: one line
        load_config(config.EvalConfig, ["--template", "foo"])
    assert config.make_config(config.ZeroConfig, {"steps": 0}, validate=False).steps == 0


def test_the_names_a_setting_may_take_are_those_the_code_implements():
    from r1lab import export, models, optim, tracking
    from r1lab.evaluate.metrics import CI_METHODS
    from r1lab.rl.advantages import ADVANTAGES
    from r1lab.rl.losses import LOSS_AGGREGATION_HELP, LOSS_AGGREGATIONS, LOSS_TYPE_HELP, LOSS_TYPES
    from r1lab.sft import coldstart

    names = typing.get_args
    assert names(config.Advantage) == tuple(ADVANTAGES)
    assert names(config.LossAggregation) == tuple(LOSS_AGGREGATIONS) == tuple(LOSS_AGGREGATION_HELP)
    assert names(config.LossType) == tuple(LOSS_TYPES) == tuple(LOSS_TYPE_HELP)
    from r1lab.rewards.registry import TAGS

    assert config.DEFAULT_TAGS == TAGS
    assert names(config.LrSchedule) == tuple(optim.LR_SCHEDULES)
    assert [optim.lr_factor(5, 2, 10, s) for s in names(config.LrSchedule)]  # each one runs
    assert names(config.Interval) == tuple(CI_METHODS)
    assert names(config.Dtype) == ("auto", *models.DTYPES)
    assert names(config.Quant) == tuple(export.QUANTS)
    assert config.TRACKERS is tracking.TRACKERS and tracking.TRACKERS == tuple(tracking.OPENERS)
    assert names(config.Parallel) == ("replicate", "fsdp")  # r1lab.sharding shards for "fsdp"; else replication
    assert all(callable(getattr(coldstart, f"_from_{source}", None)) for source in names(config.ColdstartSource))
    helps = {**options.option_help(config.ZeroConfig), "interval": options.option_help(config.EvalConfig)["interval"],
             "source": options.option_help(config.ColdstartConfig)["source"]}  # --help lists each choice
    for name, choices in [("advantage", config.Advantage), ("loss_aggregation", config.LossAggregation),
                          ("lr_schedule", config.LrSchedule), ("interval", config.Interval)]:
        assert " | ".join(names(choices)) in helps[name]
    assert all(source in helps["source"] for source in names(config.ColdstartSource))


ALL_CONFIGS = [*CONFIGS, config.RmConfig, config.ExportConfig, config.PipelineConfig]
LITERAL_FIELDS = [(cls, f.name) for cls in ALL_CONFIGS for f in dataclasses.fields(cls)
                  if typing.get_origin(typing.get_type_hints(cls)[f.name]) is typing.Literal]


@pytest.mark.parametrize("cls, name", LITERAL_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_every_setting_with_a_closed_set_of_names_refuses_another_and_lists_them(cls, name):
    allowed = typing.get_args(typing.get_type_hints(cls)[name])
    required = {config.SftConfig: {"data": "d.jsonl"}, config.ExportConfig: {"model": "m", "gguf": "m.gguf"}}.get(cls, {})
    with pytest.raises(ValueError, match="bogus") as refused:
        config.make_config(cls, {**required, name: "bogus"})
    if name != "engine" or "openai" in allowed:  # a command that runs the model here says why it refuses an engine
        assert str(refused.value) == f"{name}='bogus': choose one of {', '.join(allowed)}"
    assert config.make_config(cls, {**required, name: allowed[-1]}, validate=False)  # a name, read as a str


def test_help_lists_the_registries_names_as_they_are_when_it_is_asked_for(capsys):
    from r1lab.rewards import REWARDS
    from r1lab.tasks import TASKS

    helps = options.option_help(config.ZeroConfig)
    assert helps["task"] == " | ".join(sorted(TASKS))
    assert all(f" {name} |" in helps["rewards"] for name in [*REWARDS, "accuracy"])
    with pytest.raises(SystemExit):
        options.parse_values(config.ZeroConfig, ["--help"])
    assert "--advantage STR " in capsys.readouterr().out  # a Literal of names takes a str


def test_config_and_runs_stay_in_the_bottom_layer():
    import ast
    from pathlib import Path

    import r1lab

    def imported(module):
        tree = ast.parse((Path(r1lab.__file__).parent / f"{module}.py").read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return {n for n in names if n.startswith("r1lab")}

    assert imported("config") <= {"r1lab.chat", "r1lab.files", "r1lab.tracking"}
    assert imported("runs") <= {"r1lab.config"}
    assert "SystemExit" not in (Path(r1lab.__file__).parent / "config.py").read_text().replace("SystemExit(0)", "")


def test_command_line_and_recipe_mistakes_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unrecognized arguments: --bogus\nusage: r1lab zero \[--config FILE\]"):
        load_config(ZeroConfig, ["--bogus"], prog="r1lab zero")
    with pytest.raises(ValueError, match="expected one argument"):
        load_config(ZeroConfig, ["--lr"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: [3\n")
    with pytest.raises(ValueError, match="recipe .* cannot be read"):
        load_config(ZeroConfig, ["--config", str(recipe)])
    recipe.write_text("- steps\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(ZeroConfig, ["--config", str(recipe)])


# --------------------------------------------------------------------------------- run folders (r1lab.runs)
def test_a_setting_added_later_keeps_old_runs_resumable(tmp_path):
    from r1lab.runs import check_same_config, values_for_resume

    run = tmp_path / "run"
    run.mkdir()
    config.save_config(config.ZeroConfig(out=str(run), steps=3), run / "config.yaml")
    old = [line for line in (run / "config.yaml").read_text().splitlines() if not line.startswith("eval_top_p:")]
    (run / "config.yaml").write_text("\n".join(old) + "\n")  # saved before eval_top_p existed
    check_same_config(config.ZeroConfig(out=str(run), steps=3), run / "config.yaml")  # missing = its default
    values = values_for_resume(config.ZeroConfig, {"out": str(run), "resume": True})
    cfg = config.make_config(config.ZeroConfig, values)
    assert cfg.steps == 3 and cfg.eval_top_p == 0.95
    with pytest.raises(ValueError, match=r"eval_top_p: 0\.95 there, 0\.9 given now"):
        values_for_resume(config.ZeroConfig, {"out": str(run), "resume": True, "eval_top_p": 0.9})
    with pytest.raises(ValueError, match=r"steps: 3 there, 40 now"):
        check_same_config(config.ZeroConfig(out=str(run)), run / "config.yaml")


def test_refuse_changed_names_each_difference(tmp_path):
    from r1lab.runs import refuse_changed

    refuse_changed(tmp_path, {"seed": 0}, {"seed": 0}, ["seed"], "hint")  # the same: nothing to say
    with pytest.raises(ValueError, match=r"holds 3 traces made with other settings \(--base-url: 'a' there, 'b' "
                                         r"now\)\. Use another --out"):
        refuse_changed(tmp_path, {"base_url": "a", "seed": 1}, {"base_url": "b", "seed": 1}, ["base_url", "seed"],
                       "Use another --out", what="3 traces made", as_flags=True)


@pytest.mark.parametrize("cls, values, field", [
    (ZeroConfig, {"top_p": 0.0}, "top_p"), (ZeroConfig, {"top_k": -1}, "top_k"),
    (ZeroConfig, {"eval_every": -1}, "eval_every"), (EvalConfig, {"top_k": -1}, "top_k"),
    (SampleConfig, {"top_p": 1.5}, "top_p"), (DistillConfig, {"temperature": -0.1}, "temperature"),
    (ChatConfig, {"max_tokens": 0}, "max_tokens"), (ServeConfig, {"max_n": 0}, "max_n"),
])
def test_sampling_settings_are_checked_before_anything_loads(cls, values, field):
    with pytest.raises(ValueError, match=f"{field}="):
        cls(**values).validate()


def test_a_reward_weight_written_with_an_exponent_is_a_number():
    cfg = load_config(ZeroConfig, ["--rewards", "{accuracy: 1, format: 5e-1}"])  # YAML 1.1 keeps '5e-1' a string
    assert float(cfg.rewards["format"]) == 0.5
    with pytest.raises(ValueError, match="weight of 'format'"):
        load_config(ZeroConfig, ["--rewards", "{accuracy: 1, format: lots}"])


def test_the_engine_names_are_the_registrys():
    from r1lab.engine.registry import ENGINES as REGISTERED

    assert typing.get_args(config.Engine) == tuple(REGISTERED)
    assert typing.get_args(config.LocalEngine) == tuple(name for name, kind in REGISTERED.items() if kind.trains)


def test_an_endpoints_prompts_rendered_here_take_the_template_its_tokenizer_checkpoint_was_trained_with(tmp_path):
    from r1lab.files import CHECKPOINT_MARKER

    (tmp_path / CHECKPOINT_MARKER).write_text('{"template": "native-zero"}')
    endpoint = {"model": "served", "engine": "openai", "base_url": "http://127.0.0.1:8080/v1"}
    rendered_here = config.make_config(EvalConfig, {**endpoint, "engine_args": {"api": "completions",
                                                                              "tokenizer": str(tmp_path)}})
    assert rendered_here.template == "native-zero"
    # the chat API: the server renders with its own template (an exported GGUF carries the checkpoint's)
    chat = config.make_config(EvalConfig, {**endpoint, "engine_args": {"tokenizer": str(tmp_path)}})
    assert chat.template == EvalConfig().template
    given = config.make_config(EvalConfig, {**endpoint, "template": "native",
                                            "engine_args": {"api": "completions", "tokenizer": str(tmp_path)}})
    assert given.template == "native"
