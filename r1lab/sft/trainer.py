"""``r1lab sft``: supervised fine-tuning, packed, with the loss on assistant tokens only.

One step, as :func:`train_sft` reads: take the next rows (samples packed first-fit into rows of
``row_tokens``, each sample attending only to itself: :func:`r1lab.rl.packing.pack_samples`), compute the
log-prob of every response token, and minimise their mean negative over the step's response tokens; AdamW,
gradient clipping, warmup then decay. A held-out slice gives an eval loss once an epoch (or every
``eval_every`` steps). The run folder gets ``metrics.jsonl``, ``plots/loss.png``, ``report.md`` and the final
checkpoint ``final/`` (written atomically). Left out: resuming a half-done SFT run (rerun it: SFT here is
minutes), and sequence lengths beyond ``max_length`` (skipped and counted, never silently cut).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from r1lab.config import SftConfig, save_config
from r1lab.engine.onednn import onednn_linears
from r1lab.models import load_model, save_checkpoint
from r1lab.rl.grpo import LR_SCHEDULES, lr_factor
from r1lab.rl.packing import pack_samples, token_logprobs
from r1lab.sft.data import encode, first_fit, load_sft_data


def train_sft(cfg: SftConfig, progress: bool = True) -> dict:
    check_config(cfg)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    run = Path(cfg.out)
    if (run / "final").exists():
        raise ValueError(f"{run} already holds a finished SFT run; choose another --out")
    conversations = load_sft_data(cfg.data)
    lora = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.lora_r else None
    model, tokenizer = load_model(cfg.model, lora=lora)
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
    total = sum(len(e) for e in epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=cfg.warmup_steps,
                                                                     total=total, schedule=cfg.lr_schedule))
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    metrics_path = run / "metrics.jsonl"
    metrics_path.write_text("")
    history = []
    first_eval = eval_loss(model, held_out, tokenizer.pad_token_id, cfg.row_tokens)
    _log(f"SFT: {len(train)} samples ({too_long} over max_length skipped), {n_eval} held out, {total} steps; "
         f"eval loss before {first_eval:.3f}")
    model.train()
    step = 0
    bar = tqdm(total=total, desc="SFT", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for epoch, steps in enumerate(epochs):
        for rows in steps:
            t0 = time.perf_counter()
            with onednn_linears(model):  # CPU fp32: oneDNN's products (r1lab.engine.onednn)
                loss, tokens = sft_step(model, optimizer, rows, tokenizer.pad_token_id, cfg.max_grad_norm)
            scheduler.step()
            step += 1
            record = {"step": step, "epoch": epoch + 1, "loss": loss, "tokens": tokens, "lr": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - t0}
            last_of_epoch = rows is steps[-1]
            if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and last_of_epoch):
                record["eval_loss"] = eval_loss(model, held_out, tokenizer.pad_token_id, cfg.row_tokens)
                model.train()
            history.append(record)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **({"eval": f"{record['eval_loss']:.3f}"} if "eval_loss" in record else {}))
    bar.close()
    model.eval()
    final = save_checkpoint(model, tokenizer, run / "final", meta={"stage": "sft", "steps": step, "data": cfg.data})
    summary = {"samples": len(train), "held_out": n_eval, "skipped_too_long": too_long, "steps": step,
               "eval_loss_before": first_eval, "eval_loss_after": history[-1].get("eval_loss", math.nan),
               "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"],
               "checkpoint": str(final)}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    _report(run, history, summary, first_eval)
    return summary


def check_config(cfg: SftConfig) -> None:
    from r1lab.chat import TEMPLATES

    if not cfg.data:
        raise ValueError("give the training data: --data FILE.jsonl (make a cold-start set with r1lab coldstart)")
    if cfg.template not in TEMPLATES:
        raise ValueError(f"template {cfg.template!r} is unknown; choose one of {', '.join(TEMPLATES)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {cfg.lr_schedule!r} is unknown; choose one of {', '.join(LR_SCHEDULES)}")
    for name in ("epochs", "tokens_per_step", "row_tokens", "max_length"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or cfg.eval_size < 0:
        raise ValueError("lr must be > 0 and eval_size >= 0")


def _steps_of_epoch(samples, cfg: SftConfig, epoch: int) -> list[list[list[tuple]]]:
    """Rows (first-fit packed) grouped into optimizer steps of about ``tokens_per_step`` tokens, in a seeded
    order per epoch."""
    order = list(range(len(samples)))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    shuffled = [samples[i] for i in order]
    bins = first_fit([len(p) + len(r) for p, r in shuffled], cfg.row_tokens)
    random.Random(cfg.seed * 1000 + epoch + 1).shuffle(bins)
    steps, current, tokens = [], [], 0
    for b in bins:
        row = [shuffled[i] for i in b]
        current.append(row)
        tokens += sum(len(p) + len(r) for p, r in row)
        if tokens >= cfg.tokens_per_step:
            steps.append(current)
            current, tokens = [], 0
    if current:
        steps.append(current)
    return steps


def sft_step(model, optimizer, rows, pad_id: int, max_grad_norm: float, rows_per_micro: int = 2) -> tuple[float, int]:
    """One optimizer step over ``rows``: mean negative log-likelihood of every response token."""
    n_tokens = sum(len(r) for row in rows for _, r in row)
    total = 0.0
    for start in range(0, len(rows), rows_per_micro):
        packed = pack_samples(rows[start:start + rows_per_micro], pad_id)
        loss = -token_logprobs(model, packed).sum() / n_tokens
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, n_tokens


@torch.no_grad()
def eval_loss(model, samples, pad_id: int, row_tokens: int) -> float:
    """Mean negative log-likelihood per response token over ``samples``."""
    if not samples:
        return math.nan
    model.eval()
    bins = first_fit([len(p) + len(r) for p, r in samples], row_tokens)
    total, count = 0.0, 0
    with onednn_linears(model):
        for start in range(0, len(bins), 4):
            rows = [[samples[i] for i in b] for b in bins[start:start + 4]]
            logp = token_logprobs(model, pack_samples(rows, pad_id))
            total += -logp.sum().item()
            count += logp.numel()
    return total / count


def _report(run: Path, history: list[dict], summary: dict, first_eval: float) -> None:
    from r1lab.report import plot_curves

    steps = [h["step"] for h in history]
    evals = [(0, first_eval)] + [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    plot = plot_curves(run / "plots" / "loss.png", steps, {"train loss": [h["loss"] for h in history]},
                       "SFT loss (assistant tokens)", "loss per token", smooth=5,
                       points={"held-out loss": ([s for s, _ in evals], [v for _, v in evals])})
    lines = ["# SFT run", "", f"{summary['samples']} training samples, {summary['held_out']} held out, "
             f"{summary['steps']} steps ({summary['skipped_too_long']} samples over max_length skipped).", "",
             f"Held-out loss per response token: {summary['eval_loss_before']:.3f} before, "
             f"{summary['eval_loss_after']:.3f} after. Train loss: {summary['train_loss_first']:.3f} (first step) -> "
             f"{summary['train_loss_last']:.3f} (last).", "", f"Checkpoint: `{summary['checkpoint']}`", "",
             f"![loss](plots/{plot.name})", ""]
    (run / "report.md").write_text("\n".join(lines))


def _log(text: str) -> None:
    tqdm.write(text, file=sys.stderr)
