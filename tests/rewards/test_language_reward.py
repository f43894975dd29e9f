"""language_consistency: share of the reasoning's words written in the target language's script."""

import pytest

from r1lab.rewards.language import LANGUAGE_SCRIPTS, language_consistency, reasoning_text


def wrap(reasoning: str) -> str:
    return f"<think>\n{reasoning}\n</think><answer>42</answer>"


def test_pure_english_is_one_and_mixed_is_a_share():
    assert language_consistency(wrap("Let me add the numbers first.")) == 1.0
    assert language_consistency(wrap("add them 相加")) == 0.5
    assert language_consistency(wrap("add them 相加"), language="zh") == 0.5
    assert language_consistency(wrap("so the sum 所以和是"), language="zh") == pytest.approx(4 / 7)


def test_numbers_punctuation_and_math_count_for_neither_side():
    english = "We get $x^2 + 1 = 5$, so \\(x = 2\\); check: 2+2=4, x^2=4, \\frac{8}{4} = 2."
    assert language_consistency(wrap(english)) == 1.0
    assert language_consistency(wrap("所以 $x = 2$，2+2=4。"), language="zh") == 1.0
    assert language_consistency(wrap("2+3=5. 42!")) is None


def test_only_the_reasoning_is_judged():
    chinese_answer = "<think>\nadd the numbers\n</think><answer>答案是五</answer>"
    assert language_consistency(chinese_answer) == 1.0
    assert language_consistency("add the numbers <answer>答案是五</answer>") == 1.0  # no think block
    assert language_consistency("<think>\nadd the numbers, truncated") == 1.0       # unclosed think
    assert reasoning_text("<think>a</think><answer>b</answer>") == "a"


def test_empty_reasoning_is_none():
    assert language_consistency("<think>\n</think><answer>5</answer>") is None
    assert language_consistency("<answer>5</answer>") is None
    assert language_consistency("") is None


@pytest.mark.parametrize("language, reasoning", [
    ("en", "Naïve café résumé"),
    ("fr", "Il faut d'abord additionner les deux nombres."),
    ("de", "Zuerst addieren wir die Zahlen, dann prüfen wir das Ergebnis."),
    ("es", "Primero sumamos los números."),
    ("zh", "首先把两个数相加"),
    ("ru", "Сначала сложим два числа."),
    ("ja", "まず二つの数を足します"),
    ("ko", "먼저 두 수를 더합니다"),
    ("ar", "أولاً نجمع العددين"),
    ("zh-CN", "首先相加"),
    ("EN", "add"),
])
def test_each_supported_language_scores_its_own_script_one(language, reasoning):
    assert language_consistency(wrap(reasoning), language=language) == 1.0


def test_other_scripts_do_not_count_for_english():
    assert language_consistency(wrap("Сначала сложим"), language="en") == 0.0
    assert language_consistency(wrap("add сложим"), language="en") == 0.5
    assert language_consistency(wrap("add them"), language="ru") == 0.0
    assert language_consistency(wrap("漢字かな"), language="ja") == 1.0
    assert language_consistency(wrap("漢字かな"), language="zh") == 0.5


def test_language_is_read_from_the_example_and_unknown_is_an_error():
    example = {"prompt": "1+1?", "answer": "2", "language": "zh", "completion_length": 9}
    assert language_consistency(wrap("相加"), **example) == 1.0
    with pytest.raises(ValueError, match="supported: .*en.*zh"):
        language_consistency(wrap("add"), language="klingon")
    assert {"en", "zh", "ru", "ja", "ko", "ar", "fr", "de", "es"} <= set(LANGUAGE_SCRIPTS)


def test_text_before_the_think_block_is_not_reasoning():
    assert language_consistency("Sure, 让我想想. <think>add them</think><answer>5</answer>") == 1.0
    assert language_consistency("Let me think <think> 先相加 then add") == 0.4  # cut off inside the think block
