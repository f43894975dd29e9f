"""A tiny random model trained a few GRPO steps end to end; resume after an interruption."""

import json

import pytest
import torch
from safetensors.torch import load_file

import r1lab.rl.grpo as grpo
import r1lab.rl.run as run_folder
from r1lab.config import ZeroConfig
from r1lab.models import save_checkpoint
from r1lab.rewards import register

from conftest import make_model, make_tokenizer


@register("test_digit_share")
def digit_share(completion, **_):
    """Share of digits in the response: a reward a random model gets signal from."""
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


@pytest.fixture
def tiny_path(tmp_path):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))


def config(tiny_path, out, **kw):
    base = dict(model=tiny_path, task="arithmetic", task_args={"n_train": 50, "n_test": 10}, template="native",
                rewards={"test_digit_share": 1.0, "format": 0.5}, steps=3, prompts_per_step=2, group_size=4,
                max_new_tokens=12, eval_examples=4, eval_max_new_tokens=8, lr=1e-2, warmup_steps=0,
                save_every=2, out=str(out), threads=1, temperature=1.0)
    base.update(kw)
    return ZeroConfig(**base)


def weights(folder):
    return load_file(f"{folder}/model.safetensors")


def test_grpo_changes_parameters_with_finite_loss(tiny_path, tmp_path):
    cfg = config(tiny_path, tmp_path / "run", beta=0.05, updates_per_batch=2, loss_aggregation="sequence")
    summary = grpo.train(cfg, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(r["kl"] >= 0 for r in rows) and any(r["kl"] > 0 for r in rows)
    before, after = weights(tiny_path), weights(summary["checkpoint"])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    for name in ("report.md", "plots/reward.png", "plots/length.png", "plots/reflection.png", "samples.jsonl"):
        assert (tmp_path / "run" / name).is_file()


def test_refuses_to_overwrite_a_run(tiny_path, tmp_path):
    grpo.train(config(tiny_path, tmp_path / "run", steps=1), progress=False)
    with pytest.raises(ValueError, match="--resume"):
        grpo.train(config(tiny_path, tmp_path / "run", steps=1), progress=False)


def test_resume_after_interruption_continues_from_the_checkpoint(tiny_path, tmp_path, monkeypatch):
    straight = grpo.train(config(tiny_path, tmp_path / "straight", steps=4), progress=False)

    real_update, calls = grpo.update_policy, {"n": 0}

    def dies_in_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during step 4 (after the step-2 checkpoint)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(grpo, "update_policy", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        grpo.train(config(tiny_path, tmp_path / "resumed", steps=4), progress=False)
    monkeypatch.setattr(grpo, "update_policy", real_update)
    assert not (tmp_path / "resumed" / "final").exists()

    resumed = grpo.train(config(tiny_path, tmp_path / "resumed", steps=4, resume=True), progress=False)
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a, b = weights(straight["checkpoint"]), weights(resumed["checkpoint"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # same data, seeds and optimizer state


def test_lora_with_kl_uses_the_adapter_free_model_as_reference(tiny_path, tmp_path):
    cfg = config(tiny_path, tmp_path / "lora", lora_r=4, lora_alpha=8, beta=0.1, steps=3, save_every=2, lr=5e-2)
    summary = grpo.train(cfg, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start as a no-op: policy == reference
    assert any(r["kl"] > 0 for r in rows[1:])
    assert (tmp_path / "lora" / "checkpoints" / "step-000002" / "adapter").is_dir()
    before, after = weights(tiny_path), weights(summary["checkpoint"])  # saved merged
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_incomplete_checkpoints_are_never_resumed_from(tiny_path, tmp_path):
    grpo.train(config(tiny_path, tmp_path / "run", steps=2, save_every=1), progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001", "step-000002"]  # the last step too
    fake = ckpts / "step-000009"  # looks newer but was never sealed (no r1lab_complete.json)
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    step, checkpoint = run_folder.resume_point(tmp_path / "run", config(tiny_path, tmp_path / "run", resume=True))
    assert step == 2 and checkpoint.name == "step-000002"


def test_held_out_eval_runs_every_n_steps_through_the_eval_code_with_k_samples(tiny_path, tmp_path):
    cfg = config(tiny_path, tmp_path / "run", steps=3, eval_every=1, eval_samples=3, save_every=5)
    summary = grpo.train(cfg, progress=False)
    for key in ("eval_before", "eval_after"):
        ev = summary[key]
        assert ev["samples"] == 3 and ev["n"] == 4 and ev["ci_low"] <= ev["accuracy"] <= ev["ci_high"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert ["eval_accuracy" in r for r in rows] == [True, True, False]  # the last step has eval_after


def test_the_first_step_estimates_the_time_left(tiny_path, tmp_path, capsys):
    grpo.train(config(tiny_path, tmp_path / "run"), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "estimated time left" in line]
    assert len(lines) == 1 and "for 2 more steps and the final evaluation" in lines[0] and "on cpu" in lines[0]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_gap_between_sampler_and_trainer_logprobs_is_logged(tiny_path, tmp_path, dtype):
    grpo.train(config(tiny_path, tmp_path / "run", dtype=dtype), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["logprob_gap_mean"], r["logprob_gap_max"]])).all()
               for r in rows)
    assert all(0 <= r["logprob_gap_mean"] <= r["logprob_gap_max"] for r in rows)
    if dtype == "fp32":  # the same weights and precision: the engine and the trainer agree to rounding
        assert max(r["logprob_gap_max"] for r in rows) < 1e-3
    else:  # bf16 rollouts and bf16-autocast training take different kernels: a real, measured gap
        assert max(r["logprob_gap_max"] for r in rows) > 1e-4


def test_the_logged_learning_rate_follows_the_schedule_step_by_step(tiny_path, tmp_path):
    from r1lab.optim import lr_factor

    cfg = config(tiny_path, tmp_path / "lr", steps=4, warmup_steps=2, lr_schedule="cosine", lr=1e-3)
    grpo.train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "lr" / "metrics.jsonl").read_text().splitlines()]
    # after step s the scheduler has stepped s times: the logged lr is the next step's
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * lr_factor(s, 2, 4, "cosine") for s in (1, 2, 3, 4)])


def test_lora_old_policy_logprobs_have_the_adapters_on_and_the_reference_has_them_off(tiny_path):
    import torch

    from r1lab.packing import pack
    from r1lab.policy import SINGLE, open_policy

    cfg = config(tiny_path, "unused", lora_r=4, lora_alpha=8, beta=0.1, updates_per_batch=2)
    policy, _ = open_policy(cfg, None, SINGLE)
    with torch.no_grad():  # move the adapters off zero, so that the two policies differ
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    packs = [pack([([1, 2, 3], [[4, 5, 6], [7, 8]])], 0)]
    old, ref = policy.logprobs(packs, 1.0)[0], policy.logprobs(packs, 1.0, reference=True)[0]
    trained = next(policy.train_passes(packs, 1.0))[0].detach()
    assert torch.allclose(old, trained, atol=1e-5) and not torch.allclose(old, ref, atol=1e-3)
