"""``r1lab sft``: supervised fine-tuning, packed, with the loss on assistant tokens only.

One step, as :func:`train_sft` reads: take the next ``tokens_per_step`` tokens of samples, pack them into rows
of at most ``row_tokens`` (the prompt prefix the samples of a row share, such as the template's instruction, is
computed once, and each sample attends only to that prefix and to itself: :func:`r1lab.packing.pack_samples`),
compute the log-prob of every response token one row at a time, and minimise their mean negative over the step's
response tokens; AdamW, gradient clipping, warmup then decay. Peak memory follows ``row_tokens``: one row is
in flight at a time and attention runs per sample, with no (L, L) mask. A held-out slice gives an eval loss
once an epoch (or every ``eval_every`` steps) and after the last step. ``max_steps`` and ``limit`` make a short
run. The run folder gets ``metrics.jsonl``, ``plots/loss.png``, ``report.md`` and the final checkpoint
``final/`` (written atomically). Left out: resuming a half-done SFT run (rerun it: SFT here is minutes), and
sequence lengths beyond ``max_length`` (skipped and counted, never silently cut).
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import torch

from r1lab import distributed, sharding, tracking
from r1lab.config import SftConfig, save_config
from r1lab.console import log, progress as progress_bar
from r1lab.files import append_jsonl, write_json
from r1lab.models import (
    checkpoint_activations,
    dtype_reason,
    load_model,
    resolve_device,
    resolve_dtype,
    save_checkpoint,
    use_threads,
)
from r1lab.optim import clip_and_step, loss_scaler, make_optimizer, precision
from r1lab.packing import pack_samples, token_logprobs
from r1lab.plots import plot_curves
from r1lab.runs import check_run_folder
from r1lab.sft.data import encode, load_sft_data, pack_rows

#: epoch ``e`` of the samples is shuffled with seed ``seed * EPOCH_SEED_STRIDE + e``
EPOCH_SEED_STRIDE = 1000


def train_sft(cfg: SftConfig, progress: bool = True) -> dict:
    cfg.validate()
    world = distributed.world()  # under torchrun: each process trains on its share of every step's rows
    cfg = dataclasses.replace(cfg, nproc=world.size) if world.size > 1 else cfg  # what config.yaml records
    sharding.check_processes(cfg.parallel, world)
    use_threads(world.threads(cfg.threads))
    run = Path(cfg.out)
    check_run_folder(run, SftConfig)
    if (run / "final").exists():
        raise ValueError(f"{run} already holds a finished SFT run; choose another --out")
    if run.exists() and any(run.iterdir()):  # SFT does not resume: never write over what a run left
        what = "an interrupted SFT run (no final/; SFT does not resume)" if (run / "config.yaml").exists() else "files"
        raise ValueError(f"{run} already holds {what}; choose another --out, or remove {run} to start over")
    tracking.check(cfg.report_to)
    conversations = load_sft_data(cfg.data)
    if cfg.limit:
        conversations = conversations[:cfg.limit]
    lora = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.lora_r else None
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)  # the compute precision; the weights stay fp32 (r1lab.optim)
    log(f"training precision: {dtype_reason(cfg.dtype, device)}")
    model, tokenizer = load_model(cfg.model, lora=lora, device=device)
    if cfg.gradient_checkpointing:
        checkpoint_activations(model)
    if cfg.parallel == "fsdp":
        model = sharding.shard(model)
    samples = [encode(m, cfg.template, tokenizer) for m in conversations]
    too_long = sum(len(p) + len(r) > cfg.max_length for p, r in samples)
    samples = [s for s in samples if len(s[0]) + len(s[1]) <= cfg.max_length]
    if not samples:
        raise ValueError(f"every sample is longer than max_length={cfg.max_length} tokens; raise it")
    random.Random(cfg.seed).shuffle(samples)
    n_eval = int(round(cfg.eval_size * len(samples))) if cfg.eval_size < 1 else int(cfg.eval_size)
    n_eval = min(n_eval, len(samples) - 1)
    held_out, train = samples[:n_eval], samples[n_eval:]
    epochs = [_steps_of_epoch(train, cfg, epoch) for epoch in range(cfg.epochs)]
    schedule = [(epoch, rows, rows is steps[-1]) for epoch, steps in enumerate(epochs) for rows in steps]
    schedule = schedule[:cfg.max_steps or None]
    total = len(schedule)
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, total, cfg.lr_schedule)
    scaler = loss_scaler(device, dtype)
    world.barrier()  # every process has checked the folder before rank 0 writes into it
    # the trackers first: one that cannot start leaves the folder as it was, so the same command can run again
    trackers = tracking.start(cfg.report_to, run, cfg, name=cfg.run_name, group=cfg.report_group, main=world.main)
    if world.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    metrics_path = run / "metrics.jsonl"
    history = []
    evaluates = world.main or cfg.parallel == "fsdp"  # a sharded model's forward needs every process, in step
    first_eval = eval_loss(model, held_out if evaluates else [], tokenizer.pad_token_id, cfg.row_tokens, dtype)
    if first_eval is not None:
        trackers.log({"eval_loss": first_eval}, step=0)
    if world.main:
        log(f"SFT: {len(train)} samples ({too_long} over max_length skipped), {total} steps; " +
            (f"{n_eval} held out, eval loss before {first_eval:.3f}" if held_out else "no held-out set"))
    model.train()
    bar = progress_bar(total=total, desc="SFT", disable=not progress or not world.main)
    for step, (epoch, rows, last_of_epoch) in enumerate(schedule, start=1):
        t0 = time.perf_counter()
        loss, tokens = sft_step(model, optimizer, rows, tokenizer.pad_token_id, cfg.max_grad_norm, dtype, scaler,
                                world)
        scheduler.step()
        record = {"step": step, "epoch": epoch + 1, "loss": loss, "tokens": tokens, "lr": scheduler.get_last_lr()[0],
                  "seconds": time.perf_counter() - t0}
        due = step == total or (step % cfg.eval_every == 0 if cfg.eval_every else last_of_epoch)
        if held_out and evaluates and due:
            record["eval_loss"] = eval_loss(model, held_out, tokenizer.pad_token_id, cfg.row_tokens, dtype)
            model.train()
        history.append(record)
        if world.main:
            append_jsonl(metrics_path, record)
            trackers.log(record, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", **({"eval": f"{record['eval_loss']:.3f}"} if "eval_loss" in record else {}))
    bar.close()
    model.eval()
    if sharding.is_sharded(model):
        weights = sharding.full_state_dict(model)  # every process sends its shards; rank 0 gets the whole model
        model = sharding.plain_model(model, weights) if world.main else None
    if not world.main:
        world.barrier()  # rank 0 writes final/ and the report
        return {}
    final = save_checkpoint(model, tokenizer, run / "final", meta={"stage": "sft", "steps": total, "data": cfg.data,
                                                                        "model": cfg.model, "template": cfg.template})
    summary = {"samples": len(train), "held_out": n_eval, "skipped_too_long": too_long, "steps": total,
               "eval_loss_before": first_eval, "eval_loss_after": history[-1].get("eval_loss"),
               "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"],
               "checkpoint": str(final)}
    write_json(run / "summary.json", summary)
    _report(run, history, summary)
    trackers.finish()
    world.barrier()
    return summary


def _steps_of_epoch(samples, cfg: SftConfig, epoch: int) -> list[list[list[tuple]]]:
    """The samples in a seeded order per epoch, cut into optimizer steps of about ``tokens_per_step`` tokens, each
    step's samples packed into rows of at most ``row_tokens`` (:func:`r1lab.sft.data.pack_rows`)."""
    order = list(range(len(samples)))
    random.Random(cfg.seed * EPOCH_SEED_STRIDE + epoch).shuffle(order)
    steps, current, tokens = [], [], 0
    for i in order:
        current.append(samples[i])
        tokens += len(samples[i][0]) + len(samples[i][1])
        if tokens >= cfg.tokens_per_step:
            steps.append(pack_rows(current, cfg.row_tokens))
            current, tokens = [], 0
    if current:
        steps.append(pack_rows(current, cfg.row_tokens))
    return steps


def sft_step(model, optimizer, rows, pad_id: int, max_grad_norm: float, dtype: torch.dtype = torch.float32,
             scaler: torch.amp.GradScaler | None = None,
             world: distributed.World = distributed.SINGLE) -> tuple[float, int]:
    """One optimizer step over ``rows`` (one forward and backward each, computing in ``dtype``): mean negative
    log-likelihood of every response token. Under torchrun each process takes every ``size``-th row; the
    gradients summed over processes are those of all rows."""
    n_tokens = sum(len(r) for row in rows for _, r in row)
    total = 0.0
    mine = [row for _, row in world.share(rows)]
    mine += [None] * sharding.filler_count(len(mine), world, model)  # FSDP: as many passes as the busiest process
    for row in mine:
        with precision(model, dtype):
            logprobs = token_logprobs(model, pack_samples([row or [([pad_id], [pad_id])]], pad_id))
        loss = -logprobs.sum() / n_tokens if row is not None else logprobs.sum() * 0.0
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    sharding.sum_gradients(model, world)
    total = world.sum(total)
    clip_and_step(model, optimizer, max_grad_norm, scaler)
    optimizer.zero_grad(set_to_none=True)
    return total, n_tokens


@torch.no_grad()
def eval_loss(model, samples, pad_id: int, row_tokens: int, dtype: torch.dtype = torch.float32) -> float | None:
    """Mean negative log-likelihood per response token over ``samples``; None when there are none."""
    if not samples:
        return None
    model.eval()
    total, count = 0.0, 0
    with precision(model, dtype):
        for row in pack_rows(samples, row_tokens):
            logp = token_logprobs(model, pack_samples([row], pad_id))
            total += -logp.sum().item()
            count += logp.numel()
    return total / count


def _report(run: Path, history: list[dict], summary: dict) -> None:
    steps = [h["step"] for h in history]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if summary["eval_loss_before"] is not None:
        evals.insert(0, (0, summary["eval_loss_before"]))
    plot = plot_curves(run / "plots" / "loss.png", steps, {"train loss": [h["loss"] for h in history]},
                       "SFT loss (assistant tokens)", "loss per token", smooth=5,
                       points={"held-out loss": ([s for s, _ in evals], [v for _, v in evals])} if evals else None)
    held_out = (f"Held-out loss per response token: {summary['eval_loss_before']:.3f} before, "
                f"{summary['eval_loss_after']:.3f} after." if summary["eval_loss_before"] is not None
                else "No held-out set (eval_size gives 0 samples), so no held-out loss.")
    lines = ["# SFT run", "", f"{summary['samples']} training samples, {summary['held_out']} held out, "
             f"{summary['steps']} steps ({summary['skipped_too_long']} samples over max_length skipped).", "",
             f"{held_out} Train loss: {summary['train_loss_first']:.3f} (first step) -> "
             f"{summary['train_loss_last']:.3f} (last).", "", f"Checkpoint: `{summary['checkpoint']}`", "",
             f"![loss](plots/{plot.name})", ""]
    (run / "report.md").write_text("\n".join(lines))
