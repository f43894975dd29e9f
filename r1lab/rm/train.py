"""``r1lab rm``: train a scalar reward model on preference pairs with the Bradley-Terry loss.

The model is the causal LM's backbone with a value head (``AutoModelForSequenceClassification``, one label; for the
embedded model a ``LlamaForSequenceClassification``) whose output at a reply's last token (the EOS appended to it) is
the reply's score. One step, as :func:`train_rm` reads: take ``batch_size`` pairs, lay each out as one packed row
``prompt | chosen | rejected`` (the prompt computed once, each reply attending to it and to itself:
:func:`r1lab.rewards.reward_model.values`), and minimise ``-logsigmoid(r_chosen - r_rejected)`` (:func:`bt_loss`);
AdamW, clipping, warmup then decay. Only the top ``train_layers`` decoder layers and the head learn by default,
which keeps a run to minutes on two CPU cores; ``--train-layers 0`` trains them all.

The pairs are cut into a seeded train and held-out split (``test_size``). After training, the held-out pairs give
the pairwise accuracy (chosen scored above rejected; a tie counts a half) with a 95% bootstrap interval over pairs
(:mod:`r1lab.evaluate.metrics`), and the statistics a reward needs, stored in the checkpoint's marker file:
``score_mean`` and ``score_std`` over all held-out scores (a reward normalises with them), the mean chosen and
rejected scores, and ``threshold``, their midpoint (a ``pass`` reward is 1 above it). The run folder gets
``config.yaml``, ``metrics.jsonl``, ``plots/loss.png``, ``plots/accuracy.png``, ``report.md``, ``summary.json``
and ``final/`` (written atomically; loadable by :func:`r1lab.rewards.reward_model.load_reward_model` and by
``AutoModelForSequenceClassification``).

Left out: resuming (rerun; the default run is minutes), margins or ties in the data, ensembles, and the
reward-model-in-the-loop tricks of RLHF (reward centring during training, length debiasing).
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from r1lab import tracking
from r1lab.config import RmConfig, save_config
from r1lab.console import log, progress as progress_bar
from r1lab.evaluate.metrics import bootstrap_ci
from r1lab.files import append_jsonl, write_json
from r1lab.models import dtype_reason, load_model, resolve_device, resolve_dtype, save_checkpoint, use_threads
from r1lab.optim import clip_and_step, loss_scaler, make_optimizer, precision
from r1lab.plots import plot_curves
from r1lab.rewards.reward_model import RM_KIND, encode, values
from r1lab.rm.data import load_pairs
from r1lab.runs import check_run_folder
from r1lab.tasks.base import seeded_split

#: epoch ``e`` visits the training pairs in the order seeded by ``seed * EPOCH_SEED_STRIDE + e``
EPOCH_SEED_STRIDE = 1000
EVAL_ROWS = 16  # held-out pairs per forward pass


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss, the mean of ``-log sigmoid(r_chosen - r_rejected)`` over pairs; both ``(B,)``.

    >>> round(bt_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # ln 2: a margin of 0
    0.6931
    >>> bt_loss(torch.tensor([9.0]), torch.tensor([-9.0])).item() < 1e-7
    True
    """
    return -F.logsigmoid(chosen - rejected).mean()


def pair_accuracy(chosen: list[float], rejected: list[float]) -> list[float]:
    """Per pair: 1.0 when the chosen reply scores higher, 0.5 on a tie, else 0.0.

    >>> pair_accuracy([2.0, 0.0, 1.0], [1.0, 1.0, 1.0])
    [1.0, 0.0, 0.5]
    """
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]


def value_head_model(causal_lm, pad_token_id: int):
    """A one-label sequence classifier with ``causal_lm``'s backbone weights and a freshly initialised head."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    getattr(model, model.base_model_prefix).load_state_dict(
        getattr(causal_lm, causal_lm.base_model_prefix).state_dict())
    return model.to(next(causal_lm.parameters()).device)


def freeze_below(model, train_layers: int) -> int:
    """Freeze the backbone except its top ``train_layers`` decoder layers and final norm (0: train everything); the
    value head always trains. Returns the count of trainable parameters."""
    if train_layers:
        base = getattr(model, model.base_model_prefix)
        layers = next(m for m in base.modules() if isinstance(m, torch.nn.ModuleList))
        base.requires_grad_(False)
        for module in [*layers[-train_layers:], getattr(base, "norm", None)]:
            if module is not None:
                module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pair_values(model, batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)``, each ``(B,)``, for encoded pairs ``(prompt_ids, [chosen_ids, rejected_ids])``."""
    scores = values(model, batch, pad_id).view(len(batch), 2)  # (B, 2)
    return scores[:, 0], scores[:, 1]


def rm_step(model, optimizer, batch, pad_id: int, max_grad_norm: float, dtype: torch.dtype = torch.float32,
            scaler: torch.amp.GradScaler | None = None) -> dict:
    """One optimizer step of the Bradley-Terry loss over ``batch``; its loss, accuracy and mean margin."""
    with precision(model, dtype):
        chosen, rejected = pair_values(model, batch, pad_id)
        loss = bt_loss(chosen, rejected)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    clip_and_step(model, optimizer, max_grad_norm, scaler)
    optimizer.zero_grad(set_to_none=True)
    c, r = chosen.detach().tolist(), rejected.detach().tolist()
    return {"loss": loss.item(), "accuracy": sum(pair_accuracy(c, r)) / len(c),
            "margin": sum(a - b for a, b in zip(c, r)) / len(c)}


@torch.no_grad()
def score_pairs(model, encoded, pad_id: int, dtype: torch.dtype = torch.float32) -> tuple[list[float], list[float]]:
    """The chosen and rejected scores of every encoded pair."""
    model.eval()
    chosen, rejected = [], []
    with precision(model, dtype):
        for start in range(0, len(encoded), EVAL_ROWS):
            c, r = pair_values(model, encoded[start:start + EVAL_ROWS], pad_id)
            chosen += c.tolist()
            rejected += r.tolist()
    return chosen, rejected


def held_out_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """Pairwise accuracy with its 95% bootstrap interval, the BT loss, and the score statistics a reward uses."""
    correct = pair_accuracy(chosen, rejected)
    low, high = bootstrap_ci(correct)
    scores = torch.tensor(chosen + rejected, dtype=torch.float64)
    mean_chosen, mean_rejected = sum(chosen) / len(chosen), sum(rejected) / len(rejected)
    threshold = (mean_chosen + mean_rejected) / 2
    return {"accuracy": sum(correct) / len(correct), "ci_low": low, "ci_high": high, "pairs": len(correct),
            "loss": bt_loss(torch.tensor(chosen), torch.tensor(rejected)).item(),
            "score_mean": scores.mean().item(), "score_std": scores.std().item() if len(scores) > 1 else 1.0,
            "mean_chosen": mean_chosen, "mean_rejected": mean_rejected, "threshold": threshold,
            "pass_rate_chosen": sum(c >= threshold for c in chosen) / len(chosen),
            "pass_rate_rejected": sum(r >= threshold for r in rejected) / len(rejected)}


def train_rm(cfg: RmConfig, progress: bool = True) -> dict:
    cfg.validate()
    started = time.perf_counter()
    use_threads(cfg.threads)
    run = Path(cfg.out)
    check_run_folder(run, RmConfig)
    if (run / "final").exists():
        raise ValueError(f"{run} already holds a finished reward model; choose another --out")
    if run.exists() and any(run.iterdir()):  # no resume: never write over what a run left
        raise ValueError(f"{run} already holds files (an interrupted rm run does not resume); choose another --out, "
                         f"or remove {run} to start over")
    tracking.check(cfg.report_to)
    pairs = load_pairs(cfg.data, cfg.seed)[:cfg.limit or None]
    test_size = int(cfg.test_size) if cfg.test_size >= 1 else float(cfg.test_size)
    if len(pairs) < 2 or (isinstance(test_size, int) and test_size >= len(pairs)):
        raise ValueError(f"{cfg.data} gives {len(pairs)} pairs (limit={cfg.limit}), too few to hold out "
                         f"test_size={cfg.test_size} and train on the rest; give more pairs or a smaller test_size")
    train, test = seeded_split(pairs, test_size, cfg.seed)
    if not train or not test:
        raise ValueError(f"test_size={cfg.test_size} leaves {len(train)} training and {len(test)} held-out pairs of "
                         f"{len(pairs)}; both need at least one")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)  # compute precision; weights and optimizer state stay fp32
    log(f"training precision: {dtype_reason(cfg.dtype, device)}")
    causal, tokenizer = load_model(cfg.model, device=device)
    torch.manual_seed(cfg.seed)  # the head's initial weights: the same run gives the same reward model
    model = value_head_model(causal, tokenizer.pad_token_id)
    del causal
    trainable = freeze_below(model, cfg.train_layers)
    pad = tokenizer.pad_token_id
    encoded_train = [encode(p.messages, [p.chosen, p.rejected], tokenizer, cfg.max_length) for p in train]
    encoded_test = [encode(p.messages, [p.chosen, p.rejected], tokenizer, cfg.max_length)[:2] for p in test]
    cut = sum(e[2] for e in encoded_train)
    encoded_train = [e[:2] for e in encoded_train]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, total, cfg.lr_schedule)
    scaler = loss_scaler(device, dtype)
    # the trackers first: one that cannot start leaves the folder as it was, so the same command can run again
    trackers = tracking.start(cfg.report_to, run, cfg, name=cfg.run_name, group=cfg.report_group)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    log(f"rm: {len(train)} training pairs ({cut} cut to max_length={cfg.max_length}), {len(test)} held out; "
        f"{total} steps of {cfg.batch_size} pairs; {trainable / 1e6:.1f}M trainable parameters")
    history: list[dict] = []
    train_seconds = eval_seconds = 0.0
    bar = progress_bar(total=total, desc="rm", unit="step", disable=not progress)
    step = 0
    for epoch in range(cfg.epochs):
        order = list(range(len(encoded_train)))
        random.Random(cfg.seed * EPOCH_SEED_STRIDE + epoch).shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            step += 1
            model.train()
            t0 = time.perf_counter()
            record = rm_step(model, optimizer, [encoded_train[i] for i in order[start:start + cfg.batch_size]], pad,
                             cfg.max_grad_norm, dtype, scaler)
            scheduler.step()
            record = {"step": step, "epoch": epoch + 1, **record, "lr": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - t0}
            train_seconds += record["seconds"]
            if step == total or (cfg.eval_every and step % cfg.eval_every == 0):
                t0 = time.perf_counter()
                held_out = held_out_metrics(*score_pairs(model, encoded_test, pad, dtype))
                eval_seconds += time.perf_counter() - t0
                record.update({"eval_accuracy": held_out["accuracy"], "eval_ci_low": held_out["ci_low"],
                               "eval_ci_high": held_out["ci_high"], "eval_loss": held_out["loss"]})
            history.append(record)
            append_jsonl(run / "metrics.jsonl", record)
            trackers.log(record, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}",
                            **({"held_out": f"{record['eval_accuracy']:.3f}"} if "eval_accuracy" in record else {}))
    bar.close()
    model.eval()
    meta = {"kind": RM_KIND, "stage": "rm", "model": cfg.model, "data": cfg.data, "max_length": cfg.max_length,
            "train_layers": cfg.train_layers, "steps": total, "train_pairs": len(train), "held_out_pairs": len(test),
            **{key: held_out[key] for key in ("score_mean", "score_std", "threshold", "mean_chosen", "mean_rejected",
                                              "accuracy", "ci_low", "ci_high")}}
    final = save_checkpoint(model, tokenizer, run / "final", meta=meta)
    summary = {"train_pairs": len(train), "held_out_pairs": len(test), "cut_to_max_length": cut, "steps": total,
               "trainable_parameters": trainable, "held_out": held_out, "train_loss_first": history[0]["loss"],
               "train_loss_last": history[-1]["loss"], "train_seconds": train_seconds, "eval_seconds": eval_seconds,
               "seconds": time.perf_counter() - started, "device": str(device), "threads": torch.get_num_threads(),
               "checkpoint": str(final)}
    write_json(run / "summary.json", summary)
    _report(run, cfg, history, summary)
    trackers.finish()
    return summary


def _report(run: Path, cfg: RmConfig, history: list[dict], summary: dict) -> None:
    steps = [h["step"] for h in history]
    evals = [h for h in history if "eval_accuracy" in h]
    plot_curves(run / "plots" / "loss.png", steps, {"train loss": [h["loss"] for h in history]},
                "Reward model: Bradley-Terry loss", "loss per pair", smooth=5,
                points={"held-out loss": ([h["step"] for h in evals], [h["eval_loss"] for h in evals])})
    plot_curves(run / "plots" / "accuracy.png", steps, {"train pairwise accuracy": [h["accuracy"] for h in history]},
                "Reward model: pairwise accuracy (chosen scored above rejected)", "accuracy", smooth=10,
                ylim=(0, 1), points={"held-out accuracy": ([h["step"] for h in evals],
                                                           [h["eval_accuracy"] for h in evals])})
    h = summary["held_out"]
    lines = ["# Reward model run", "",
             f"Data `{cfg.data}`: {summary['train_pairs']} training pairs, {summary['held_out_pairs']} held out "
             f"(seed {cfg.seed}); {summary['cut_to_max_length']} training pairs cut to max_length={cfg.max_length} "
             f"tokens. Model `{cfg.model}` with a value head, top {cfg.train_layers or 'all'} layers trained "
             f"({summary['trainable_parameters'] / 1e6:.1f}M parameters), {summary['steps']} steps of "
             f"{cfg.batch_size} pairs, lr {cfg.lr}.", "",
             f"**Held-out pairwise accuracy: {h['accuracy']:.1%}** (95% bootstrap interval {h['ci_low']:.1%} to "
             f"{h['ci_high']:.1%}, {h['pairs']} pairs; chance is 50%). Held-out Bradley-Terry loss {h['loss']:.3f} "
             f"(ln 2 = 0.693 at chance). Train loss {summary['train_loss_first']:.3f} (first step) -> "
             f"{summary['train_loss_last']:.3f} (last).", "",
             "Scores on the held-out pairs, stored in the checkpoint for rewards to use:", "",
             "| statistic | value |", "|---|---|",
             f"| mean of all scores (`score_mean`) | {h['score_mean']:.4f} |",
             f"| standard deviation (`score_std`) | {h['score_std']:.4f} |",
             f"| mean chosen / mean rejected | {h['mean_chosen']:.4f} / {h['mean_rejected']:.4f} |",
             f"| pass threshold (midpoint, `threshold`) | {h['threshold']:.4f} |",
             f"| share at or above it: chosen / rejected | {h['pass_rate_chosen']:.1%} / "
             f"{h['pass_rate_rejected']:.1%} |",
             "", f"Time: {summary['seconds']:.0f} s in all ({summary['train_seconds']:.0f} s training, "
             f"{summary['eval_seconds']:.0f} s held-out scoring) on {summary['device']} with {summary['threads']} "
             "threads.", "", f"Checkpoint: `{summary['checkpoint']}`. Use it as a GRPO reward:", "", "```yaml",
             "rewards:", "  accuracy: 1.0",
             f"  harmless: {{reward_model: {summary['checkpoint']}, part: whole, weight: 1.0, on: general}}", "```", "",
             "![loss](plots/loss.png)", "", "![accuracy](plots/accuracy.png)", ""]
    (run / "report.md").write_text("\n".join(lines))
