"""Rejection sampling: each filter on kept and dropped cases, decontamination, selection, an end-to-end run."""

import json
from collections import Counter

import pytest

from r1lab.config import SampleConfig
from r1lab.evaluate.benchmarks import find_shared
from r1lab.models import save_checkpoint
from r1lab.sft import filters
from r1lab.sft.sample import run_sample, select
from r1lab.tasks.base import Task, register_task

from conftest import make_model, make_tokenizer

GOOD = "<think>\nAdd 2 and 3: that makes 5.\n</think>\n<answer>5</answer>"


@pytest.mark.parametrize("check, bad", [
    (lambda c: filters.language_mixed(c), "<think>\n我们先 add 二 和 三 得到 五</think>5"),
    (lambda c: filters.long_paragraph(c, 100), "<think>\n" + "word " * 40 + "\n</think>5"),
    (lambda c: filters.code_block(c), "<think>\n```python\nprint(2 + 3)\n```\n</think>5"),
])
def test_each_filter_keeps_good_reasoning_and_drops_bad(check, bad):
    assert check(GOOD) is None
    assert check(bad) is not None


def test_paragraphs_are_measured_one_by_one():
    many_short = "<think>\n" + "\n\n".join(["a short line of reasoning"] * 20) + "\n</think>5"
    assert filters.long_paragraph(many_short, 100) is None


def test_truncated_and_duplicates():
    assert filters.truncated("length") and filters.truncated("stop") is None
    d = filters.Deduplicator(near_threshold=0.8)
    long = "first we add two and three which gives five and then we check the sum by subtracting three again"
    assert d.check(long) is None
    assert d.check(long.upper()) == "duplicate: exact"
    assert d.check(long.replace("again", "once more")) == "duplicate: near"
    assert d.check("a completely different way of thinking about the same small problem today") is None


def test_decontamination_catches_a_planted_eval_prompt():
    eval_prompts = ["Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
                    "What is the smallest prime number greater than one hundred and ten?"]
    d = filters.Decontaminator(eval_prompts)
    planted = "Solve this: Janet's ducks lay 16 eggs per day. She eats three for breakfast and sells the rest."
    assert d.check(planted) is not None
    assert d.check("Janet has ducks. They lay eggs. She eats some for breakfast.") is None  # shared words, no 8-gram


def record(sample, correct, text=GOOD, finish="stop"):
    return {"sample": sample, "correct": correct, "completion": text, "finish_reason": finish}


def test_selection_keeps_at_most_m_correct_filtered_samples_per_prompt():
    cfg = SampleConfig(keep=2, max_paragraph_chars=1500)
    problems = [[record(0, 0.0), record(1, 1.0), record(2, 1.0), record(3, 1.0, GOOD.replace("5", "five") + " ok")],
                [record(0, 1.0, finish="length"), record(1, 1.0, "<think>\n```x```\n</think>5")]]
    counts = Counter()
    kept = select(problems, [{"id": "a"}, {"id": "b"}], cfg, counts)
    assert [(ex["id"], r["sample"]) for ex, r in kept] == [("a", 1), ("a", 3)]
    assert counts == {"wrong": 1, "duplicate": 1, "truncated": 1, "code_block": 1}


@register_task("test_echo")
class EchoTask(Task):
    """Every reply is correct: lets a random model exercise the whole sampling path."""

    name = "test_echo"

    def __init__(self, n: int = 6):
        self._examples = [{"prompt": f"Say {i}", "answer": str(i)} for i in range(n)]

    def examples(self, split):
        return list(self._examples)

    def verify(self, completion, **_):
        return 1.0


def test_sample_end_to_end_with_non_reasoning_mix_and_resume(tmp_path):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    mix = tmp_path / "chat.jsonl"
    mix.write_text("".join(json.dumps({"prompt": f"hello {i}", "response": "Hi!"}) + "\n" for i in range(10)))
    cfg = SampleConfig(model=model, task="test_echo", task_args={}, n=3, keep=2, template="native", stop=[],
                       prefill="<think>\nI say it.\n</think>\n<answer>it</answer>", max_new_tokens=8, min_language_share=0, drop_truncated=False, near_duplicate=1.0,
                       non_reasoning=str(mix), non_reasoning_share=0.25, problems_per_batch=2,
                       out=str(tmp_path / "run"), threads=1)
    summary = run_sample(cfg, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    reasoning = [r for r in rows if r["source"]["kind"] == "rejection_sampling"]
    assert summary["samples"] == 18 and len(reasoning) == summary["kept_reasoning"] <= 12
    assert all(r["source"]["model"] == model and r["source"]["verdict"] == 1.0 for r in reasoning)
    plain = [r for r in rows if r["source"]["kind"] == "non_reasoning"]
    assert len(plain) == round(len(reasoning) / 3) and plain[0]["response"] == "<think>\n\n</think>\n\nHi!"
    assert (tmp_path / "run" / "report.md").is_file()
    again = run_sample(cfg, progress=False)  # every batch is on disk: nothing is sampled again
    assert again["kept_reasoning"] == summary["kept_reasoning"] and again["seconds"] == summary["seconds"]


def test_replies_without_reasoning_are_not_kept_as_reasoning_samples(tmp_path):
    assert filters.no_reasoning("1 + 1 = 2") and filters.no_reasoning("<think>\nstill thinking")
    assert filters.no_reasoning("<think>\n</think>2") and filters.no_reasoning("<think>2 is it</think>  ")
    counts = Counter()
    problems = [[record(0, 1.0, "1 + 1 = 2"), record(1, 1.0, GOOD)]]
    kept = select(problems, [{"id": "a"}], SampleConfig(keep=2), counts)
    assert [r["sample"] for _, r in kept] == [1] and counts == {"no_reasoning": 1}
    opened = dict(record(0, 1.0, "Add them: 5.\n</think>\n<answer>5</answer>"), prompt="...<think>\n")
    assert select([[opened]], [{"id": "b"}], SampleConfig(), Counter())  # the template opened the think block
    prefilled = dict(record(0, 1.0, "<think>\nAdd them: 5.\n</think>\n<answer>5</answer>"), prompt="...<think>\n")
    assert select([[prefilled]], [{"id": "c"}], SampleConfig(), Counter())  # R1's prefill is already in the reply


@pytest.mark.skipif(find_shared("gsm8k/test.jsonl") is None, reason="../shared/data/gsm8k is not beside this checkout")
def test_the_report_names_every_filter_and_the_decontamination_sets(tmp_path):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    cfg = SampleConfig(model=model, task="test_echo", task_args={}, n=2, template="native", stop=[], max_new_tokens=6,
                       out=str(tmp_path / "run"), threads=1, decontaminate=["gsm8k"])
    summary = run_sample(cfg, progress=False)
    # random text cut at 6 tokens: no answer, so wrong (issue 14), and no think block either
    assert summary["kept_reasoning"] == 0 and sum(summary["dropped"].values()) == 12, summary["dropped"]
    report = (tmp_path / "run" / "report.md").read_text()
    for name in ("no_reasoning", "truncated", "language", "long_paragraph", "code_block", "duplicate"):
        assert f"- {name}" in report
    assert "decontamination: prompts sharing a word 8-gram with gsm8k (" in report


def test_a_think_block_must_open_the_reply_and_appear_once():
    for bad in ("so </think> 5", "just answer </think> 5", "<think>\n<think>\n</think>5", "<think>a</think><think>b</think>5"):
        assert filters.no_reasoning(bad), bad
    assert filters.no_reasoning("  <think>\nfine\n</think>\n\n5") is None
