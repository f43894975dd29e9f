"""Every stage on a CUDA GPU with a tiny random model: GRPO (one update, and a short run saved to disk), SFT,
evaluation, and the server. Each runs as its CPU test does (tests/rl, tests/sft, tests/evaluate, tests/serve),
with ``device="cuda"`` and a compute precision, and checks that training moved fp32 weights by finite steps."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import r1lab.rl.grpo as grpo
from r1lab.config import EvalConfig, SftConfig, ZeroConfig
from r1lab.engine import SamplingParams, TorchEngine
from r1lab.evaluate.runner import run_eval
from r1lab.models import save_checkpoint
from r1lab.policy import Policy
from r1lab.rewards import register
from r1lab.rewards.build import build_rewards
from r1lab.rollout import generate_groups, score_group
from r1lab.serve.app import create_app
from r1lab.sft.trainer import train_sft
from r1lab.tasks import get_task

from conftest import make_model, make_tokenizer, tiny_sft_run

pytestmark = pytest.mark.gpu


@register("gpu_test_digit_share")
def digit_share(completion, **_):
    """Share of digits in the response: a reward a random model gets signal from."""
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


@pytest.fixture
def tiny_path(tmp_path):
    tok = make_tokenizer()
    return str(save_checkpoint(make_model(tok), tok, tmp_path / "tiny"))


def finite(*values) -> bool:
    return bool(torch.isfinite(torch.tensor(values, dtype=torch.float64)).all())


# ------------------------------------------------------------------------------------------------------ GRPO
@pytest.mark.parametrize("dtype, beta, updates", [("fp32", 0.0, 1), ("bf16", 0.05, 2)])
def test_grpo_update_on_groups_sampled_on_the_gpu(dtype, beta, updates):
    tok = make_tokenizer()
    model = make_model(tok, seed=1).to("cuda")  # fp32 weights; compute in cfg.dtype
    reference = copy.deepcopy(model).requires_grad_(False) if beta else None
    engine = TorchEngine(model, tok, dtype=torch.bfloat16 if dtype == "bf16" else None)
    task = get_task("arithmetic", n_train=20, n_test=4)
    cfg = ZeroConfig(device="cuda", dtype=dtype, beta=beta, updates_per_batch=updates, group_size=4, lr=1e-2,
                     temperature=1.0, template="native", rewards={"gpu_test_digit_share": 1.0, "format": 0.5},
                     warmup_steps=0, steps=10, lr_schedule="constant")
    groups = generate_groups(engine, task.examples("train")[:3], cfg.template, None,
                             SamplingParams(n=cfg.group_size, temperature=cfg.temperature, max_new_tokens=12, seed=0),
                             task)
    rewards = build_rewards(cfg.rewards, task)
    for g in groups:
        score_group(g, rewards)
    grpo.set_advantages(groups, cfg.advantage)
    assert any(g.has_signal for g in groups)
    policy = Policy(model, tok, cfg, reference)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    stats = grpo.update_policy(policy, groups, cfg)

    assert finite(stats["loss"], stats["grad_norm"], stats["kl"], stats["logprob_gap_mean"], stats["logprob_gap_max"])
    assert stats["trained_groups"] > 0 and stats["grad_norm"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())
    if dtype == "fp32":  # sampler and trainer: the same weights in the same precision, on the same GPU
        assert stats["logprob_gap_max"] < 1e-3
    if beta:
        assert stats["kl"] >= 0


def zero_config(tiny_path, out, **kw):
    base = dict(model=tiny_path, task="arithmetic", task_args={"n_train": 50, "n_test": 10}, template="native",
                rewards={"gpu_test_digit_share": 1.0, "format": 0.5}, steps=3, prompts_per_step=2, group_size=4,
                max_new_tokens=12, eval_examples=4, eval_max_new_tokens=8, lr=1e-2, warmup_steps=0,
                save_every=2, out=str(out), threads=1, temperature=1.0, device="cuda")
    base.update(kw)
    return ZeroConfig(**base)


@pytest.mark.parametrize("dtype, checkpointing", [("bf16", True), ("fp16", False), ("fp32", False)])
def test_a_short_grpo_run_on_the_gpu_trains_and_saves(tiny_path, tmp_path, dtype, checkpointing):
    cfg = zero_config(tiny_path, tmp_path / "run", dtype=dtype, gradient_checkpointing=checkpointing)
    summary = grpo.train(cfg, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(finite(r["loss"], r["grad_norm"], r["logprob_gap_mean"]) for r in rows)
    before, after = load_file(f"{tiny_path}/model.safetensors"), load_file(f"{summary['checkpoint']}/model.safetensors")
    assert all(v.dtype == torch.float32 for v in after.values())  # the fp32 master weights are what is saved
    assert len([k for k in before if not torch.equal(before[k], after[k])]) > len(before) // 2
    assert (tmp_path / "run" / "final" / "r1lab_complete.json").is_file()
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_gpu_run_resumes(tiny_path, tmp_path, monkeypatch):
    real_update, calls = grpo.update_policy, {"n": 0}

    def dies_in_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(grpo, "update_policy", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        grpo.train(zero_config(tiny_path, tmp_path / "run", steps=3, dtype="bf16"), progress=False)
    monkeypatch.setattr(grpo, "update_policy", real_update)
    summary = grpo.train(zero_config(tiny_path, tmp_path / "run", steps=3, dtype="bf16", resume=True), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["checkpoint"]


# ------------------------------------------------------------------------------------------------------- SFT
@pytest.mark.parametrize("dtype, checkpointing", [("bf16", False), ("bf16", True), ("fp32", False)])
def test_sft_on_the_gpu_lowers_the_loss_and_saves(tmp_path, dtype, checkpointing):
    model_path, data = tiny_sft_run(tmp_path)
    cfg = SftConfig(model=model_path, data=data, template="native", epochs=3, lr=3e-3, warmup_steps=0,
                    tokens_per_step=300, row_tokens=120, eval_size=6, out=str(tmp_path / "run"), threads=1,
                    device="cuda", dtype=dtype, gradient_checkpointing=checkpointing)
    summary = train_sft(cfg, progress=False)
    assert finite(summary["train_loss_first"], summary["train_loss_last"], summary["eval_loss_before"],
                  summary["eval_loss_after"])
    assert summary["eval_loss_after"] < summary["eval_loss_before"] * 0.8  # as on the CPU (tests/sft/test_sft.py)
    saved = load_file(f"{summary['checkpoint']}/model.safetensors")
    assert all(v.dtype == torch.float32 for v in saved.values())


# ------------------------------------------------------------------------------------------------------ eval
def eval_config(tiny_path, out, **kw):
    base = dict(model=tiny_path, benchmarks=["task:arithmetic"], task_args={"n_train": 10, "n_test": 7}, k=3,
                max_new_tokens=6, problems_per_batch=2, template="native", out=str(out), threads=1, device="cuda")
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_eval_on_the_gpu_writes_samples_and_a_summary(tiny_path, tmp_path, dtype):
    summary = run_eval(eval_config(tiny_path, tmp_path / "run", dtype=dtype), progress=False)
    result = summary["benchmarks"]["task:arithmetic"]
    assert result["n_problems"] == 7 and result["k"] == 3 and result["n_samples"] == 21
    rows = [json.loads(l) for l in (tmp_path / "run" / "task-arithmetic" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 21 and all(0 < r["tokens"] <= 6 for r in rows)
    assert (tmp_path / "run" / "report.md").is_file()


def test_eval_through_the_cli_with_device_and_dtype(tiny_path, tmp_path):
    from r1lab.cli import main

    code = main(["eval", "--model", tiny_path, "--benchmarks", "[task:arithmetic]", "--task-args", "{n_train: 10, n_test: 3}",
                 "--k", "2", "--max-new-tokens", "4", "--template", "native", "--device", "cuda", "--dtype", "bf16",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["benchmarks"]["task:arithmetic"]["n_samples"] == 6


# ---------------------------------------------------------------------------------------------------- server
def test_the_server_answers_from_a_gpu_engine_streamed_and_not():
    try:
        from starlette.testclient import TestClient
    except (ImportError, RuntimeError) as e:  # starlette's client needs httpx2 (or httpx)
        pytest.skip(f"no HTTP test client: {e}")
    tok = make_tokenizer()
    engine = TorchEngine(make_model(tok, seed=3).to("cuda"), tok)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2+3?"}], "temperature": 0,
           "max_tokens": 16}
    with TestClient(create_app(engine, "tiny", template="native")) as client:
        reply = client.post("/v1/chat/completions", json=ask)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        message = body["choices"][0]["message"]
        assert 0 < body["usage"]["completion_tokens"] <= 16
        text = (message.get("reasoning_content") or "") + (message["content"] or "")

        streamed = ""
        with client.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            for choice in json.loads(line[len("data: "):])["choices"]:
                delta = choice["delta"]
                streamed += (delta.get("reasoning_content") or "") + (delta.get("content") or "")
        assert streamed == text  # greedy: the same reply both ways
        assert client.get("/health").json()["status"] == "ok"
