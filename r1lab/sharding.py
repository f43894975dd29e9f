"""FSDP2 (``--parallel fsdp``): each of the N processes keeps 1/N of the trained weights, of their gradients and of
AdamW's two moments, so a model whose training state does not fit one process's memory still trains.

PyTorch's own ``fully_shard`` does the sharding (each decoder layer a unit, then the rest of the model): a forward
all-gathers a layer's weights just before it runs and frees them after; a backward reduce-scatters the gradients,
summed (not averaged: r1lab's losses already weight tokens over the whole batch, :mod:`r1lab.distributed`). Since
every forward and backward is then a collective, the processes must run as many of them as each other: the trainers
pad their micro-batches to the longest process's count (:func:`filler_count`), and :func:`sum_gradients` leaves
the reduction to FSDP.

Generation does not run on the sharded model (its steps differ per process, and the engine reads the weights
directly). Each process keeps a plain full copy of the policy for its engine, refreshed after every update by
:func:`push_weights` (one parameter all-gathered at a time), as TRL gathers ZeRO-3 weights to generate and verl
syncs its FSDP weights into its rollout engine. Per process that is (1 + 4/N) x the weights' bytes, against 4x for
replication (weights, gradients, two AdamW moments); a reference policy (beta > 0) is sharded too.

Checkpoints: ``checkpoints/step-N/sharded/`` is a ``torch.distributed.checkpoint`` folder (weights and optimizer,
each process writing its own shards), complete only once every process's part is (:func:`r1lab.models
.save_checkpoint_together`); it loads back into any number of processes. ``final/`` is a consolidated HF folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from r1lab import packing
from r1lab.models import SHARDED_STATE

ONE_PROCESS = ("parallel=fsdp shards the model over processes: start it with --nproc N (N >= 2) or under torchrun, "
               "or use --parallel replicate in one process")
ONE_PROCESS_RESUME = ("this run was started with --parallel fsdp, and its checkpoints are sharded: resume it with "
                      "--nproc N (N >= 2, any number: the shards are redistributed)")


def shard(model):
    """Shard ``model`` in place over the process group with ``fully_shard``: every block named in HF's
    ``_no_split_modules`` (the decoder layers) is a unit, the root holds the rest (embeddings, tied head, norm).
    Gradients are summed over processes. Returns ``model``."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if hasattr(model, "peft_config"):
        raise ValueError("--parallel fsdp does not shard LoRA models; use --parallel replicate with --lora-r (the "
                         "adapters are small), or full fine-tuning with fsdp")
    names = set(getattr(model, "_no_split_modules", None) or ())
    for module in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(module)
    fully_shard(model)
    # token_logprobs runs the decoder and then the head's weight in chunks, not model.forward: as a registered
    # forward method it gets the root's gathering (embeddings, head, final norm) and gradient reduction
    setattr(model, packing.SHARDED_FORWARD, functools.partial(packing.unsharded_token_logprobs, model))
    register_fsdp_forward_method(model, packing.SHARDED_FORWARD)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum: the loss weights are already global
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def check_processes(parallel: str, world, resume: bool = False) -> None:
    """Refuse ``parallel=fsdp`` in a single process, saying how to start more."""
    if parallel == "fsdp" and world.size == 1:
        raise ValueError(ONE_PROCESS_RESUME if resume else ONE_PROCESS)


def filler_count(count: int, world, model) -> int:
    """How many empty micro-batches this process adds to its ``count`` so that every process runs as many passes
    as the busiest: none for a model that is not sharded (its passes are its own)."""
    return world.max(count) - count if is_sharded(model) else 0


def sum_gradients(model, world) -> None:
    """Every process's gradient becomes the whole batch's: all-reduced for a replicated model; a sharded model's
    backward has already summed them (each process keeping its shard)."""
    if not is_sharded(model):
        world.sum_gradients(model.parameters())


@torch.no_grad()
def push_weights(sharded, plain) -> None:
    """Copy the sharded model's weights into the plain full copy ``plain`` (every process, in step): each parameter
    all-gathered in turn, so only one full tensor is in flight."""
    target = dict(plain.named_parameters())
    for name, param in sharded.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        target[name].copy_(full)


def full_state_dict(sharded) -> dict:
    """The consolidated weights, on the CPU, on rank 0 (``{}`` on the others); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def plain_model(sharded, state: dict):
    """A plain (unsharded) model of ``sharded``'s architecture holding ``state`` (from :func:`full_state_dict`)."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(sharded.config, dtype=next(iter(state.values())).dtype)
    plain.generation_config = sharded.generation_config  # its stop tokens and sampling defaults
    missing, unexpected = plain.load_state_dict(state, strict=False)  # a tied head may not be a separate entry
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    tensors = plain.state_dict(keep_vars=True)
    loaded = {tensors[k].data_ptr() for k in state if k in tensors}
    untied = [k for k in missing if tensors[k].data_ptr() not in loaded]  # missing and not tied to a loaded one
    if unexpected or untied:
        raise RuntimeError(f"the gathered weights do not fit {type(plain).__name__}: missing {untied}, "
                           f"unexpected {unexpected}")
    return plain


def save_state(folder: Path, model, optimizer) -> None:
    """Every process writes its shards of the weights and of the optimizer state into ``folder``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(folder))


def load_state(folder: Path, model, optimizer) -> None:
    """Read ``folder`` (written by :func:`save_state` with any number of processes) into this process's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optim}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def is_sharded_checkpoint(folder: Path | None) -> bool:
    return folder is not None and (Path(folder) / SHARDED_STATE).is_dir()


def held_bytes(model, optimizer) -> dict:
    """Bytes of training state this process holds: its weights, gradients and optimizer state (its shards under
    FSDP, everything under replication)."""
    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    optim = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"weights": sum(local(p) for p in params), "gradients": sum(local(p.grad) for p in params
                                                                       if p.grad is not None),
            "optimizer": sum(local(v) for v in optim)}


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, MiB: allocated tensors on a GPU, the resident set on a CPU (which also
    counts the Python process and the libraries, ~0.5 GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
