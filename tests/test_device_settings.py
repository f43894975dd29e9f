"""Device and precision rules that hold on any machine: how ``--device``/``--dtype`` are read and refused, that
every command that loads a model takes them, and how training computes in a lower precision over fp32 weights."""

import dataclasses
import platform

import pytest
import torch

from r1lab import config, models
from r1lab.models import PURPOSES, cpu_flags, dtype_reason, resolve_device, resolve_dtype
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


def test_auto_picks_the_cpu_here_and_names_are_read():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    assert resolve_device("auto") == torch.device("cpu")
    assert [resolve_dtype(d, torch.device("cpu")) for d in ("fp32", "bf16", "fp16")] == \
        [torch.float32, torch.bfloat16, torch.float16]


CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN4 = {"avx512f", "avx512_bf16"}
OLDER = {"avx2", "fma", "avx512f"}  # Skylake-SP: AVX-512 but no bf16 instructions


@pytest.mark.parametrize("flags, sample, train", [
    (SAPPHIRE_RAPIDS, torch.bfloat16, torch.bfloat16),  # AMX: bf16 measured faster for decoding and training
    (ZEN4, torch.bfloat16, torch.float32),  # bf16 dot products but no AMX: decoding only
    (OLDER, torch.float32, torch.float32),  # bf16 emulated: fp32
    (set(), torch.float32, torch.float32),
])
def test_auto_on_a_cpu_follows_its_bf16_flags_and_the_purpose(flags, sample, train):
    assert resolve_dtype("auto", CPU, "sample", flags=flags) == sample
    assert resolve_dtype("auto", CPU, "train", flags=flags) == train
    for purpose in PURPOSES:
        reason = dtype_reason("auto", CPU, purpose, flags=flags)
        assert reason.startswith("bf16: " if resolve_dtype("auto", CPU, purpose, flags=flags) == torch.bfloat16
                                 else "fp32: ")
    assert resolve_dtype("fp32", CPU, "sample", flags=SAPPHIRE_RAPIDS) == torch.float32  # asked for: as asked
    assert dtype_reason("fp32", CPU, flags=SAPPHIRE_RAPIDS) == "fp32: asked for (--dtype fp32)"


def test_the_reason_names_the_flag_it_went_by():
    assert dtype_reason("auto", CPU, "sample", flags=SAPPHIRE_RAPIDS) == \
        "bf16: this CPU has native bf16 (AMX-BF16: the amx_bf16 flag)"
    assert "no amx_bf16 or avx512_bf16 flag" in dtype_reason("auto", CPU, "sample", flags=OLDER)
    assert "no AMX" in dtype_reason("auto", CPU, "train", flags=ZEN4)


def test_a_cpu_whose_flags_cannot_be_read_gets_fp32(monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: None)
    assert resolve_dtype("auto", CPU, "sample") == torch.float32
    assert dtype_reason("auto", CPU, "sample") == "fp32: cannot read this CPU's flags to tell whether it has native bf16"


def test_this_cpus_flags_are_read_as_torch_reads_them():
    flags = cpu_flags()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if flags is None or probe is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("no flags to read here, or no torch probe to compare them with")
    assert ("avx512_bf16" in flags) == probe()
    assert ("amx_tile" in flags) == torch.cpu._is_amx_tile_supported()
    want = torch.bfloat16 if "avx512_bf16" in flags or "amx_bf16" in flags else torch.float32
    assert resolve_dtype("auto", CPU, "sample") == want  # None: this machine's flags


def test_a_purpose_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="purpose='decode': use sample | train"):
        resolve_dtype("auto", CPU, "decode")


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
