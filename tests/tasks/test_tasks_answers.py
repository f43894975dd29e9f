"""Answer extraction: which part of a response counts, and which answer inside it."""

import pytest

from r1lab.chat import final_answer_span
from r1lab.tasks.answers import extract_answer, extract_boxed, last_number, score_answer


@pytest.mark.parametrize("completion, span", [
    ("<think>a</think><answer>1</answer>", "1"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),  # repeated answer blocks: the last one
    ("<think><answer>9</answer></think>after", "after"),  # an answer block inside the thinking is ignored
    ("<think>one</think>two</think>three", "three"),  # after the *last* </think>
    ("<think>still thinking, maybe 42", ""),  # cut off mid-thought: no final answer
    ("no tags at all", "no tags at all"),
])
def test_final_answer_span(completion, span):
    assert final_answer_span(completion) == span


@pytest.mark.parametrize("text, boxed", [
    ("\\boxed{1} and \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\fbox{7}", "7"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
    ("\\boxed{5} then a cut-off \\boxed{6", "5"),  # the last *complete* box
    ("\\boxed{}", ""),
    ("nothing here", None),
])
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize("text, number", [
    ("so -3", "-3"),
    ("total 1,234,567 apples", "1234567"),
    ("about 2.5.", "2.5"),
    ("3/4 of it", "3/4"),
    ("5-3=2", "2"),
    ("x-3", "3"),  # a minus after a letter is subtraction, not a sign
    ("(-4)", "-4"),
    ("it is \u22125", "-5"),  # a unicode minus
    ("$1,000.", "1000"),
    ("word", None),
])
def test_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize("completion, answer", [
    ("<think>\\boxed{1}</think>\\boxed{2} then \\boxed{3}", "3"),  # several boxes: the last counts
    ("<think>x</think><answer>I get \\boxed{5}</answer>", "5"),
    ("<answer> x = 3 </answer>", "x = 3"),  # a bare formula is kept whole
    ("<answer>The total is 18 dollars.</answer>", "18"),  # prose: the last number
    ("<answer>12 \\text{ cm}</answer>", "12"),
    ("<think>The answer is 12.</think>", None),  # only inside the thinking
    ("<think>The answer is 12.</think>Sorry.", None),
    ("<think>\\boxed{4}", None),  # never closed the thinking
    ("The answer is \\boxed{}. It is 6", "6"),  # an empty box does not count
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


@pytest.mark.parametrize("pred", ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", ".5", "$0.50$"])
def test_one_half_in_every_spelling(pred):
    assert score_answer(f"<answer>{pred}</answer>", "1/2") == 1.0
    assert score_answer(f"\\boxed{{{pred}}}", "\\frac{1}{2}") == 1.0


@pytest.mark.parametrize("completion", [
    "<think>It is 8.</think><answer>7</answer>",  # right only in the thinking
    "<answer>8</answer><answer>7</answer>",  # right only in an earlier answer block
    "\\boxed{8} no wait \\boxed{7}",  # right only in an earlier box
    "<think>8",  # cut off
    "I cannot solve this.",
])
def test_adversarial_completions_score_zero(completion):
    assert score_answer(completion, "8") == 0.0


def test_no_reference_cannot_judge():
    assert score_answer("\\boxed{3}", "") is None
    assert score_answer("\\boxed{3}", 3) == 1.0  # a numeric reference field
