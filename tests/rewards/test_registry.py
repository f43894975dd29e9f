"""The reward registry: lookup by name, weighted scoring, None skipping, per-reward diagnostics."""

import math

import pytest

import r1lab.rewards as rewards
from r1lab.rewards import REWARDS, get_reward, register, score

BUILT_IN = {"accuracy", "format", "tag_count", "language_consistency", "overlong", "code"}


def test_built_in_rewards_register_on_import():
    assert BUILT_IN <= set(REWARDS)
    assert get_reward("format") is rewards.format.format_reward
    assert get_reward("overlong") is rewards.length.overlong


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown reward 'nope'.*format.*tag_count"):
        get_reward("nope")


def test_register_twice_is_an_error_but_reregistering_the_same_function_is_not():
    def fn(completion, **_):
        return 1.0

    try:
        assert register("test_registry_fn")(fn) is fn
        assert register("test_registry_fn")(fn) is fn
        with pytest.raises(ValueError, match="registered twice"):
            register("test_registry_fn")(lambda c, **_: 0.0)
    finally:
        REWARDS.pop("test_registry_fn", None)


def test_score_weights_skips_none_and_logs_each_reward():
    completions = [
        "<think>\n2+3=5</think><answer>5</answer>",
        "<think>\n2+3=6</think><answer>6</answer><answer>5</answer>",
        "the answer is 5",
    ]
    examples = [{"answer": "5", "max_length": 8}, {"answer": "5", "max_length": 8}, {"answer": "5"}]
    s = score(
        completions, examples,
        {"format": (get_reward("format"), 0.5), "overlong": (get_reward("overlong"), 1.0)},
        completion_lengths=[4, 7, 100],
    )
    assert s.per_reward["format"] == [1.0, 0.0, 0.0]
    assert s.per_reward["overlong"] == [0.0, -0.5, None]          # no max_length: skipped, not 0
    assert s.totals == [0.5, -0.5, 0.0]
    assert s.means() == {"format": pytest.approx(1 / 3), "overlong": -0.25}


def test_score_passes_completion_length_and_example_fields():
    seen = []

    def spy(completion, **example):
        seen.append(example)
        return None

    s = score(["ab"], [{"answer": "1", "language": "en"}], {"spy": (spy, 1.0)})
    assert seen == [{"completion_length": 2, "answer": "1", "language": "en"}]
    assert s.totals == [None] and math.isnan(s.means()["spy"])  # judged by no reward: skipped, not 0
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        score(["a", "b"], [{}], {"spy": (spy, 1.0)})


def test_a_reward_gets_the_settings_it_declares_and_only_those():
    from r1lab.rewards.build import build_rewards
    from r1lab.tasks import get_task

    seen = []

    def spy(completion, **given):
        seen.append(given)
        return 1.0

    task = get_task("arithmetic", n_train=4, n_test=1)
    try:
        register("test_needs_language", needs=("language", "max_length"))(spy)
        built = build_rewards({"test_needs_language": 2.0, "overlong": 1.0, "accuracy": 1.0}, task, language="zh",
                              max_length=50, device="cpu")
        fn, weight = built["test_needs_language"]
        assert weight == 2.0 and fn("x", answer="1") == 1.0
        assert seen == [{"language": "zh", "max_length": 50, "answer": "1"}]  # not device, not the verifier
        assert built["overlong"][0]("...", completion_length=45) == pytest.approx(-7 / 12)  # max_length 50 given
        example = task.examples("train")[0]
        good = f"<think>\nok</think><answer>{example['answer']}</answer>"
        assert built["accuracy"][0](good, **example) == task.verify(good, **example) == 1.0  # the task's verifier
        with pytest.raises(ValueError, match="needs=.*'gpu'.*may need only language, max_length"):
            register("test_needs_gpu", needs=("gpu",))
        with pytest.raises(TypeError, match="give only language, max_length, device"):
            build_rewards({"format": 1.0}, task, languages="en")
        with pytest.raises(ValueError, match="'nope' is unknown; use one of accuracy, code, code_format"):
            build_rewards({"nope": 1.0}, task)
    finally:
        REWARDS.pop("test_needs_language", None)


def test_a_reward_that_needs_settings_keeps_its_batch_call():
    from r1lab.rewards.build import build_rewards
    from r1lab.tasks import get_task

    calls = {"batch": 0, "one": 0}

    def rm(completion, *, language, **_):
        calls["one"] += 1
        return 1.0

    def batch(completions, examples):
        calls["batch"] += 1
        return [float(ex["language"] == "zh") for ex in examples]

    rm.batch = batch
    try:
        register("test_batched_needs", needs=("language",))(rm)
        fn, _ = build_rewards({"test_batched_needs": 1.0}, get_task("arithmetic", n_train=4, n_test=1),
                              language="zh")["test_batched_needs"]
        assert score(["a", "b", "c"], [{}] * 3, {"x": (fn, 1.0)}).totals == [1.0, 1.0, 1.0]
        assert calls == {"batch": 1, "one": 0}
        with pytest.raises(ValueError, match="registered twice: .*accuracy has that name; choose another"):
            register("accuracy")(lambda c, **_: 1.0)
        with pytest.raises(ValueError, match="needs="):
            register("test_needs_str", needs="language")
    finally:
        REWARDS.pop("test_batched_needs", None)
