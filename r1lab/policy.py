"""What the GRPO loop trains, however training is laid out: one process, a whole copy in each of N processes
(replication, :mod:`r1lab.distributed`), or 1/N of the weights, gradients and AdamW state in each (FSDP2,
:mod:`r1lab.sharding`).

The loop asks a :class:`Policy` for the few things verl's actor worker offers (``compute_log_prob``,
``compute_ref_log_prob``, ``update_actor``) and nothing about how it is built::

    policy.logprobs(packs, T)                    # no grad: the old policy's (mu > 1), or pi_ref's (reference=True)
    for logprobs, entropies in policy.train_passes(packs, T):  # with grad, in the training precision
        policy.backward(loss(logprobs, entropies))
    grad_norm = policy.step(max_grad_norm)          # the whole batch's gradient, clipped; one AdamW step
    policy.push_weights(engine)                     # the engine samples the new weights
    policy.save(folder, meta, state), policy.load_state(checkpoint)

and reads ``policy.world`` (which process this is, and the collectives over the data-parallel batch),
``policy.model`` (the full model the engine samples from), ``policy.device``, ``policy.dtype`` and ``policy.lr``.

Three classes implement it. :class:`Policy`, one process: the model that samples is the model that trains.
:class:`ReplicatedPolicy`: the same in each process, with the gradients summed over processes before each step.
:class:`ShardedPolicy`: a sharded copy trains; since FSDP's passes are collectives, every process runs as many as
the busiest (the rest on a pad token), and after each update the full copy that samples is given the new weights.
:func:`open_policy` picks one from the settings and the processes.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch

from r1lab import sharding
from r1lab.config import ZeroConfig
from r1lab.console import log
from r1lab.distributed import SINGLE, World, world as this_world
from r1lab.models import (
    SHARDED_STATE,
    checkpoint_activations,
    dtype_reason,
    load_model,
    no_adapter,
    policy_weights,
    resolve_device,
    resolve_dtype,
    save_checkpoint,
    save_checkpoint_together,
)
from r1lab.optim import clip_and_step, loss_scaler, make_optimizer, precision
from r1lab.packing import Packed, pack, token_logprobs

__all__ = ["SINGLE", "Policy", "ReplicatedPolicy", "ShardedPolicy", "World", "open_policy", "processes"]


def processes(parallel: str, resume: bool = False) -> World:
    """This process's place among the processes that train (joining the process group under torchrun), refusing a
    layout that cannot run here: FSDP in a single process."""
    world = this_world()
    sharding.check_processes(parallel, world, resume)
    return world


class Policy:
    """The policy in one process: ``model`` samples and trains (fp32 weights, AdamW, the LR schedule of ``cfg``);
    ``reference`` is the frozen policy of the KL term (None when beta = 0)."""

    def __init__(self, model, tokenizer, cfg: ZeroConfig, reference=None, world: World = SINGLE):
        self.model, self.tokenizer, self.world = model, tokenizer, world
        self.trainer, self.reference = self._layout(model, reference)
        self.optimizer, self.scheduler = make_optimizer(self.trainer, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                                        cfg.steps, cfg.lr_schedule)
        self.device = next(model.parameters()).device
        self.dtype = resolve_dtype(cfg.dtype, self.device)  # what the training passes compute in
        self.scaler = loss_scaler(self.device, self.dtype)  # fp16: a dynamic loss scale; else it does nothing
        self.pad_id = tokenizer.pad_token_id

    def _layout(self, model, reference) -> tuple:
        """``(trainer, reference)``: the modules that train and that give the reference log-probs."""
        return model, reference

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.scheduler.get_last_lr()[0]

    # --------------------------------------------------------------------------------------------- passes
    def logprobs(self, packs: list[Packed], temperature: float, reference: bool = False) -> list[torch.Tensor]:
        """Each pack's token log-probs (fp32, no grad) under the weights now, or under the reference policy (with
        LoRA: the same model with its adapters disabled)."""
        with torch.no_grad(), (no_adapter(self.reference) if reference else nullcontext(self.trainer)) as model, \
                precision(model, self.dtype):
            out = [token_logprobs(model, pk, temperature).float() for pk in packs + self._fillers(len(packs))]
        return out[:len(packs)]

    def train_passes(self, packs: list[Packed], temperature: float):
        """Each pack's ``(log-probs, entropies)`` with grad, computed in the training precision (the entropies of the
        tokens' whole next-token distributions, chunked: :func:`r1lab.packing.token_logprobs`); call
        :meth:`backward` on a loss of them before asking for the next."""
        fillers = self._fillers(len(packs))  # before any pass: under FSDP, asking is a collective too
        self.trainer.train()
        for pk in packs:
            yield self._train_pass(pk, temperature)
        for pk in fillers:  # a filler's backward only keeps this process in step with the others
            logprobs, _ = self._train_pass(pk, temperature)
            (logprobs.sum() * 0.0).backward()

    def _train_pass(self, pk: Packed, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        with precision(self.trainer, self.dtype):
            logprobs, entropies = token_logprobs(self.trainer, pk, temperature, entropy=True)
        return logprobs.float(), entropies.float()

    def _fillers(self, count: int) -> list[Packed]:
        """The empty passes this process adds to its ``count`` to run as many as the busiest process: none where a
        process's passes are its own."""
        return []

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, max_grad_norm: float) -> float:
        """One AdamW step on the whole batch's gradient, clipped to ``max_grad_norm``; returns the norm before."""
        self._sum_gradients()
        return clip_and_step(self.trainer, self.optimizer, max_grad_norm, self.scaler)

    def _sum_gradients(self) -> None:
        """Every process's gradient becomes the whole batch's (nothing to do in one process)."""

    def advance_schedule(self) -> None:
        """The next step's learning rate (once per batch of samples, however many updates it had)."""
        self.scheduler.step()

    def push_weights(self, engine) -> None:
        """The engine samples the weights trained so far: it is woken up (vLLM takes its memory back) and given them
        (the torch engine samples :attr:`model` itself)."""
        engine.wake_up()
        engine.load_weights(policy_weights(self.model))

    def memory(self) -> tuple[float, int]:
        """``(peak MiB, bytes of training state)`` of this process: its peak memory so far, and the weights,
        gradients and AdamW state it holds (its shards under FSDP)."""
        return sharding.peak_memory_mb(self.device), sum(sharding.held_bytes(self.trainer, self.optimizer).values())

    # ---------------------------------------------------------------------------------------- checkpoints
    def save(self, folder: Path, meta: dict, state: dict, final: bool = False) -> None:
        """A checkpoint in ``folder``: the model and tokenizer, and unless ``final`` what resuming needs
        (``trainer_state.pt``: the optimizer, the schedule, ``state`` and the step; LoRA adapters in ``adapter/``).
        Every process calls it for a step checkpoint; ``final`` (the full model) is written by rank 0 alone."""
        if final or self.world.main:
            save_checkpoint(self.model, self.tokenizer, folder, meta=meta,
                            write_extra=None if final else lambda partial: self._write_state(partial, meta, state))

    def _write_state(self, partial: Path, meta: dict, state: dict, optimizer: bool = True) -> None:
        torch.save({**({"optimizer": self.optimizer.state_dict()} if optimizer else {}),
                    "scheduler": self.scheduler.state_dict(), "state": state, "step": meta["step"]},
                   partial / "trainer_state.pt")
        if hasattr(self.trainer, "peft_config"):
            self.trainer.save_pretrained(partial / "adapter")

    def load_state(self, checkpoint: Path | None) -> dict:
        """Restore the optimizer and schedule saved with ``checkpoint`` (the weights were loaded with the model);
        returns the run state saved beside them, ``{}`` for a new run."""
        if checkpoint is None:
            return {}
        saved = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        self._load_optimizer(checkpoint, saved)
        self.scheduler.load_state_dict(saved["scheduler"])
        return saved["state"]

    def _load_optimizer(self, checkpoint: Path, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])


class ReplicatedPolicy(Policy):
    """A whole copy in each process; each computes its share of the batch's loss, weighted over the whole batch, and
    the summed gradient keeps the copies equal without a broadcast (:mod:`r1lab.distributed`)."""

    def _sum_gradients(self) -> None:
        self.world.sum_gradients(self.trainer.parameters())


class ShardedPolicy(Policy):
    """FSDP2: a sharded copy of the model trains (and a sharded reference gives the KL term's log-probs); the full
    copy the engine samples from gets the weights after each update; step checkpoints are each process's shards."""

    def _layout(self, model, reference) -> tuple:
        return sharding.shard(copy.deepcopy(model)), None if reference is None else sharding.shard(reference)

    def _fillers(self, count: int) -> list[Packed]:
        return [pack([([self.pad_id], [[self.pad_id]])], self.pad_id)] * (self.world.max(count) - count)

    def push_weights(self, engine) -> None:
        sharding.push_weights(self.trainer, self.model)  # one parameter all-gathered at a time, before vLLM wakes
        super().push_weights(engine)

    def save(self, folder: Path, meta: dict, state: dict, final: bool = False) -> None:
        if final:  # rank 0: the full copy, consolidated
            return super().save(folder, meta, state, final=True)

        def rest(partial: Path) -> None:
            self.tokenizer.save_pretrained(partial)
            self.trainer.config.save_pretrained(partial)  # with the shards: what r1lab.models.load_model needs
            self.trainer.generation_config.save_pretrained(partial)
            self._write_state(partial, meta, state, optimizer=False)  # the optimizer's shards are in sharded/

        save_checkpoint_together(folder, self.world, lambda partial: sharding.save_state(
            partial / SHARDED_STATE, self.trainer, self.optimizer), rest, meta={**meta, "sharded": True})

    def _load_optimizer(self, checkpoint: Path, saved: dict) -> None:
        sharding.load_state(checkpoint / SHARDED_STATE, self.trainer, self.optimizer)  # weights and AdamW
        sharding.push_weights(self.trainer, self.model)  # the resumed weights, for the engine to sample


def open_policy(cfg: ZeroConfig, checkpoint: Path | None, world: World) -> tuple[Policy, dict]:
    """The policy ``cfg`` trains, laid out for ``world``, resumed from ``checkpoint`` when there is one; with the
    run state saved in that checkpoint (``{}`` for a new run)."""
    model, tokenizer = load_trainable(*load_policy(cfg, checkpoint), resolve_device(cfg.device))
    if cfg.gradient_checkpointing:
        checkpoint_activations(model)
    reference = reference_policy(model, cfg, checkpoint)
    kind = ShardedPolicy if cfg.parallel == "fsdp" else ReplicatedPolicy if world.size > 1 else Policy
    policy = kind(model, tokenizer, cfg, reference, world)
    if world.main:
        log(f"training precision: {dtype_reason(cfg.dtype, policy.device)} (fp32 weights and AdamW state)")
    return policy, policy.load_state(checkpoint)


def load_trainable(policy, lora: dict | None, device) -> tuple:
    """``(model, tokenizer)`` to train on ``device``, fp32 (:mod:`r1lab.optim` says why): ``policy`` is a name
    :func:`r1lab.models.load_model` loads (with ``lora`` adapters added) or a loaded pair."""
    if isinstance(policy, str):
        return load_model(policy, dtype=torch.float32, lora=lora, device=device)
    return policy[0].to(device), policy[1]


def load_policy(cfg: ZeroConfig, checkpoint: Path | None) -> tuple:
    """What :func:`load_trainable` loads, and the LoRA settings to add: the model named in ``cfg``, the
    checkpoint a run resumes from, or for a resumed LoRA run the base model with its saved adapters."""
    lora = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.lora_r else None
    if checkpoint is None:
        return cfg.model, lora
    if not lora:  # a sharded (FSDP) checkpoint is loaded into the sharded trainer: start from the base model
        return (cfg.model if sharding.is_sharded_checkpoint(checkpoint) else str(checkpoint)), None
    from peft import PeftModel

    base, tokenizer = load_model(cfg.model)
    return (PeftModel.from_pretrained(base, checkpoint / "adapter", is_trainable=True), tokenizer), None


def reference_policy(model, cfg: ZeroConfig, checkpoint: Path | None):
    """None for beta = 0 (no reference forward at all); for LoRA the same model (adapters get disabled);
    else a frozen copy of the starting weights (reloaded when resuming, since the policy has moved)."""
    if cfg.beta == 0:
        return None
    if hasattr(model, "disable_adapter"):
        return model
    device = next(model.parameters()).device
    reference = (copy.deepcopy(model) if checkpoint is None else load_model(cfg.model, device=device)[0]).eval()
    reference.requires_grad_(False)
    return reference
