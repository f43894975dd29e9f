"""The reward registry: lookup by name, weighted scoring, None skipping, per-reward diagnostics."""

import math

import pytest

import r1lab.rewards as rewards
from r1lab.rewards import REWARDS, get_reward, register, score

BUILT_IN = {"format", "tag_count", "language_consistency", "overlong"}


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
    assert s.totals == [0.0] and math.isnan(s.means()["spy"])
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        score(["a", "b"], [{}], {"spy": (spy, 1.0)})
