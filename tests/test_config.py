import pytest

from r1lab.config import ZeroConfig, load_config


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
    with pytest.raises(SystemExit, match=match):
        load_config(ZeroConfig, argv)


def test_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stepz: 3\n")
    with pytest.raises(SystemExit, match="unknown option 'stepz'"):
        load_config(ZeroConfig, ["--config", str(recipe)])
    with pytest.raises(SystemExit, match="not found"):
        load_config(ZeroConfig, ["--config", str(tmp_path / "missing.yaml")])


def test_every_task_builds_with_the_default_task_args():
    from r1lab.config import ZeroConfig, task_args_for
    from r1lab.tasks import TASKS, get_task

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
