"""The GRPO loop of R1-Zero: sample a group per prompt, score it with rule rewards, update the policy.

One step, as :func:`train` reads:

    groups = sample_groups(...)        # engine.generate: G completions per prompt, scored by the rewards
    set_advantages(groups, ...)        # (r - mean) / std within each group
    stats = update_policy(...)         # clipped surrogate (+ beta * KL), AdamW, grad clipping

What it simplifies, next to the paper: one process (no separate rollout workers); the reference policy for
beta > 0 is a frozen copy of the starting weights (with LoRA: the same model with adapters disabled);
the "old" policy is the sampling policy (the engine returns its log-probs), so mu = 1 needs no extra
forward pass. Groups whose advantages are all zero add nothing to the gradient when beta = 0 and are
skipped in the backward pass (the loss is still averaged over every token of the batch).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from r1lab.chat import render
from r1lab.config import (RESUME_MAY_CHANGE, ZeroConfig, check_run_folder, check_same_config, save_config,
                          task_args_for)
from r1lab.engine import SamplingParams, TorchEngine
from r1lab.engine.onednn import onednn_linears
from r1lab.files import append_jsonl, read_log, write_json, write_jsonl
from r1lab.evaluate.runner import sample_problems, summarize_records
from r1lab.models import is_complete_checkpoint, load_model, no_adapter, save_checkpoint
from r1lab.rewards import get_reward, score
from r1lab.rewards.format import format as format_reward, reflection_rate
from r1lab.rl.advantages import get_advantage
from r1lab.rl.diagnostics import check_step
from r1lab.rl.losses import LOSS_AGGREGATIONS, grpo_loss, token_weights
from r1lab.rl.packing import pack, token_logprobs
from r1lab.rl.types import Group
from r1lab.tasks import get_task
from r1lab.tasks.base import question_text


def train(cfg: ZeroConfig, progress: bool = True) -> dict:
    """Run R1-Zero GRPO as configured; returns the run's summary (also written to ``OUT/summary.json``)."""
    run = Path(cfg.out)
    check_config(cfg)
    check_run_folder(run, ZeroConfig)
    if cfg.resume and not (run / "config.yaml").is_file() and ((run / "checkpoints").exists() or (run / "final").exists()):
        raise ValueError(f"--resume: {run} has checkpoints but no config.yaml, so its settings are unknown; restore "
                         "it from a backup, or start a new run in another --out")
    if cfg.resume and (run / "config.yaml").is_file():
        check_same_config(cfg, run / "config.yaml", ignore=RESUME_MAY_CHANGE)
        if is_finished(run):
            tqdm.write(f"r1lab: {run} is a finished run (final/ and summary.json are there); nothing to do")
            return json.loads((run / "summary.json").read_text())
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    task = get_task(cfg.task, **task_args_for(cfg.task, cfg.task_args))
    train_set = task.examples("train")
    test_set = task.examples("test")[:cfg.eval_examples]

    start_step, checkpoint = _resume_point(run, cfg)
    _start_run_dir(run, cfg, start_step)
    model, tokenizer = _load_policy(cfg, checkpoint)
    engine = TorchEngine(model, tokenizer)
    rewards = build_rewards(cfg, task)
    reference = _reference_policy(model, cfg, checkpoint)
    optimizer, scheduler = _optimizer(model, cfg)
    state = _load_trainer_state(checkpoint, optimizer, scheduler)
    history = _read_metrics(run)

    if "eval_before" not in state:
        state["eval_before"] = evaluate(engine, task, test_set, cfg, desc="eval before")
        _log_line(f"held-out accuracy before: {state['eval_before']['accuracy']:.1%} "
                  f"(format {state['eval_before']['format_rate']:.1%}, n={len(test_set)})")

    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="GRPO",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        groups = sample_groups(engine, task, train_set, rewards, cfg, step)
        t_gen = time.perf_counter() - t0
        set_advantages(groups, cfg.advantage)
        with onednn_linears(model):  # CPU fp32: oneDNN's products, 2x MKL's on AMD (r1lab.engine.onednn)
            stats = update_policy(model, reference, optimizer, groups, cfg, tokenizer.pad_token_id)
        scheduler.step()

        metrics = step_metrics(step + 1, groups, stats, t_gen, time.perf_counter() - t0, cfg)
        metrics["lr"] = scheduler.get_last_lr()[0]
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            metrics["eval_accuracy"] = evaluate(engine, task, test_set, cfg, desc="eval")["accuracy"]
        append_jsonl(run / "metrics.jsonl", metrics)
        append_jsonl(run / "samples.jsonl", *_sample_records(step + 1, groups))
        bar.write(_console_line(metrics))
        for warning in check_step(metrics, history, cfg.max_new_tokens):
            bar.write(f"  warning: {warning}")
        history.append(metrics)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:  # the last step is a resume point too
            _save(run, model, tokenizer, optimizer, scheduler, state, step + 1, cfg)
    bar.close()

    final = _save(run, model, tokenizer, optimizer, scheduler, state, cfg.steps, cfg, final=True)  # before eval
    state["eval_after"] = evaluate(engine, task, test_set, cfg, desc="eval after")
    summary = _summary(cfg, history, state, final)
    from r1lab.report import write_zero_report

    write_zero_report(run, history, summary)
    write_json(run / "summary.json", summary)  # last: its presence means finished
    return summary


def check_config(cfg: ZeroConfig) -> None:
    """Refuse settings that cannot work before any model is loaded; each message says what to change."""
    from r1lab.chat import TEMPLATES
    from r1lab.rewards import REWARDS
    from r1lab.rl.advantages import ADVANTAGES

    problems = []
    if cfg.template not in TEMPLATES:
        problems.append(f"template={cfg.template!r}: choose one of {', '.join(TEMPLATES)}")
    if cfg.advantage not in ADVANTAGES:
        problems.append(f"advantage={cfg.advantage!r}: choose one of {', '.join(ADVANTAGES)}")
    if cfg.loss_aggregation not in LOSS_AGGREGATIONS:
        problems.append(f"loss_aggregation={cfg.loss_aggregation!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        problems.append(f"lr_schedule={cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    for name in cfg.rewards:
        if name != "accuracy" and name not in REWARDS:
            problems.append(f"reward {name!r} is unknown: use accuracy or one of {', '.join(sorted(REWARDS))}")
    for name in ("steps", "prompts_per_step", "max_new_tokens", "eval_max_new_tokens", "save_every",
                 "updates_per_batch", "groups_per_micro_batch", "max_sampling_rounds", "keep_checkpoints", "eval_samples"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}={getattr(cfg, name)}: must be at least 1")
    if cfg.group_size < 2:
        problems.append(f"group_size={cfg.group_size}: GRPO compares samples within a group, use at least 2")
    if not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
        problems.append(f"temperature={cfg.temperature}: RL needs sampling, use a finite value > 0 (e.g. 0.7)")
    if cfg.eval_samples > 1 and not cfg.eval_temperature > 0:
        problems.append(f"eval_temperature={cfg.eval_temperature}: sampled evaluation needs a value > 0 (0.6)")
    if cfg.beta < 0 or cfg.lr <= 0 or cfg.clip_low < 0 or cfg.clip_high < 0:
        problems.append("beta, clip_low and clip_high must be >= 0 and lr > 0")
    if problems:
        raise SystemExit("r1lab zero: " + "\n  ".join(["bad settings:"] + problems))


# ----------------------------------------------------------------------------------------------- sampling
def sample_groups(engine, task, train_set, rewards, cfg: ZeroConfig, step: int) -> list[Group]:
    """Sample and score ``prompts_per_step`` groups. With dynamic sampling (DAPO), groups whose rewards are all
    equal are dropped and more prompts are drawn, for at most ``max_sampling_rounds`` rounds."""
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, stop=cfg.stop, include_stop_str_in_output=True,
                            seed=cfg.seed * 100_003 + step)
    kept: list[Group] = []
    rounds = cfg.max_sampling_rounds if cfg.dynamic_sampling else 1
    for r in range(rounds):
        examples = _batch_examples(train_set, cfg.prompts_per_step, cfg.seed, step, r)
        groups = generate_groups(engine, examples, cfg.template, cfg.prefill, params, task)
        for group in groups:
            score_group(group, rewards)
        kept.extend(g for g in groups if g.has_signal or not cfg.dynamic_sampling)
        if len(kept) >= cfg.prompts_per_step:
            break
        params = dataclasses.replace(params, seed=params.seed + 7919)
    if cfg.dynamic_sampling and len(kept) < cfg.prompts_per_step:
        tqdm.write(f"  dynamic sampling: only {len(kept)}/{cfg.prompts_per_step} groups with signal "
                   f"after {rounds} rounds")
    return kept[:cfg.prompts_per_step] if kept else groups


def generate_groups(engine, examples: list[dict], template: str, prefill: str | None, params: SamplingParams,
                    task) -> list[Group]:
    rendered = [render([{"role": "user", "content": question_text(ex, task)}], template, engine.tokenizer,
                       prefill=prefill) for ex in examples]
    prompts = [engine.encode(r.text) for r in rendered]
    outputs = engine.generate(prompts, params)
    return [Group(example=ex, prompt_ids=ids, prefill=r.prefill, completions=out)
            for ex, ids, r, out in zip(examples, prompts, rendered, outputs)]


def score_group(group: Group, rewards: dict) -> None:
    scores = score(group.responses, [group.example] * len(group.completions), rewards,
                   completion_lengths=[len(c) for c in group.completions])
    group.rewards, group.per_reward = scores.totals, scores.per_reward


def build_rewards(cfg: ZeroConfig, task) -> dict:
    """``name -> (fn, weight)`` from the config; ``accuracy`` is the task's own verifier."""
    out = {}
    for name, weight in cfg.rewards.items():
        if name == "accuracy":
            fn = task.verify
        elif name == "language_consistency":
            fn = partial(get_reward(name), language=cfg.language)
        elif name == "overlong":
            fn = partial(get_reward(name), max_length=cfg.max_new_tokens)
        else:
            fn = get_reward(name)
        out[name] = (fn, float(weight))
    return out


def _batch_examples(train_set: list[dict], k: int, seed: int, step: int, round_: int) -> list[dict]:
    """The prompts of a step: a seeded walk through shuffled epochs, so resume sees the same data."""
    start = step * k + round_ * 7919 * k
    out = []
    for i in range(start, start + k):
        epoch, index = divmod(i, len(train_set))
        out.append(train_set[_epoch_order(len(train_set), seed, epoch)[index]])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


# -------------------------------------------------------------------------------------------- advantages
def set_advantages(groups: list[Group], estimator: str) -> None:
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)  # (P, G)
    advantages = get_advantage(estimator)(rewards)
    for g, a in zip(groups, advantages.tolist()):
        g.advantages = a


# -------------------------------------------------------------------------------------------- the update
def update_policy(model, reference, optimizer, groups: list[Group], cfg: ZeroConfig, pad_id: int) -> dict:
    """``updates_per_batch`` AdamW steps on the GRPO loss over ``groups``; returns mean statistics."""
    lengths = [len(c) for g in groups for c in g.completions]
    weights = token_weights(lengths, cfg.loss_aggregation)  # (N,)
    advantages = torch.tensor([a for g in groups for a, c in zip(g.advantages, g.completions) for _ in c.token_ids])
    old_logprobs = torch.tensor([lp for g in groups for c in g.completions for lp in c.logprobs])
    offsets = _group_token_offsets(groups)
    active = [i for i, g in enumerate(groups) if cfg.beta > 0 or any(abs(a) > 0 for a in g.advantages)]
    micro_batches = [active[i:i + cfg.groups_per_micro_batch] for i in range(0, len(active), cfg.groups_per_micro_batch)]
    packs = [pack([(groups[i].prompt_ids, [c.token_ids for c in groups[i].completions]) for i in mb], pad_id)
             for mb in micro_batches]
    index = [torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in mb]) for mb in micro_batches]

    if cfg.updates_per_batch > 1:  # recompute old log-probs through the training path, so the first ratio is 1
        with torch.no_grad():
            for pk, idx in zip(packs, index):
                old_logprobs[idx] = token_logprobs(model, pk, cfg.temperature).cpu()
    ref_logprobs = None
    if cfg.beta > 0:
        ref_logprobs = torch.zeros_like(old_logprobs)
        with torch.no_grad(), no_adapter(reference) as ref:
            for pk, idx in zip(packs, index):
                ref_logprobs[idx] = token_logprobs(ref, pk, cfg.temperature).cpu()

    totals = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "grad_norm": 0.0}
    model.train()
    for _ in range(cfg.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for pk, idx in zip(packs, index):
            logprobs = token_logprobs(model, pk, cfg.temperature)
            loss, stats = grpo_loss(logprobs, old_logprobs[idx], advantages[idx], weights[idx], cfg.clip_low,
                                    cfg.clip_high, cfg.beta, None if ref_logprobs is None else ref_logprobs[idx])
            loss.backward()
            loss_sum += loss.item()
            totals["clip_frac"] += stats["clip_frac"].item() / cfg.updates_per_batch
            totals["kl"] += stats.get("kl", torch.tensor(0.0)).item() / cfg.updates_per_batch
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        totals["loss"] += loss_sum / cfg.updates_per_batch
        totals["grad_norm"] += float(grad_norm) / cfg.updates_per_batch
    totals["trained_groups"] = len(active)
    return totals


def _group_token_offsets(groups: list[Group]) -> list[int]:
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + sum(len(c) for c in g.completions))
    return offsets


# -------------------------------------------------------------------------------------------- evaluation
def evaluate(engine, task, examples: list[dict], cfg: ZeroConfig, desc: str = "eval", chunk: int = 32) -> dict:
    """Held-out accuracy through the code ``r1lab eval`` runs (:mod:`r1lab.evaluate`): pass@1 over
    ``eval_samples`` samples per problem (one greedy answer when 1) with its 95% interval, and the format rate."""
    if not examples:
        return {"accuracy": math.nan, "format_rate": math.nan, "n": 0}
    sampled = cfg.eval_samples > 1
    params = SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature if sampled else 0.0,
                            top_p=0.95 if sampled else 1.0, max_new_tokens=cfg.eval_max_new_tokens, stop=cfg.stop,
                            include_stop_str_in_output=True, seed=cfg.seed)
    problems = []
    with tqdm(total=len(examples), desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(examples), chunk):
            problems += sample_problems(engine, task, examples[start:start + chunk], params, cfg.template, cfg.prefill)
            bar.update(min(chunk, len(examples) - start))
    pass1 = summarize_records(problems, task)["metrics"]["pass@1"]
    responses = [r["completion"] for records in problems for r in records]
    return {"accuracy": pass1["value"], "ci_low": pass1["ci_low"], "ci_high": pass1["ci_high"],
            "format_rate": sum(format_reward(r) for r in responses) / len(responses), "n": len(examples),
            "samples": cfg.eval_samples}


# ----------------------------------------------------------------------------------------------- metrics
def step_metrics(step: int, groups: list[Group], stats: dict, t_gen: float, t_total: float, cfg: ZeroConfig) -> dict:
    completions = [c for g in groups for c in g.completions]
    responses = [r for g in groups for r in g.responses]
    rewards = [r for g in groups for r in g.rewards]
    metrics = {
        "step": step,
        "reward": sum(rewards) / len(rewards),
        "format_rate": sum(format_reward(r) for r in responses) / len(responses),
        "mean_length": sum(len(c) for c in completions) / len(completions),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "reflection_rate": reflection_rate(responses),
        "zero_variance_frac": sum(not g.has_signal for g in groups) / len(groups),
    }
    for name in groups[0].per_reward:
        values = [v for g in groups for v in g.per_reward[name] if v is not None]
        metrics[f"reward/{name}"] = sum(values) / len(values) if values else math.nan
    metrics["accuracy"] = metrics.get("reward/accuracy", math.nan)
    metrics.update({k: v for k, v in stats.items() if k != "kl" or cfg.beta > 0})
    metrics["seconds"] = t_total
    metrics["seconds_generate"] = t_gen
    return metrics


def _console_line(m: dict) -> str:
    kl = f" kl {m['kl']:.4f}" if "kl" in m else ""
    ev = f" eval_acc {m['eval_accuracy']:.1%}" if "eval_accuracy" in m else ""
    return (f"step {m['step']:4d} | reward {m['reward']:.3f} acc {m['accuracy']:.3f} format {m['format_rate']:.2f} "
            f"len {m['mean_length']:5.1f}{kl} clip {m['clip_frac']:.3f} | {m['seconds']:.1f}s"
            f" (gen {m['seconds_generate']:.1f}s){ev}")


def _log_line(text: str) -> None:
    tqdm.write(text)


def _sample_records(step: int, groups: list[Group]):
    for g in groups:
        for response, reward, c, adv in zip(g.responses, g.rewards, g.completions, g.advantages):
            yield {"step": step, "prompt": g.example["prompt"], "answer": g.example.get("answer"),
                   "response": response, "reward": reward, "advantage": adv, "finish_reason": c.finish_reason,
                   "tokens": len(c)}


def _summary(cfg, history, state, final: Path) -> dict:
    k = max(1, min(5, len(history) // 3))
    first, last = history[:k], history[-k:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows) if rows else math.nan  # noqa: E731
    return {
        "config": dataclasses.asdict(cfg),
        "steps": len(history),
        "eval_before": state["eval_before"],
        "eval_after": state["eval_after"],
        "reward_first_steps": mean(first, "reward"),
        "reward_last_steps": mean(last, "reward"),
        "steps_averaged": k,
        "seconds_total": sum(r["seconds"] for r in history),
        "seconds_per_step": mean(history, "seconds"),
        "checkpoint": str(final),
    }


# ------------------------------------------------------------------------------------ model, optimiser
def _load_policy(cfg: ZeroConfig, checkpoint: Path | None):
    lora = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.lora_r else None
    if checkpoint is None:
        return load_model(cfg.model, lora=lora)
    if not lora:
        return load_model(str(checkpoint))
    from peft import PeftModel

    base, tokenizer = load_model(cfg.model)
    return PeftModel.from_pretrained(base, checkpoint / "adapter", is_trainable=True), tokenizer


def _reference_policy(model, cfg: ZeroConfig, checkpoint: Path | None):
    """None for beta = 0 (no reference forward at all); for LoRA the same model (adapters get disabled);
    else a frozen copy of the starting weights (reloaded when resuming, since the policy has moved)."""
    if cfg.beta == 0:
        return None
    if hasattr(model, "disable_adapter"):
        return model
    reference = (copy.deepcopy(model) if checkpoint is None else load_model(cfg.model)[0]).eval()
    reference.requires_grad_(False)
    return reference


def _optimizer(model, cfg: ZeroConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=cfg.warmup_steps,
                                                                     total=cfg.steps, schedule=cfg.lr_schedule))
    return optimizer, scheduler


LR_SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, warmup: int, total: int, schedule: str, floor: float = 0.1) -> float:
    """Linear warmup, then cosine or linear decay to ``floor`` of the peak, or constant.

    >>> [round(lr_factor(s, 2, 10, "cosine"), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.1]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


# --------------------------------------------------------------------------------- run folder, resume
def _start_run_dir(run: Path, cfg: ZeroConfig, start_step: int) -> None:
    """Create or reopen the run folder. A new run never reuses a folder that holds one; a resumed run must have
    the settings it was started with. Log lines past the resume point are moved to ``*.discarded.jsonl``
    (they are redone), never deleted."""
    saved = run / "config.yaml"
    if not cfg.resume and run.exists() and {p.name for p in run.iterdir()} == {"config.yaml"}:
        check_same_config(cfg, saved)  # a run that died before its first step: the same command may start again
    elif not cfg.resume and run.exists() and any(run.iterdir()):
        what = "a run. Pass --resume true to continue it, or" if saved.exists() else "files. Move them, or"
        raise ValueError(f"{run} already holds {what} choose another --out; r1lab never overwrites a run.")
    run.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        save_config(cfg, saved)
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = run / name
        rows = read_log(path)
        redone = [r for r in rows if r["step"] > start_step]
        if redone or (path.exists() and len(rows) < len(path.read_text().splitlines())):  # redone, or torn
            if redone:
                append_jsonl(path.with_suffix(".discarded.jsonl"), *redone)
            write_jsonl(path, [r for r in rows if r["step"] <= start_step])


def is_finished(run: Path) -> bool:
    """The run wrote its final checkpoint, report and summary (the summary is written last)."""
    return (run / "summary.json").is_file() and is_complete_checkpoint(run / "final")


def _resume_point(run: Path, cfg: ZeroConfig) -> tuple[int, Path | None]:
    if not cfg.resume:
        return 0, None
    checkpoints = sorted((p for p in (run / "checkpoints").glob("step-*") if is_complete_checkpoint(p)),
                         key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        tqdm.write(f"r1lab: --resume: no complete checkpoint in {run / 'checkpoints'} yet; starting from step 0")
        return 0, None
    last = checkpoints[-1]
    tqdm.write(f"r1lab: resuming from {last}")
    return int(last.name.split("-")[1]), last


def _read_metrics(run: Path) -> list[dict]:
    """The logged steps, with ``null`` (a mean over nothing) read back as NaN."""
    rows = read_log(run / "metrics.jsonl")
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]


def _load_trainer_state(checkpoint: Path | None, optimizer, scheduler) -> dict:
    if checkpoint is None:
        return {}
    saved = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return saved["state"]


def _save(run: Path, model, tokenizer, optimizer, scheduler, state, step: int, cfg: ZeroConfig,
          final: bool = False) -> Path:
    def extra(folder: Path) -> None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                    "step": step}, folder / "trainer_state.pt")
        if hasattr(model, "peft_config"):
            model.save_pretrained(folder / "adapter")

    folder = run / ("final" if final else f"checkpoints/step-{step:06d}")
    save_checkpoint(model, tokenizer, folder, meta={"step": step, "model": cfg.model, "template": cfg.template,
                                                    "prefill": cfg.prefill},
                    write_extra=None if final else extra)
    if not final:
        checkpoints = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in checkpoints[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return folder
