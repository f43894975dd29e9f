"""SFT: the loss mask, packing isolation, cold-start traces, and a tiny end-to-end run."""

import json

import pytest
import torch

from r1lab.config import ColdstartConfig, SftConfig
from r1lab.models import save_checkpoint
from r1lab.packing import pack_samples, token_logprobs
from r1lab.sft.coldstart import write_coldstart
from r1lab.sft.data import encode, first_fit, load_sft_data, to_messages
from r1lab.sft.trainer import train_sft
from r1lab.tasks import get_task
from r1lab.tasks.arithmetic import arithmetic_trace

from conftest import make_model, make_tokenizer, tiny_sft_run


def test_loss_is_on_the_assistant_reply_only(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "A!"}]
    prompt, response = encode(messages, "native", tokenizer)
    # hand-checked against the test template: the system prompt folded into the user turn
    assert tokenizer.decode(prompt) == "[user]S\n\nQ?\n[assistant]"
    assert tokenizer.decode(response, skip_special_tokens=True) == "A!" and response[-1] == tokenizer.eos_token_id
    packed = pack_samples([[(prompt, response)]], tokenizer.pad_token_id)
    assert packed.targets.tolist() == response  # scored: every reply token and EOS, no prompt token
    assert packed.score_index.tolist() == list(range(len(prompt) - 1, len(prompt) + len(response) - 1))


def test_r1_prefill_belongs_to_the_prompt(tokenizer):
    row = {"prompt": "2+3?", "reasoning": "2+3 is 5.", "answer": "It is 5."}
    messages = to_messages(row, "x")
    assert messages[-1]["content"] == "<think>\n2+3 is 5.\n</think>\n\nIt is 5."
    prompt, response = encode(messages, "r1zero", tokenizer)
    assert tokenizer.decode(response, skip_special_tokens=True).startswith("<think>")


def test_packed_samples_do_not_see_each_other(tiny):
    model, tok = tiny
    a = (tok("[user]hi\n", add_special_tokens=False)["input_ids"], tok("hello there", add_special_tokens=False)["input_ids"])
    b = (tok("[user]2+2\n", add_special_tokens=False)["input_ids"], tok("4", add_special_tokens=False)["input_ids"])
    together = token_logprobs(model, pack_samples([[a, b]], tok.pad_token_id))
    alone = torch.cat([token_logprobs(model, pack_samples([[s]], tok.pad_token_id)) for s in (a, b)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_first_fit_never_overfills_a_row():
    lengths = [7, 3, 9, 1, 4, 4, 2, 12]
    bins = first_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(8))
    assert all(sum(lengths[i] for i in b) <= 10 or len(b) == 1 for b in bins)


def test_arithmetic_traces_are_right_and_in_the_rewarded_format(tmp_path):
    task = get_task("arithmetic", digits=2, operands=3, operators="+-*", n_train=100, n_test=5)
    for ex in task.examples("train"):
        reasoning, answer = arithmetic_trace(ex["prompt"])
        assert answer == ex["answer"]
    result = write_coldstart(ColdstartConfig(examples=50, out=str(tmp_path / "cs.jsonl")))
    assert result["written"] == 50 and result["rejected"] == 0
    from r1lab.rewards.format import format_reward
    rows = [json.loads(l) for l in (tmp_path / "cs.jsonl").read_text().splitlines()]
    assert all(format_reward(r["response"]) == 1.0 for r in rows)


def test_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"question": "x"}\n')
    with pytest.raises(ValueError, match="d.jsonl:2"):
        load_sft_data(path)
    with pytest.raises(FileNotFoundError, match="r1lab coldstart"):
        load_sft_data(tmp_path / "missing.jsonl")


def test_sft_end_to_end_lowers_the_held_out_loss(tmp_path):
    model_path, data = tiny_sft_run(tmp_path)
    cfg = SftConfig(model=model_path, data=data, template="native", epochs=3, lr=3e-3, warmup_steps=0,
                    tokens_per_step=300, row_tokens=120, eval_size=6, out=str(tmp_path / "run"), threads=1)
    summary = train_sft(cfg, progress=False)
    assert summary["eval_loss_after"] < summary["eval_loss_before"] * 0.8
    for name in ("final/r1lab_complete.json", "report.md", "plots/loss.png", "metrics.jsonl"):
        assert (tmp_path / "run" / name).is_file()
    with pytest.raises(ValueError, match="already holds"):
        train_sft(cfg, progress=False)


def test_coldstart_from_your_jsonl_keeps_readable_r1_replies(tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [{"prompt": "2+2?", "reasoning": "Two and two make four.", "answer": "4"},
            {"prompt": "3+3?", "response": "6"},  # no think block
            {"prompt": "4+4?", "reasoning": "```python\nprint(4 + 4)\n```", "answer": "8"},  # code in the reasoning
            {"prompt": "5+5?", "reasoning": "五 加 五 等于 十", "answer": "10"}]  # not in the target language
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    result = write_coldstart(ColdstartConfig(source="jsonl", data=str(data), out=str(tmp_path / "cs.jsonl")))
    assert result["written"] == 1
    assert result["dropped"] == {"no_reasoning": 1, "code_block": 1, "language": 1}


def test_coldstart_from_a_model_verifies_what_it_samples(tmp_path):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    result = write_coldstart(ColdstartConfig(source="model", model=model, examples=4, n=2, max_new_tokens=8,
                                             out=str(tmp_path / "cs.jsonl")))
    assert result["written"] + result["rejected"] == 4  # a random model's samples are all rejected, and counted
    assert result["dropped"].get("wrong", 0) == result["rejected"]


def test_sft_with_lora_saves_a_merged_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    model_path = save_checkpoint(make_model(tok), tok, tmp_path / "tiny")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}?", "response": f"{i}!"}) + "\n" for i in range(12)))
    cfg = SftConfig(model=str(model_path), data=str(data), template="native", epochs=1, lr=1e-2, lora_r=4,
                    warmup_steps=0, tokens_per_step=100, eval_size=2, out=str(tmp_path / "run"), threads=1)
    summary = train_sft(cfg, progress=False)
    merged = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    base = AutoModelForCausalLM.from_pretrained(model_path)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and not any("lora" in n for n in merged.state_dict())


def test_countdown_traces_verify(tmp_path):
    result = write_coldstart(ColdstartConfig(task="countdown", task_args={"n_train": 60, "n_test": 5}, examples=60,
                                             out=str(tmp_path / "cd.jsonl")))
    assert result["written"] == 60 and result["rejected"] == 0
