"""A reference answer that cannot be read as a math answer (prose such as "forty two", no letter or digit at all)
judges nothing: every sample's verdict is None ("cannot judge", logged once with the problem's id), not 0.0, and
evaluation leaves the problem out of pass@1 and counts it (issue 29, bug 2)."""

import json

import pytest

from r1lab.evaluate.runner import summarize_records
from r1lab.tasks import get_task
from r1lab.tasks.answers import score_answer


@pytest.mark.parametrize("reference", ["forty two", "see the worked solution", "The answer is unknown.", "???"])
@pytest.mark.parametrize("reply", ["\\boxed{42}", "\\boxed{forty two}", "The answer is 42.", "no idea"])
def test_nothing_is_judged_against_an_unreadable_reference(reference, reply):
    assert score_answer(reply, reference) is None


@pytest.mark.parametrize("reference, right, wrong", [("42", "\\boxed{42}", "\\boxed{41}"), ("odd", "\\boxed{odd}", "\\boxed{even}"),
                                                     ("\\text{(C)}", "\\boxed{\\text{(C)}}", "\\boxed{\\text{(D)}}"),
                                                     ("\\frac{1}{2}", "so it is 0.5", "so it is 0.6")])
def test_readable_references_still_judge(reference, right, wrong):
    assert score_answer(right, reference) == 1.0 and score_answer(wrong, reference) == 0.0


def test_the_dataset_task_says_once_which_problem_it_cannot_judge(tmp_path, capsys):  # by id in a benchmark
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "p-7", "question": "What is six times seven?", "answer": "forty-two and a bit more"},
        {"id": "p-8", "question": "What is 2+2?", "answer": "4"}]))
    task = get_task("dataset", path=str(data), test_size=0)
    unreadable, fine = task.examples("train")
    assert [task.verify("\\boxed{42}", **unreadable) for _ in range(3)] == [None] * 3
    assert task.verify("\\boxed{4}", **fine) == 1.0
    said = capsys.readouterr().err
    assert said.count("cannot be read as a math answer") == 1 and "What is six times seven?" in said


def test_evaluation_leaves_an_unjudgeable_problem_out_of_pass_at_1_and_counts_it():
    def record(correct):
        return {"correct": correct, "answer": "x", "tokens": 3, "finish_reason": "stop", "completion": "x"}

    problems = [[record(1.0), record(1.0)], [record(0.0), record(1.0)], [record(None), record(None)]]
    summary = summarize_records(problems, task=None)
    assert summary["metrics"]["pass@1"]["value"] == pytest.approx(0.75)  # not 0.5: the third is not a failure
    assert summary["unjudged_problems"] == 1 and summary["unjudged"] == 2 and summary["n_problems"] == 2
