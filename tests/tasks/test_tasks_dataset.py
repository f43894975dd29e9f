"""Dataset tasks: JSONL files, split folders, hub datasets, reference conventions, and GSM8K end to end."""

import json
import random
import sys
import types
from pathlib import Path

import pytest

from r1lab.tasks import DatasetTask, get_task
from r1lab.tasks.dataset import reference_answer

GSM8K = Path(__file__).resolve().parents[2].parent / "shared/data/gsm8k"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_file(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "solution": f"Double it: $\\boxed{{{2 * i}}}$."} for i in range(50)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


@pytest.mark.parametrize("field, reference", [
    ("Janet sells 9 eggs.\n#### 1,018", "1018"),
    ("first #### 1\nthen #### 2", "2"),
    ("Thus $x = \\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
    (" 72 ", "72"),
    (72, "72"),
])
def test_reference_answer_conventions(field, reference):
    assert reference_answer(field) == reference


def test_jsonl_file_with_custom_fields_and_seeded_split(qa_file):
    task = DatasetTask(path=qa_file, question_field="problem", answer_field="solution", test_size=10, seed=3)
    train, test = task.examples("train"), task.examples("test")
    assert len(train) == 40 and len(test) == 10
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    again = DatasetTask(path=qa_file, question_field="problem", answer_field="solution", test_size=10, seed=3)
    assert again.examples("test") == test
    other = DatasetTask(path=qa_file, question_field="problem", answer_field="solution", test_size=10, seed=4)
    assert other.examples("test") != test
    example = test[0]
    assert example["answer"] == str(2 * int(example["prompt"].split()[2]))
    assert "\\boxed" in example["solution"] and "\\boxed{}" in task.instruction


def test_limit_caps_each_split(qa_file):
    task = DatasetTask(path=qa_file, question_field="problem", answer_field="solution", test_size=0.2, limit=5)
    assert len(task.examples("train")) == 5 and len(task.examples("test")) == 5


def test_folder_with_train_and_test_keeps_its_splits_in_order(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(5)])
    write_jsonl(tmp_path / "test.jsonl", [{"question": "t0", "answer": "#### 7"}])
    task = get_task("dataset", path=str(tmp_path))
    assert [e["prompt"] for e in task.examples("train")] == ["q0", "q1", "q2", "q3", "q4"]
    assert task.examples("test") == [{"prompt": "t0", "answer": "7", "solution": "#### 7"}]


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
        DatasetTask(path=path)


def test_missing_field_lists_fields_and_option(qa_file):
    message = r"qa.jsonl:1: no field 'question'.*\['problem', 'solution'\].*question_field="
    with pytest.raises(ValueError, match=message):
        DatasetTask(path=qa_file)


@pytest.mark.parametrize("kwargs, error, message", [
    ({}, ValueError, "exactly one of path="),
    ({"path": "x.jsonl", "hf_name": "y"}, ValueError, "exactly one of path="),
    ({"path": "/no/such/file.jsonl"}, FileNotFoundError, "no such file or folder"),
])
def test_source_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        DatasetTask(**kwargs)


def test_empty_folder_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither train.jsonl nor test.jsonl"):
        DatasetTask(path=tmp_path)


def test_hub_dataset_without_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        DatasetTask(hf_name="openai/gsm8k", hf_config="main")


def test_hub_dataset_splits(monkeypatch):
    rows = {"train": [{"question": "a", "answer": "#### 1"}], "test": [{"question": "b", "answer": "#### 2"}]}
    calls = []

    def load_dataset(name, config, split=None):
        calls.append((name, config, split))
        return rows if split is None else rows[split] * 10

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = DatasetTask(hf_name="openai/gsm8k", hf_config="main")
    assert task.examples("test")[0]["answer"] == "2" and task.name == "gsm8k"
    cut = DatasetTask(hf_name="openai/gsm8k", hf_config="main", split="train", test_size=3)
    assert len(cut.examples("train")) == 7 and len(cut.examples("test")) == 3
    assert calls == [("openai/gsm8k", "main", None), ("openai/gsm8k", "main", "train")]
    del rows["test"]
    with pytest.raises(ValueError, match=r"has splits \['train'\], not train and test; pass split="):
        DatasetTask(hf_name="openai/gsm8k")


def test_too_small_for_the_test_size(qa_file):
    with pytest.raises(ValueError, match="qa.jsonl has 50 examples, too few for test_size=200; set test_size="):
        DatasetTask(path=qa_file, question_field="problem", answer_field="solution")


def test_verify_needs_a_reference(qa_file):
    task = DatasetTask(path=qa_file, question_field="problem", answer_field="solution", test_size=10)
    assert task.verify("\\boxed{4}", answer="") is None
    assert task.verify("\\boxed{4}", answer="4") == 1.0
    assert task.verify("<think>4</think>\\boxed{5}", answer="4") == 0.0


@pytest.fixture(scope="module")
def gsm8k_test():
    if not (GSM8K / "test.jsonl").is_file():
        pytest.skip(f"GSM8K not found at {GSM8K}")
    task = get_task("gsm8k", path=GSM8K)
    return task, task.examples("test")


def test_gsm8k_references_verify_against_themselves(gsm8k_test):
    task, examples = gsm8k_test
    assert len(examples) == 1319 and task.name == "gsm8k"
    for example in examples:
        reasoning, final = example["solution"].rsplit("####", 1)
        as_answer_block = f"<answer>{example['answer']}</answer>"
        as_boxed_solution = f"{reasoning}\\boxed{{{final.strip()}}}"
        assert task.verify(as_answer_block, **example) == 1.0, example
        assert task.verify(as_boxed_solution, **example) == 1.0, example


def test_gsm8k_shuffled_pairs_score_near_zero(gsm8k_test):
    task, examples = gsm8k_test
    others = examples[:]
    random.Random(0).shuffle(others)
    scores = [task.verify(f"<answer>{other['answer']}</answer>", **example) for example, other in zip(examples, others)]
    assert sum(scores) / len(scores) < 0.05


def test_gsm8k_is_found_from_the_repository(gsm8k_test):
    assert len(get_task("gsm8k").examples("test")) == 1319
