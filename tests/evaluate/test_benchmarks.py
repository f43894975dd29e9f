"""Benchmark loading, GSM8K's references verifying against themselves, and multiple-choice letters."""

import json
import random

import pytest

from r1lab.evaluate import benchmarks
from r1lab.evaluate.benchmarks import (
    ChoiceBenchmark,
    choice_letter,
    default_k,
    find_shared,
    load_benchmark,
    read_rows,
    task_benchmark,
)
from r1lab.tasks.dataset import reference_answer

GSM8K = find_shared("gsm8k/test.jsonl")
needs_gsm8k = pytest.mark.skipif(GSM8K is None, reason="../shared/data/gsm8k is not beside this checkout")


@needs_gsm8k
@pytest.mark.parametrize("split, size", [("test", 1319), ("train", 7473)])
def test_every_gsm8k_reference_solution_scores_as_correct_and_a_shuffled_pairing_near_zero(split, size):
    bench = load_benchmark("gsm8k")
    rows = read_rows(GSM8K.parent / f"{split}.jsonl")
    assert len(rows) == size
    references = [reference_answer(r["answer"]) for r in rows]
    # the whole worked solution, "<<48/2=24>>" calculator notes and "#### 72" included, is the completion
    assert [bench.verify(r["answer"], answer=ref) for r, ref in zip(rows, references)] == [1.0] * size
    assert [bench.extract(r["answer"]) for r in rows] == references
    shuffled = list(range(size))
    random.Random(0).shuffle(shuffled)
    wrong_pairs = [bench.verify(rows[i]["answer"], answer=references[j]) for i, j in enumerate(shuffled)]
    assert sum(wrong_pairs) / size < 0.03


@needs_gsm8k
def test_gsm8k_loads_from_the_shared_copy_in_file_order():
    examples = load_benchmark("gsm8k").examples("test")
    assert len(examples) == 1319 and examples[0]["answer"] == "18" and examples[0]["id"] == "0"
    assert examples[0]["prompt"].startswith("Janet")


def test_math_answers_vote_by_equivalence_not_string():
    bench = benchmarks.Benchmark("m", [{"id": "0", "prompt": "q", "answer": "\\frac{1}{2}"}])
    assert bench.verify("so \\boxed{0.5}", answer="\\frac{1}{2}") == 1.0
    assert bench.equivalent("1/2", "\\frac{1}{2}") and not bench.equivalent("1/2", "2")


def gpqa_rows():
    return [{"Question": f"Which is right {i}?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"no {i}a",
             "Incorrect Answer 2": f"no {i}b", "Incorrect Answer 3": f"no {i}c", "Record ID": f"rec{i}"}
            for i in range(20)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gpqa_choices_are_shuffled_with_a_seed_and_the_letter_is_verified(tmp_path):
    path = write_jsonl(tmp_path / "gpqa.jsonl", gpqa_rows())
    bench = load_benchmark("gpqa-diamond", path)
    assert isinstance(bench, ChoiceBenchmark)
    examples = bench.examples("test")
    letters = [e["answer"] for e in examples]
    assert len(set(letters)) > 1  # not always A
    for e in examples:
        line = next(l for l in e["prompt"].splitlines() if l.startswith(e["answer"] + ")"))
        assert line.endswith("right " + e["id"][3:])  # the answer letter labels the correct option
        assert bench.verify(f"<think>hmm</think> \\boxed{{{e['answer']}}}", **e) == 1.0
        other = next(l for l in "ABCD" if l != e["answer"])
        assert bench.verify(f"Answer: {other}", **e) == 0.0
    assert [e["prompt"] for e in load_benchmark("gpqa-diamond", path).examples()] == [e["prompt"] for e in examples]
    assert [e["answer"] for e in load_benchmark("gpqa-diamond", path, seed=1).examples()] != letters


@pytest.mark.parametrize("text, letter", [
    ("<think>It is A</think>So \\boxed{B}", "B"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("The answer is (a).", "A"),
    ("Answer: **C**", "C"),
    ("A possible reading. Another option.", None),  # the article "A" is not an answer
    ("<think>answer is B", None),  # cut off while thinking
    ("\\boxed{E}", None),
    ("(D)", "D"),
])
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


def test_reads_jsonl_parquet_and_a_folder(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    pq.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "b.parquet")
    assert read_rows(tmp_path / "a.jsonl") == rows == read_rows(tmp_path / "b.parquet")
    folder = tmp_path / "aime"
    folder.mkdir()
    pq.write_table(pyarrow.Table.from_pylist(rows), folder / "test-00000.parquet")
    bench = load_benchmark("aime24", folder)
    assert [e["answer"] for e in bench.examples()] == ["2", "4"]
    with pytest.raises(FileNotFoundError, match="one .jsonl or .parquet"):
        read_rows(tmp_path)  # two candidate files: ambiguous


def test_unreachable_hub_says_how_to_pass_a_local_copy(monkeypatch):
    import sys
    import types

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(FileNotFoundError, match=r"--data '\{aime24: PATH\}'"):
        load_benchmark("aime24")
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("aime2099")


def test_a_row_without_the_question_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"text": "?", "answer": "2"}])
    with pytest.raises(ValueError, match="row 2: no question field"):
        load_benchmark("math500", path)


def test_any_task_is_a_benchmark():
    bench = task_benchmark("arithmetic", {"digits": 1, "n_train": 10, "n_test": 5})
    examples = bench.examples()
    assert len(examples) == 5 and bench.verify(f"It is {examples[0]['answer']}.", **examples[0]) == 1.0


def test_default_k_follows_the_set_size():
    assert default_k(30) == 64 and default_k(1319) == 4
    assert all(4 <= default_k(n) <= 64 for n in range(1, 5000, 37))


@pytest.mark.skipif(find_shared("math500/test.jsonl") is None, reason="../shared/data/math500 is not beside this checkout")
def test_every_math500_solution_scores_as_correct_against_its_answer():
    bench = load_benchmark("math500")
    rows = read_rows(find_shared("math500/test.jsonl"))
    examples = bench.examples()
    assert len(examples) == 500
    # LaTeX answers (intervals, matrices, \frac, \sqrt...) go through math-verify in the worker process
    assert [bench.verify(r["solution"], **e) for r, e in zip(rows, examples)] == [1.0] * 500
