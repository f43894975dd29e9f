"""Reward-model rewards: spec checking, part=summary vs whole, `on` filtering, and the batch path equal to the
per-item one, with a tiny reward model trained in-process."""

import json

import pytest

from r1lab.config import ZeroConfig, reward_spec_problems
from r1lab.models import save_checkpoint
from r1lab.rewards import score
from r1lab.rewards.build import build_rewards
from r1lab.rewards.reward_model import ModelReward, judged_part, load_reward_model
from r1lab.rm.train import value_head_model
from r1lab.tasks import get_task

from conftest import make_model, make_tokenizer

META = {"kind": "reward_model", "max_length": 128, "score_mean": 0.5, "score_std": 2.0, "threshold": 0.25}


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    """A reward model with a random head (scores differ per text), saved as r1lab rm saves one."""
    tok = make_tokenizer()
    model = value_head_model(make_model(tok, seed=3), tok.pad_token_id)
    return str(save_checkpoint(model, tok, tmp_path_factory.mktemp("rm") / "final", meta=META))


def test_a_spec_builds_a_model_reward_loaded_once_per_path(rm_path):
    task = get_task("general", helpful=4, harmless=0, test_size=0)
    rewards = build_rewards({"format": 0.5, "helpful": {"reward_model": rm_path, "part": "summary", "weight": 2.0},
                             "harmless": {"reward_model": rm_path, "part": "whole", "on": "general"}}, task,
                            device="cpu")
    (helpful, w_help), (harmless, w_harm) = rewards["helpful"], rewards["harmless"]
    assert isinstance(helpful, ModelReward) and (w_help, w_harm) == (2.0, 1.0) and rewards["format"][1] == 0.5
    assert helpful.rm is harmless.rm  # one model for both
    assert (helpful.part, harmless.part, harmless.on) == ("summary", "whole", "general")


def test_summary_and_whole_score_different_text(rm_path):
    rm = load_reward_model(rm_path, device="cpu")
    summary, whole = ModelReward(rm, part="summary"), ModelReward(rm, part="whole")
    response = "<think>\nThe user wants a capital.\n</think>\n\nThe capital of France is Paris."
    example = {"prompt": "What is the capital of France?"}
    assert judged_part(response, "summary") == "The capital of France is Paris."
    assert summary(response, **example) == pytest.approx(summary("The capital of France is Paris.", **example))
    assert whole(response, **example) != pytest.approx(summary(response, **example))
    assert whole(response, **example) == pytest.approx(rm.normalise(rm.raw_scores([example["prompt"]], [response])[0]))


def test_on_limits_the_reward_to_its_kind_and_skips_others(rm_path):
    reward = ModelReward(load_reward_model(rm_path, device="cpu"), part="whole", on="general")
    examples = [{"prompt": "Hi", "kind": "general"}, {"prompt": "2+2?", "answer": "4"}, {"prompt": "Yo", "kind": "x"}]
    scores = reward.batch(["Hello!", "4", "Hey"], examples)
    assert scores[0] is not None and scores[1:] == [None, None]
    assert reward("4", prompt="2+2?", answer="4") is None


def test_the_batch_path_equals_the_per_item_path_and_score_uses_it(rm_path):
    reward = ModelReward(load_reward_model(rm_path, device="cpu"), part="summary", batch_size=3)
    completions = ["<think>a</think>Paris.", "Lyon", "<think>b</think>", "Rome is not it.", "Paris", "Nice."]
    examples = [{"prompt": "Capital of France?"}] * 4 + [{"prompt": "Say a city."}] * 2
    one_by_one = [reward(c, **e) for c, e in zip(completions, examples)]
    assert reward.batch(completions, examples) == pytest.approx(one_by_one, abs=1e-5)
    calls = []
    batch = reward.batch

    class Spy(ModelReward):
        def batch(self, completions, examples):
            calls.append(len(completions))
            assert all("completion_length" in e for e in examples)
            return batch(completions, examples)

    spy = Spy(reward.rm, part="summary")
    s = score(completions, examples, {"rm": (spy, 0.5)}, completion_lengths=[1] * 6)
    assert calls == [6] and s.per_reward["rm"] == pytest.approx(one_by_one, abs=1e-5)
    assert s.totals == pytest.approx([0.5 * v for v in one_by_one], abs=1e-5)


def test_scores_are_normalised_with_the_stored_statistics_and_pass_uses_the_threshold(rm_path):
    rm = load_reward_model(rm_path, device="cpu")
    raw = rm.raw_scores(["Hi"], ["Hello"])[0]
    assert ModelReward(rm, part="whole")("Hello", prompt="Hi") == pytest.approx((raw - 0.5) / 2.0)
    assert ModelReward(rm, part="whole", output="pass")("Hello", prompt="Hi") == (1.0 if raw >= 0.25 else 0.0)


@pytest.mark.parametrize("spec, match", [
    ({"reward_model": "RM", "parts": "summary"}, "unknown key 'parts'; a reward_model spec takes reward_model, part"),
    ({"reward_model": "RM", "part": "answer"}, "part='answer': use summary | whole"),
    ({"reward_model": "RM", "output": "logit"}, "output='logit'"),
    ({"reward_model": "RM", "weight": "heavy"}, "weight='heavy'"),
    ({"part": "whole"}, "exactly one of reward_model"),
    ({"reward_model": "RM", "judge": {}}, "exactly one of reward_model"),
    ({"reward_model": "no/such/folder"}, "no/such/folder does not exist; train one with `r1lab rm"),
    ({"judge": {"base_url": "localhost:8000", "model": "m"}}, "judge needs rubric"),
    ({"judge": {"base_url": "localhost:8000", "model": "m", "rubric": "r"}}, "must start with http"),
])
def test_bad_specs_are_refused_by_the_config_and_by_build_rewards(rm_path, spec, match):
    spec = {k: rm_path if v == "RM" else v for k, v in spec.items()}
    with pytest.raises(ValueError, match=match):
        ZeroConfig(rewards={"accuracy": 1.0, "helpful": spec}).validate()
    with pytest.raises(ValueError, match=match):
        build_rewards({"helpful": spec}, get_task("general", helpful=2, harmless=0, test_size=0), device="cpu")


def test_incomplete_and_non_reward_model_checkpoints_say_what_to_do(tmp_path, rm_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert "not a complete checkpoint (no r1lab_complete.json)" in reward_spec_problems(
        "h", {"reward_model": str(tmp_path / "half")})[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(rm_path, target_is_directory=True)
    assert f"give its checkpoint, {run / 'final'}" in reward_spec_problems("h", {"reward_model": str(run)})[0]
    tok = make_tokenizer()
    policy = save_checkpoint(make_model(tok), tok, tmp_path / "policy", meta={"stage": "sft"})
    assert reward_spec_problems("h", {"reward_model": str(policy)}) == []  # complete: the kind is read at load
    with pytest.raises(ValueError, match="not a reward model .*r1lab rm --data"):
        build_rewards({"h": {"reward_model": str(policy)}}, get_task("general", helpful=2, harmless=0, test_size=0))
    assert json.loads((policy / "r1lab_complete.json").read_text()) == {"stage": "sft"}


def test_the_names_config_checks_are_the_ones_the_rewards_implement():
    import dataclasses

    from r1lab import config
    from r1lab.rewards import judge, reward_model

    assert config.REWARD_PARTS == reward_model.PARTS and config.REWARD_OUTPUTS == reward_model.OUTPUTS
    assert set(config.JUDGE_KEYS) == {f.name for f in dataclasses.fields(judge.Judge)}
    assert config.RmConfig in config.RUN_CONFIGS
