"""Arithmetic task: exact answers, seeded disjoint splits, a forgiving integer verifier."""

import re

import pytest

from r1lab.tasks import ArithmeticTask, get_task
from r1lab.tasks.arithmetic import evaluate_terms
from r1lab.tasks.safe_expr import evaluate


@pytest.mark.parametrize("operators", ["+", "-", "*", "+-*"])
def test_answers_match_an_independent_evaluator(operators):
    task = ArithmeticTask(digits=2, operands=4, operators=operators, n_train=300, n_test=50, seed=1)
    for example in task.examples("train") + task.examples("test"):
        expression = example["prompt"].removeprefix("What is ").removesuffix("?")
        value, _ = evaluate(expression)
        assert value == int(example["answer"]), example


def test_precedence_and_errors():
    assert evaluate_terms([1, 2, 3, 4], ["+", "*", "-"]) == 3
    with pytest.raises(ValueError, match="need 2 operators"):
        evaluate_terms([1, 2, 3], ["+"])


def test_multiplications_never_chain_when_other_operators_exist():
    task = ArithmeticTask(digits=3, operands=5, operators="+*", n_train=200, n_test=0)
    prompts = [p["prompt"] for p in task.examples("train")]
    assert any("*" in p for p in prompts)
    assert not any(re.search(r"\* \d+ \*", p) for p in prompts)


def test_seeded_determinism_and_disjoint_splits():
    a = ArithmeticTask(digits=2, operands=3, operators="+-", n_train=500, n_test=100, seed=7)
    b = ArithmeticTask(digits=2, operands=3, operators="+-", n_train=500, n_test=100, seed=7)
    c = ArithmeticTask(digits=2, operands=3, operators="+-", n_train=500, n_test=100, seed=8)
    assert a.examples("train") == b.examples("train") and a.examples("test") == b.examples("test")
    assert a.examples("test") != c.examples("test")
    train = {e["prompt"] for e in a.examples("train")}
    test = {e["prompt"] for e in a.examples("test")}
    assert len(train) == 500 and len(test) == 100 and not train & test


def test_test_split_does_not_depend_on_n_train():
    small = ArithmeticTask(digits=3, operands=2, n_train=10, n_test=50)
    large = ArithmeticTask(digits=3, operands=2, n_train=1000, n_test=50)
    assert small.examples("test") == large.examples("test")


def test_a_small_problem_space_shrinks_both_splits():
    task = ArithmeticTask()  # 1-digit a + b: only 100 distinct problems
    train, test = task.examples("train"), task.examples("test")
    assert len(train) + len(test) == 100 and len(test) >= 1
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}


@pytest.mark.parametrize("completion, score", [
    ("<think>3 + 5 = 8</think><answer>8</answer>", 1.0),
    ("<answer>8.0</answer>", 1.0),
    ("<answer>+8</answer>", 1.0),
    ("The answer is 8.", 1.0),
    ("\\boxed{8}", 1.0),
    ("<answer>9</answer>", 0.0),
    ("<think>8</think><answer>9</answer>", 0.0),
    ("<think>8</think>", 0.0),
    ("", 0.0),
])
def test_verify(completion, score):
    task = get_task("arithmetic", n_train=1, n_test=1)
    assert task.verify(completion, prompt="What is 3 + 5?", answer="8") == score


def test_negative_answers_verify():
    task = ArithmeticTask(operators="-", n_train=1, n_test=1)
    assert task.verify("<answer>-4</answer>", answer="-4") == 1.0
    assert task.verify("<answer>4</answer>", answer="-4") == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"operators": "/"}, "operators='/'"),
    ({"operands": 1}, "operands >= 2"),
    ({"n_train": 0, "n_test": 0}, "not both 0"),
])
def test_bad_settings_say_what_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(**kwargs)


def test_unknown_split():
    with pytest.raises(ValueError, match="use 'train' or 'test'"):
        ArithmeticTask(n_train=1, n_test=1).examples("validation")
