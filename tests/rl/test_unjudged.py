"""A completion that no reward could judge (every reward returned None) is skipped, not counted as wrong: it is out
of its group's mean and std (advantage 0), out of the loss (its tokens weigh nothing), and out of the reward and
accuracy figures, which say how many were skipped (issue 29, bug 1)."""

import math

import pytest
import torch

from r1lab.config import ZeroConfig
from r1lab.engine.base import Completion, Prompt
from r1lab.policy import SINGLE
from r1lab.rewards import score
from r1lab.rl import grpo
from r1lab.rl.advantages import ADVANTAGES
from r1lab.rl.batch import train_batch
from r1lab.rl.diagnostics import step_metrics
from r1lab.rollout import Group, score_group

JUDGE = {"r": (lambda completion, **_: {"right": 1.0, "wrong": 0.0}.get(completion), 1.0)}  # None: cannot judge


def group(texts, sizes=None):
    sizes = sizes or [2] * len(texts)
    return Group(example={"prompt": "q"}, prompt=Prompt((1, 2)),
                 completions=[Completion(0, list(range(n)), [-1.0] * n, "stop", text=t) for t, n in zip(texts, sizes)])


def test_the_total_of_a_completion_no_reward_judged_is_none():
    scores = score(["right", "wrong", "???"], [{}] * 3, JUDGE)
    assert scores.totals == [1.0, 0.0, None]
    g = group(["right", "wrong", "???"])
    score_group(g, JUDGE)
    assert g.rewards == [1.0, 0.0, None] and g.has_signal
    one = group(["right", "???"])
    score_group(one, JUDGE)
    assert not one.has_signal  # one judged completion compares with nothing


@pytest.mark.parametrize("estimator", sorted(ADVANTAGES))
def test_it_stays_out_of_its_groups_statistics_and_gets_no_advantage(estimator):
    skipping, without = group(["right", "wrong", "???"]), group(["right", "wrong"])
    for g in (skipping, without):
        score_group(g, JUDGE)
    grpo.set_advantages([skipping], estimator)
    grpo.set_advantages([without], estimator)
    assert skipping.advantages[:2] == pytest.approx(without.advantages) and skipping.advantages[2] == 0.0
    if estimator == "grpo":
        assert skipping.advantages == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], abs=1e-3)


def test_its_tokens_are_out_of_the_loss_and_out_of_every_average():
    g = group(["right", "???", "wrong"], sizes=[2, 3, 4])
    score_group(g, JUDGE)
    grpo.set_advantages([g], "grpo")
    for aggregation, judged in (("token", [1 / 6] * 2 + [1 / 6] * 4), ("sequence", [1 / 4] * 2 + [1 / 8] * 4)):
        weights = train_batch([g], False, aggregation, 2, 0, SINGLE, "cpu").weights
        assert weights.tolist() == pytest.approx(judged[:2] + [0.0] * 3 + judged[2:])
        assert float(weights.sum()) == pytest.approx(1.0)


def test_the_step_metrics_leave_it_out_and_count_it():
    g = group(["right", "wrong", "???", "???"])
    score_group(g, {"accuracy": JUDGE["r"]})
    g.advantages = [0.0] * 4
    m = step_metrics(1, [g], {"loss": 0.0, "clip_frac": 0.0}, 0.0, 0.0, ZeroConfig())
    assert m["reward"] == 0.5 and m["accuracy"] == 0.5  # not 0.25: the two unjudged are not wrong answers
    assert m["unjudged_frac"] == 0.5 and m["accuracy_unjudged"] == 2
    assert torch.isfinite(torch.tensor(m["reward"]))
