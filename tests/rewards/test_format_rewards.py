"""format, tag_count and reflection_rate, including the shapes a policy finds to game them."""

import math

import pytest

from r1lab.rewards.format import REFLECTION_WORDS, format_reward, reflection_rate, tag_count

CLEAN = "<think>\n2+3=5</think><answer>5</answer>"  # R1 template: prefill "<think>\n" + generation

MALFORMED = {
    "repeated think blocks": "<think>a</think><think>b</think><answer>5</answer>",
    "repeated answer blocks": "<think>a</think><answer>5</answer><answer>6</answer>",
    "answer only inside think": "<think>so <answer>5</answer></think>",
    "answer before think": "<answer>5</answer><think>2+3=5</think>",
    "missing </think>": "<think>\n2+3=5<answer>5</answer>",
    "missing </answer>": "<think>\n2+3=5</think><answer>5",
    "stray closing tag": "<think>a</think></think><answer>5</answer>",
    "tags inside the answer": "<think>a</think><answer><think>5</think></answer>",
    "nested think": "<think><think>a</think></think><answer>5</answer>",
    "text after the answer": "<think>a</think><answer>5</answer> and also 6",
    "text before think": "Sure! <think>a</think><answer>5</answer>",
    "no tags": "the answer is 5",
}


@pytest.mark.parametrize("completion", [
    CLEAN,
    "<think>2+3=5</think><answer>5</answer>",
    "  <think>\n2+3=5\n</think>\n\n<answer>\n5\n</answer>\n",
    "<think>\nline one\nline two\n</think> <answer>x = 5</answer>",
])
def test_format_accepts_one_think_then_one_answer(completion):
    assert format_reward(completion) == 1.0
    assert tag_count(completion) == 1.0


@pytest.mark.parametrize("name", MALFORMED)
def test_format_rejects_malformed(name):
    assert format_reward(MALFORMED[name]) == 0.0


@pytest.mark.parametrize("completion", [
    "<think>\n</think><answer>5</answer>",
    "<think>\n   \n</think><answer>5</answer>",
    "<think>a</think><answer> </answer>",
    "<think>a</think><answer>\n</answer>",
])
def test_format_rejects_empty_parts(completion):
    assert format_reward(completion) == 0.0


@pytest.mark.parametrize("name", [n for n in MALFORMED if n != "text before think"])
def test_tag_count_scores_malformed_below_clean(name):
    assert 0.0 <= tag_count(MALFORMED[name]) < tag_count(CLEAN) == 1.0


def test_tag_count_ignores_text_before_think_which_format_rejects():
    assert tag_count(MALFORMED["text before think"]) == 1.0


def test_tag_count_partial_credit():
    assert tag_count("the answer is 5") == 0.0
    assert tag_count("<think>\nreasoning that never ends") == 0.25
    assert tag_count("<think>\n2+3=5</think>5") == 0.5
    assert tag_count(MALFORMED["missing </answer>"]) == 0.75
    assert tag_count(MALFORMED["answer before think"]) == pytest.approx(0.75 - 0.001 * 20)  # + trailing
    assert tag_count(MALFORMED["repeated think blocks"]) == 0.5


def test_tag_count_trailing_text_penalty_is_small_capped_and_ignores_whitespace():
    assert tag_count(CLEAN + "\n\n  ") == 1.0
    assert tag_count(CLEAN + "x" * 10) == pytest.approx(0.99)
    assert tag_count(CLEAN + "x" * 10_000) == 0.75
    assert tag_count("<think>a</think></think>x" + "</answer>" * 2 + "y" * 10_000) >= 0.0


def test_reflection_rate_whole_words_case_insensitive():
    assert set(REFLECTION_WORDS) >= {"wait", "verify", "let me check", "hmm"}
    hits = ["WAIT.", "Let me double-check.", "let me\ncheck", "I re-evaluate", "Hmm, no", "to verify:"]
    misses = ["awaiting", "verifying? no: verification", "hmmm", "check me", "recheckable"]
    assert reflection_rate(hits) == 1.0
    assert reflection_rate(misses) == 0.0
    assert reflection_rate(hits[:1] + misses[:3]) == 0.25
    assert reflection_rate(iter(["wait"])) == 1.0
    assert math.isnan(reflection_rate([]))
