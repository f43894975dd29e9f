"""The GRPO family end to end on a tiny random model: every loss type, aggregation, estimator, mask and reward option
trains and logs the policy's entropy; the DAPO, Dr. GRPO and GSPO recipes run a few steps as shipped."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_grpo_e2e import config, tiny_path, weights  # noqa: F401  (tiny_path is a fixture)

import r1lab.rl.grpo as grpo
from r1lab.cli import zero_help
from r1lab.config import ZeroConfig
from r1lab.options import load_config
from r1lab.rewards import REWARDS
from r1lab.rl.advantages import ADVANTAGES
from r1lab.rl.losses import LOSS_AGGREGATIONS, LOSS_TYPES

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


OPTIONS = {
    "gspo": dict(loss_type="gspo", loss_aggregation="micro_batch", updates_per_batch=2, clip_low=3e-4,
                 clip_high=4e-4, advantage="rloo"),
    "cispo": dict(loss_type="cispo", loss_aggregation="constant", clip_low=1.0, clip_high=4.0,
                  advantage="reinforce_plus_plus"),
    "masks_and_bonus": dict(entropy_coef=0.01, top_entropy=0.2, off_policy_threshold=0.5, mask_truncated=True,
                            advantage="reinforce_plus_plus_baseline", dtype="bf16"),
    "rewards": dict(normalize_rewards=True, advantage="batch_std", tags={"answer": ["<a>", "</a>"]},
                    rewards={"test_digit_share": 1.0, "format": 0.5, "repetition": 0.2, "reasoning_steps": 0.1},
                    reward_args={"repetition": {"ngram_size": 2}}),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_each_algorithm_option_trains_and_logs_entropy(tiny_path, tmp_path, name):  # noqa: F811
    cfg = config(tiny_path, tmp_path / "run", **OPTIONS[name])
    summary = grpo.train(cfg, progress=False)
    logged = rows(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in logged)
    # null where no token was in the loss (here: every completion of a step truncated under mask_truncated)
    entropies = [r["entropy"] for r in logged if r["entropy"] is not None]
    assert entropies and all(0 < e <= math.log(cfg_vocab(tiny_path)) for e in entropies)
    before, after = weights(tiny_path), weights(summary["checkpoint"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "run" / "plots" / "entropy.png").is_file()
    assert "policy entropy" in (tmp_path / "run" / "report.md").read_text()
    if name == "masks_and_bonus":
        assert all("off_policy_masked" in r and "truncated_masked" in r for r in logged)
    else:
        assert not any("off_policy_masked" in r for r in logged)  # a term the run does not have is not logged


def cfg_vocab(path) -> int:
    return json.loads((Path(path) / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("recipe", ["dapo", "drgrpo", "gspo"])
def test_the_algorithm_recipes_run_a_few_steps(tiny_path, tmp_path, recipe):  # noqa: F811
    shipped = load_config(ZeroConfig, ["--config", str(RECIPES / f"{recipe}.yaml")])
    small = config(tiny_path, tmp_path / recipe).__dict__  # the tiny model, task size and budget of the e2e tests
    algorithm = {k: getattr(shipped, k) for k in ("advantage", "loss_type", "loss_aggregation", "clip_low",
                                                    "clip_high", "beta", "dynamic_sampling", "updates_per_batch",
                                                    "mask_truncated")}
    rewards = {"test_digit_share": 1.0, **shipped.rewards}  # a signal a random model can get, and the recipe's
    summary = grpo.train(ZeroConfig(**{**small, **algorithm, "rewards": rewards, "steps": 2}), progress=False)
    assert summary["steps"] == 2 and all(math.isfinite(r["loss"]) for r in rows(tmp_path / recipe))


def test_zero_help_lists_every_loss_type_aggregation_estimator_and_reward_once():
    text = zero_help()
    builtin = [name for name, fn in REWARDS.items() if fn.__module__.startswith("r1lab.")]  # not the tests' own
    for names in (LOSS_TYPES, LOSS_AGGREGATIONS, ADVANTAGES, builtin):
        for name in names:
            lines = [line for line in text.splitlines() if line.split()[:1] == [name]]
            assert len(lines) >= 1 and len(lines[0].split()) > 3, name  # its own line, with a description
