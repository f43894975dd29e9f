from r1lab.config import ZeroConfig
from r1lab.engine import TorchEngine
from r1lab.rewards import register
from r1lab.rewards.build import build_rewards
from r1lab.rl import grpo
from r1lab.rl.diagnostics import check_step
from r1lab.tasks import get_task


def metrics(**kw):
    base = {"zero_variance_frac": 0.0, "truncated_frac": 0.0, "mean_length": 20.0, "loss": 0.1}
    base.update(kw)
    return base


def test_warnings_fire_on_the_conditions_they_name():
    assert check_step(metrics(), [], 64) == []
    assert "no learning signal" in check_step(metrics(zero_variance_frac=0.75), [], 64)[0]
    assert "max_new_tokens=64" in check_step(metrics(truncated_frac=0.9), [], 64)[0]
    assert "KL" in check_step(metrics(kl=3.0), [], 64)[0]
    history = [metrics(mean_length=10.0)] * 3
    assert "repetition" in check_step(metrics(mean_length=60.0), history, 64)[0]
    assert check_step(metrics(mean_length=12.0), history, 64) == []
    assert "not finite" in check_step(metrics(loss=float("nan")), [], 64)[0]


@register("test_signal_only_for_plus")
def signal_only_for_plus(completion, prompt="", **_):
    if "+" not in prompt:
        return 0.0  # every sample of such a prompt scores the same: no signal
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


def test_dynamic_sampling_keeps_only_groups_with_signal(tiny):
    model, tok = tiny
    task = get_task("arithmetic", operators="+-*", n_train=60, n_test=10)
    cfg = ZeroConfig(template="native", rewards={"test_signal_only_for_plus": 1.0}, prompts_per_step=3,
                     group_size=4, max_new_tokens=8, dynamic_sampling=True, max_sampling_rounds=6, stop=[])
    engine = TorchEngine(model, tok)
    rewards = build_rewards(cfg.rewards, task)
    plain_cfg = ZeroConfig(**{**cfg.__dict__, "dynamic_sampling": False})
    # a step whose first draw includes prompts without "+" (groups with no signal)
    step = next(s for s in range(20)
                if any("+" not in ex["prompt"] for ex in grpo._batch_examples(task.examples("train"), 3, 0, s, 0)))
    plain = grpo.sample_groups(engine, task, task.examples("train"), rewards, plain_cfg, step)
    assert len(plain) == 3 and any(not g.has_signal for g in plain)
    groups = grpo.sample_groups(engine, task, task.examples("train"), rewards, cfg, step)
    assert len(groups) == 3
    assert all("+" in g.example["prompt"] and g.has_signal for g in groups)
