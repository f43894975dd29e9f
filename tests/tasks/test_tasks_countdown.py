"""Countdown: every problem is solvable, and only an exact use of the given numbers scores."""

import random

import pytest

from r1lab.tasks import CountdownTask, get_task

NUMBERS, TARGET = [3, 7, 25], 46  # 3 * 7 + 25


@pytest.fixture(scope="module")
def task():
    return CountdownTask(n_train=300, n_test=50, seed=0)


def test_every_problem_is_solved_by_its_answer(task):
    for example in task.examples("train") + task.examples("test"):
        assert 1 <= example["target"] <= 100
        assert all(1 <= n <= 25 for n in example["numbers"]) and len(example["numbers"]) == 3
        assert str(example["numbers"]) in example["prompt"] and f"equals {example['target']}." in example["prompt"]
        assert task.verify(f"<answer>{example['answer']}</answer>", **example) == 1.0, example


def test_seeded_determinism_and_disjoint_splits(task):
    again = CountdownTask(n_train=300, n_test=50, seed=0)
    assert task.examples("test") == again.examples("test") and task.examples("train") == again.examples("train")
    assert CountdownTask(n_train=300, n_test=50, seed=1).examples("test") != task.examples("test")

    def key(e):
        return tuple(sorted(e["numbers"])), e["target"]

    train, test = {key(e) for e in task.examples("train")}, {key(e) for e in task.examples("test")}
    assert len(train) == 300 and len(test) == 50 and not train & test


def test_examples_are_copies(task):
    task.examples("test")[0]["numbers"].append(99)
    assert 99 not in task.examples("test")[0]["numbers"]


@pytest.mark.parametrize("completion", [
    "<answer>3 * 7 + 25</answer>",
    "<answer>(25 + 3 * 7)</answer>",
    "<answer> 3 * 7 + 25 = 46 </answer>",  # a trailing "= target" is fine
    "<think>try 25 + 21</think><answer>$25 + 7 \\times 3$</answer>",
    "<think>...</think> So the equation is \\boxed{25 + 3*7}.",
    "<answer>-3 * -7 + 25</answer>",  # a minus sign on a number is allowed; 3 and 7 are still used once
])
def test_correct_equations_score_one(completion):
    assert get_task("countdown", n_train=1, n_test=1).verify(completion, numbers=NUMBERS, target=TARGET) == 1.0


@pytest.mark.parametrize("completion", [
    "<answer>25 + 21</answer>",  # a number not given
    "<answer>3 * 7 + 25 + 3 - 3</answer>",  # reuses a number
    "<answer>2 * 23</answer>",  # misses numbers
    "<answer>3 * 7 + 24</answer>",  # wrong value
    "<answer>25 + 7 * 3 / (7 - 7)</answer>",  # division by zero
    "<answer>46</answer>",
    "<answer>3 * 7 + 25 = 46</answer><answer>0</answer>",  # the last answer block counts
    "<think><answer>3 * 7 + 25</answer></think>",  # only inside the thinking
    "<answer>__import__('os').system('echo hi')</answer>",
    "<answer>().__class__.__bases__[0]</answer>",
    "<answer>(lambda: 46)()</answer>",
    "<answer>3 ** 7 // 25</answer>",
    "<answer>9**9**9</answer>",
    "<answer>2**999999</answer>",
    "<answer>25 + 3 * 7 if 1 else 0</answer>",
    "<answer>" + "+".join(["1"] * 150) + "</answer>",  # too long
    "<answer>25.0 + 3 * 7</answer>",
    "",
])
def test_exploits_score_zero(completion):
    assert CountdownTask(n_train=1, n_test=1).verify(completion, numbers=NUMBERS, target=TARGET) == 0.0


def test_cannot_judge_without_numbers_and_target():
    assert CountdownTask(n_train=1, n_test=1).verify("<answer>1 + 2</answer>", prompt="?") is None


def test_answers_do_not_solve_other_problems(task):
    examples = task.examples("train")
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    scores = [task.verify(f"<answer>{other['answer']}</answer>", **example)
              for example, other in zip(examples, shuffled)]
    assert sum(scores) / len(scores) < 0.05


def test_bad_settings_say_what_to_fix():
    with pytest.raises(ValueError, match="numbers >= 2"):
        CountdownTask(numbers=1)
