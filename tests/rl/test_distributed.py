"""GRPO and SFT in 2 processes (torchrun, gloo on the CPU), replicated and sharded (FSDP2), against 1 process on the
same global batch: the same samples, the same losses and the same trained weights (within fp32 tolerance); each
prompt sampled by exactly one rank; only rank 0 writes files (under FSDP each rank writes its own shards of a step
checkpoint, and nothing else); under FSDP each rank holds half the training state."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from r1lab.models import load_model, save_checkpoint

from conftest import digit_reward_env, make_model, make_tokenizer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")


def zero_flags(model, out):
    return ["zero", "--model", model, "--task-args", "{n_train: 40, n_test: 4}", "--template", "native",
            "--rewards", "{test_digit_share: 1.0, format: 0.5}", "--steps", "3", "--prompts-per-step", "5",
            "--group-size", "3", "--max-new-tokens", "10", "--eval-examples", "2", "--eval-max-new-tokens", "4",
            "--warmup-steps", "0", "--lr", "1e-2", "--temperature", "1.0", "--save-every", "2", "--threads", "1", "--dtype", "fp32",
            "--out", str(out)]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def outside_checkpoints(folder):
    return [f for f in files(folder) if not f.startswith("checkpoints/")]


@pytest.mark.parametrize("parallel", ["replicate", "fsdp"])
def test_two_processes_train_what_one_does_on_the_same_batch(tmp_path, parallel):
    tok = make_tokenizer()
    model = str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))
    env = digit_reward_env(tmp_path / "plugin")  # a reward a random model gets signal from, in every process
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "r1lab.cli", *zero_flags(model, one)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    spread = subprocess.run([sys.executable, "-m", "r1lab.cli", *zero_flags(model, two), "--nproc", "2",
                             "--parallel", parallel], env=env, capture_output=True, text=True,
                            timeout=300)  # torchrun underneath
    assert spread.returncode == 0, spread.stderr[-3000:]

    samples_one, samples_two = rows(one / "samples.jsonl"), rows(two / "samples.jsonl")
    strip = [{k: v for k, v in r.items() if k != "rank"} for r in samples_two]
    assert strip == samples_one  # the same completions, rewards and advantages, in the same order
    for step in (1, 2, 3):  # each prompt of a step sampled by exactly one rank, and both ranks sampled
        ranks = {}
        for r in samples_two:
            if r["step"] == step:
                ranks.setdefault(r["prompt"], set()).add(r["rank"])
        assert all(len(v) == 1 for v in ranks.values()) and {r for v in ranks.values() for r in v} == {0, 1}

    metrics_one, metrics_two = rows(one / "metrics.jsonl"), rows(two / "metrics.jsonl")
    assert [m["step"] for m in metrics_two] == [1, 2, 3]  # one line a step: rank 1 wrote none
    for a, b in zip(metrics_one, metrics_two):
        for key in ("loss", "clip_frac", "grad_norm", "reward", "trained_groups"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    weights_one = load_file(one / "final" / "model.safetensors")
    weights_two = load_file(two / "final" / "model.safetensors")
    start = load_file(tmp_path / "tiny" / "model.safetensors")
    assert any(not torch.equal(weights_one[k], start[k]) for k in start)  # the test trains something
    # Adam divides each gradient by its own running size, so an element whose gradient is ~0 moves by up to one lr
    # (1e-2) either way on fp32 rounding of the sum (its order differs between 1 and 2 processes); all the others
    # must agree to fp32 precision.
    diffs = torch.cat([(weights_two[k] - v).abs().flatten() for k, v in weights_one.items()])
    assert diffs.max() <= 1e-2 and (diffs > 1e-5).float().mean() < 1e-3, (diffs.max(), (diffs > 1e-5).sum())
    if parallel == "replicate":
        assert files(two) == files(one)  # the same files: nothing written twice or by rank 1 beside them
        return
    assert outside_checkpoints(two) == outside_checkpoints(one)
    for step in ("step-000002", "step-000003"):  # each rank's shards, one metadata file, rank 0's trainer state
        saved = files(two / "checkpoints" / step)
        assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata", "trainer_state.pt",
                "r1lab_complete.json"} <= set(saved)
        assert not any(f.endswith(".safetensors") for f in saved)  # the weights are in the shards
    loaded, _ = load_model(str(two / "checkpoints" / "step-000003"))  # the shards, consolidated in one process
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights_two.items())  # = final/ (same step)
    for a, b in zip(metrics_one, metrics_two):  # each rank holds half the weights, gradients and AdamW moments
        assert b["memory/train_state_mb"] == pytest.approx(a["memory/train_state_mb"] / 2, rel=0.05)
        assert len(b["memory/peak_mb_by_rank"]) == 2


@pytest.mark.parametrize("parallel", ["replicate", "fsdp"])
def test_two_processes_fine_tune_what_one_does(tmp_path, parallel):
    tok = make_tokenizer()
    base = make_model(tok)
    base.generation_config.update(eos_token_id=[1, 2], do_sample=True, temperature=0.6, top_p=0.95)
    model = str(save_checkpoint(base, tok, tmp_path / "tiny"))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i % 7}?", "response": f"It is {i + i % 7}."}) + "\n"
                            for i in range(40)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def sft(out, *extra):
        done = subprocess.run([sys.executable, "-m", "r1lab.cli", "sft", "--model", model, "--data", str(data),
                               "--template", "native", "--epochs", "1", "--tokens-per-step", "200", "--row-tokens",
                               "64", "--lr", "1e-3", "--warmup-steps", "0", "--eval-size", "4", "--threads", "1", "--dtype", "fp32",
                               "--out", str(out), *extra], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    sft(tmp_path / "one")
    sft(tmp_path / "two", "--nproc", "2", "--parallel", parallel)
    one, two = rows(tmp_path / "one" / "metrics.jsonl"), rows(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) >= 3
    for a, b in zip(one, two):
        assert (b["step"], b["tokens"]) == (a["step"], a["tokens"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert two[-1]["eval_loss"] == pytest.approx(one[-1]["eval_loss"], rel=1e-4)
    diffs = torch.cat([(load_file(tmp_path / "two" / "final" / "model.safetensors")[k] - v).abs().flatten()
                       for k, v in load_file(tmp_path / "one" / "final" / "model.safetensors").items()])
    assert diffs.max() <= 1e-3 and (diffs > 1e-5).float().mean() < 1e-3  # as above: Adam, lr 1e-3
    assert files(tmp_path / "two") == files(tmp_path / "one")
    config = [json.loads((tmp_path / run / "final" / "generation_config.json").read_text()) for run in ("one", "two")]
    assert config[0] == config[1] and config[1]["eos_token_id"] == [1, 2]  # the base model's stop tokens and
    # sampling defaults, whichever way it trained


@pytest.mark.parametrize("command", ["zero", "sft"])
def test_fsdp_in_one_process_says_how_to_start_more(tmp_path, command):
    flags = ["--data", str(tmp_path / "d.jsonl")] if command == "sft" else []
    done = subprocess.run([sys.executable, "-m", "r1lab.cli", command, "--parallel", "fsdp", "--out",
                           str(tmp_path / "run"), *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--nproc N" in done.stderr, done.stderr[-2000:]
