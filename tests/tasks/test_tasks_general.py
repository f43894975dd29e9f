"""The general task: helpful and harmless prompts with kind general, judged by no rule."""

from r1lab.rewards.build import build_rewards
from r1lab.tasks import TASKS, get_task
from r1lab.tasks.general import harmless_prompts, helpful_requests


def test_general_examples_are_kind_general_with_no_answer_and_verify_is_none():
    task = get_task("general", helpful=30, harmless=30, test_size=10)
    train, test = task.examples("train"), task.examples("test")
    assert "general" in TASKS and len(train) == 50 and len(test) == 10
    assert all(e["kind"] == "general" and e["answer"] == "" and e["prompt"] for e in train + test)
    assert {e["source"] for e in train + test} == {"helpful", "harmless"}
    assert task.verify("Paris.", **train[0]) is None
    rewards = build_rewards({"accuracy": 1.0}, task)
    assert rewards["accuracy"][0]("anything", **train[0]) is None  # skipped, not 0


def test_prompts_come_from_local_material_and_are_distinct():
    requests = helpful_requests(100, seed=1)
    assert len({r["prompt"] for r in requests}) == 100 and all(r["reply"] != r["wrong"] for r in requests)
    harmless = harmless_prompts()
    assert 250 <= len(harmless) <= 300 and len(set(harmless)) == len(harmless)
