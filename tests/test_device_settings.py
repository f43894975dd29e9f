"""Device and precision rules that hold on any machine: how ``--device``/``--dtype`` are read and refused, that
every command that loads a model takes them, and how training computes in a lower precision over fp32 weights."""

import dataclasses

import pytest
import torch

from r1lab import config
from r1lab.models import resolve_device, resolve_dtype
from r1lab.optim import clip_and_step, loss_scaler, make_optimizer, precision

from conftest import make_model, make_tokenizer

MODEL_COMMANDS = [config.ZeroConfig, config.EvalConfig, config.SftConfig, config.ColdstartConfig, config.SampleConfig,
                  config.DistillConfig, config.ServeConfig, config.ChatConfig]


@pytest.mark.parametrize("cls", MODEL_COMMANDS)
def test_every_command_that_loads_a_model_takes_device_and_dtype(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert {"device", "dtype"} <= names
    assert cls().device == "auto" and cls().dtype == "auto"
    required = {"data": "x.jsonl"} if cls is config.SftConfig else {}
    for device in ("auto", "cpu", "cuda", "cuda:1"):  # spelled right: accepted (whether it exists is checked at load)
        config.make_config(cls, {**required, "device": device, "dtype": "bf16"})
    with pytest.raises(ValueError, match=r"device='gpu': use auto \| cpu \| cuda \| cuda:N"):
        config.make_config(cls, {**required, "device": "gpu"})
    with pytest.raises(ValueError, match=r"dtype='float8': choose one of auto, fp32, bf16, fp16"):
        config.make_config(cls, {**required, "dtype": "float8"})


def test_auto_picks_the_cpu_and_fp32_here_and_names_are_read():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # bf16 matmuls crawl on CPUs without AMX
    assert [resolve_dtype(d, torch.device("cpu")) for d in ("fp32", "bf16", "fp16")] == \
        [torch.float32, torch.bfloat16, torch.float16]


def test_a_gpu_that_is_not_there_is_a_sentence_not_a_cuda_traceback():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU here.*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        resolve_device("cuda:3")
    with pytest.raises(ValueError, match="use auto"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="use auto"):
        resolve_dtype("half", torch.device("cpu"))


def test_the_cli_refuses_a_missing_gpu_before_loading_anything(capsys):
    from r1lab.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["eval", "--device", "cuda", "--benchmarks", "[task:arithmetic]", "--limit", "1"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_device_and_precision_may_change_on_resume():
    from r1lab.runs import RESUME_MAY_CHANGE

    assert {"device", "dtype", "gradient_checkpointing"} <= set(RESUME_MAY_CHANGE)


def _train_steps(dtype, steps=3, scaler_dtype=None):
    tok = make_tokenizer()
    model = make_model(tok).train()
    ids = torch.randint(2, len(tok), (2, 12), generator=torch.Generator().manual_seed(0))
    optimizer, _ = make_optimizer(model, 1e-2, 0.0, 0, steps, "constant")
    scaler = loss_scaler(torch.device("cpu"), scaler_dtype or dtype)
    losses = []
    for _ in range(steps):
        with precision(model, dtype):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        clip_and_step(model, optimizer, 1.0, scaler)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_keeps_fp32_weights_and_learns(dtype):
    model, losses = _train_steps(dtype, steps=6)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights (and AdamW state) stay fp32
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the same few tokens, lr 1e-2: the loss must fall


def test_fp16_scaler_skips_a_step_whose_gradients_overflowed():
    tok = make_tokenizer()
    model = make_model(tok)
    optimizer, _ = make_optimizer(model, 1e-2, 0.0, 0, 1, "constant")
    scaler = loss_scaler(torch.device("cpu"), torch.float16)
    assert scaler.is_enabled() and not loss_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.tensor([[3, 4, 5, 6]])
    scaler.scale(model(input_ids=ids, labels=ids).loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")  # one overflowed gradient
    clip_and_step(model, optimizer, 1.0, scaler)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # skipped, not corrupted
