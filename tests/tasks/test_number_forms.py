"""A final answer written without ``\\boxed{}`` or ``<answer>`` is read as a whole number, never a piece of one
(issue 29, bug 3): LaTeX fractions, a fraction ending a sentence, LaTeX and typographic thousands separators, digits
grouped by spaces, decimals without a leading zero. A fraction with a formula in it gives no number at all."""

import pytest

from r1lab.rewards.math import verify_math
from r1lab.tasks.answers import extract_answer, score_answer

READ_WHOLE = [  # (reply, the number it gives)
    ("so the probability is $\\frac{1}{9}$", "1/9"),
    ("so the probability is $\\dfrac{12}{5}$.", "12/5"),
    ("so the probability is $\\tfrac{1}{3}$", "1/3"),
    ("so the probability is $\\cfrac{1}{3}$", "1/3"),
    ("so the probability is $\\frac13$", "1/3"),
    ("so the probability is $\\frac3{4}$", "3/4"),
    ("the answer is $-\\frac{10}{9}$", "-10/9"),
    ("The probability is 2/3.", "2/3"),
    ("In all, $14{,}916$ ways", "14916"),
    ("She ends with $10,\\!455$.", "10455"),
    ("That is 1\\,000 metres", "1000"),
    ("That is 1\u2009000 metres", "1000"),
    ("That is 1\u202f000\u202f000 metres", "1000000"),
    ("That is 1 000 metres", "1000"),
    ("the share is .75", "0.75"),
    ("the change is -.5", "-0.5"),
]


@pytest.mark.parametrize("reply, number", READ_WHOLE)
def test_a_number_is_read_whole(reply, number):
    assert extract_answer(reply) == number
    assert score_answer(reply, number) == 1.0


@pytest.mark.parametrize("reply, piece", [("so it is $\\frac{1}{9}$", "9"), ("so it is $\\frac{1}{9}$", "1"),
                                          ("it is 2/3.", "2"), ("$14{,}916$", "916"), ("1 000", "0"),
                                          ("1 000", "000"), ("$10,\\!455$", "455")])
def test_a_piece_of_a_number_is_never_the_answer(reply, piece):
    assert score_answer(reply, piece) == 0.0


def test_a_number_inside_a_formula_is_not_the_answer():
    assert extract_answer("x = $\\frac{1+\\sqrt{5}}{2}$") is None
    assert score_answer("x = $\\frac{1+\\sqrt{5}}{2}$", "2") == 0.0
    assert extract_answer("first 3, then $\\frac{a}{2}$") == "3"


def test_verify_math_reads_grouped_digits_as_one_number():
    assert not verify_math("0", "1 000")  # math-verify alone reads "1 000" as 1 x 000
    assert verify_math("1000", "1 000") and verify_math("1000", "1\\,000") and verify_math("14916", "14{,}916")
    assert verify_math("1/3", "\\cfrac{1}{3}") and not verify_math("3", "\\frac{1}{3}")


def test_lists_and_ranges_keep_their_numbers_apart():
    assert extract_answer("Pages 10-12 of 3,2") == "2"
    assert extract_answer("between 1 and 2, say 1.5") == "1.5"
    assert extract_answer("x = 12 345 678") == "12345678" and extract_answer("pick 7 12") == "12"
