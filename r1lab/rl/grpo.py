"""The GRPO loop of R1-Zero: sample a group per prompt, score it with rule rewards, update the policy.

One step, as :func:`train` reads:

    groups = sample_groups(...)        # engine.generate: G completions per prompt, scored by the rewards
    set_advantages(groups, ...)        # (r - mean) / std within each group
    stats = update_policy(...)         # clipped surrogate (+ beta * KL), AdamW, grad clipping

Under torchrun (``--nproc N``) each process samples its share of the step's prompts (a group never spans two) and
the gradients are summed across processes before the step (:mod:`r1lab.distributed`); rank 0 writes the files.
With ``--parallel fsdp`` the model that trains is a sharded copy (:mod:`r1lab.sharding`) whose weights are pushed
into the engine's full copy after each update.

What it simplifies, next to the paper: no separate rollout workers; the reference policy for
beta > 0 is a frozen copy of the starting weights (with LoRA: the same model with adapters disabled);
the "old" policy is the sampling policy (the engine returns its log-probs), so mu = 1 needs no extra
forward pass. Groups whose advantages are all zero add nothing to the gradient when beta = 0 and are
skipped in the backward pass (the loss is still averaged over every token of the batch).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import random
import time
from pathlib import Path

import torch

from r1lab import distributed, sharding, tracking
from r1lab.config import ZeroConfig
from r1lab.console import log, progress as progress_bar, say
from r1lab.engine import SamplingParams, check_engine, engine_for_policy
from r1lab.evaluate.runner import heldout_accuracy
from r1lab.files import append_jsonl, write_json
from r1lab.models import (
    checkpoint_activations,
    dtype_reason,
    load_model,
    no_adapter,
    policy_weights,
    resolve_device,
    resolve_dtype,
    use_threads,
)
from r1lab.optim import clip_and_step, loss_scaler, make_optimizer, precision
from r1lab.packing import pack, token_logprobs
from r1lab.rewards.format import format_reward, reflection_rate
from r1lab.rl import run as run_folder
from r1lab.rl.advantages import get_advantage
from r1lab.rl.diagnostics import check_step
from r1lab.rl.losses import grpo_loss, token_weights, truncated_is_weights
from r1lab.rollout import Group, build_rewards, generate_groups, score_group
from r1lab.tasks import build_task

#: the prompts of step ``s`` sample with seed ``seed * STEP_SEED_STRIDE + s``; a redraw (dynamic sampling) adds
#: ``REDRAW_OFFSET`` to the seed and starts ``REDRAW_OFFSET`` batches further along the data
STEP_SEED_STRIDE, REDRAW_OFFSET = 100_003, 7919
#: epoch ``e`` of the training data is shuffled with seed ``seed * EPOCH_SEED_STRIDE + e``
EPOCH_SEED_STRIDE = 1_000_003


def train(cfg: ZeroConfig, progress: bool = True) -> dict:
    """Run R1-Zero GRPO as configured; returns the run's summary (also written to ``OUT/summary.json``)."""
    cfg.validate()
    world = distributed.world()
    cfg = dataclasses.replace(cfg, nproc=world.size) if world.size > 1 else cfg  # what config.yaml records
    sharding.check_processes(cfg.parallel, world, cfg.resume)
    run = Path(cfg.out)
    run_folder.check_run(run, cfg)
    if cfg.resume and run_folder.is_finished(run):
        say(f"r1lab: {run} is a finished run (final/ and summary.json are there); nothing to do")
        return json.loads((run / "summary.json").read_text())
    check_engine(cfg.engine, cfg.engine_args)  # before anything is written
    tracking.check(cfg.report_to)
    task = build_task(cfg.task, cfg.task_args)
    rewards = build_rewards(cfg.rewards, task, cfg.language, cfg.max_new_tokens, device=cfg.device)
    train_set, test_set = task.examples("train"), task.examples("test")[:cfg.eval_examples]

    start_step, checkpoint = run_folder.resume_point(run, cfg)
    world.barrier()  # every process has read the folder as it was before rank 0 writes
    trackers = tracking.start(cfg.report_to, run, cfg, name=cfg.run_name, group=cfg.report_group,
                              resume_step=start_step if cfg.resume else None, main=world.main)
    if world.main:
        run_folder.start_logs(run, cfg, start_step)
    threads = world.threads(cfg.threads)
    use_threads(threads)
    model, tokenizer = load_trainable(*load_policy(cfg, checkpoint), resolve_device(cfg.device))
    if cfg.gradient_checkpointing:
        checkpoint_activations(model)
    reference = reference_policy(model, cfg, checkpoint)
    trainer = model  # what trains: the same model, or under FSDP a sharded copy whose weights are pushed back
    if cfg.parallel == "fsdp":
        trainer = sharding.shard(copy.deepcopy(model))
        reference = None if reference is None else sharding.shard(reference)
    optimizer, scheduler = make_optimizer(trainer, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps,
                                          cfg.lr_schedule)
    device = next(model.parameters()).device
    scaler = loss_scaler(device, resolve_dtype(cfg.dtype, device))  # fp16: a dynamic loss scale
    if world.main:
        log(f"training precision: {dtype_reason(cfg.dtype, device)} (fp32 weights and AdamW state)")
    state = run_folder.load_trainer_state(checkpoint, optimizer, scheduler, trainer)
    if trainer is not model and checkpoint is not None:
        sharding.push_weights(trainer, model)  # the resumed weights, for the engine to sample
    # torch samples from ``model`` itself; vLLM from its own copy, given the new weights after every update
    engine = engine_for_policy(model, tokenizer, cfg.engine, cfg.engine_args, threads, cfg.dtype)
    history = run_folder.read_metrics(run)

    eval_seconds = None  # how long one held-out evaluation takes (for the time estimate), when one runs here
    if "eval_before" not in state and world.main:
        t0 = time.perf_counter()
        state["eval_before"] = evaluate(engine, task, test_set, cfg, desc="eval before")
        eval_seconds = time.perf_counter() - t0
        trackers.log(held_out_metrics(state["eval_before"]), step=0)
        say(f"held-out accuracy before: {state['eval_before']['accuracy']:.1%} "
            f"(format {state['eval_before']['format_rate']:.1%}, n={len(test_set)})")

    bar = progress_bar(total=cfg.steps, initial=start_step, desc="GRPO", disable=not progress or not world.main)
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        groups = sample_groups(engine, task, train_set, rewards, cfg, step, world)
        t_gen = time.perf_counter() - t0
        set_advantages(groups, cfg.advantage)
        engine.sleep()  # vLLM gives its memory to the update (where the platform can)
        stats = update_policy(trainer, reference, optimizer, groups, cfg, tokenizer.pad_token_id, scaler, world)
        if trainer is not model:
            sharding.push_weights(trainer, model)  # FSDP: the full copy gets the new weights
        engine.wake_up()
        engine.load_weights(policy_weights(model))  # vLLM's copy follows; the torch engine samples ``model`` itself
        scheduler.step()

        groups, ranks = gathered(groups, world)  # every process's groups, for the logs (rank 0 writes them)
        if world.main:
            history.append(log_step(run, step, groups, ranks, stats, t_gen, t0, scheduler, engine, task, test_set,
                                    cfg, history, start_step, eval_seconds, device, world))
            trackers.log(history[-1], step=step + 1)
            bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:  # the last step is a resume point too
            run_folder.save(run, trainer, tokenizer, optimizer, scheduler, state, step + 1, cfg, world=world)
    bar.close()
    if not world.main:
        engine.close()
        world.barrier()  # rank 0 writes final/, evaluates and reports
        return {}

    final = run_folder.save(run, model, tokenizer, optimizer, scheduler, state, cfg.steps, cfg, final=True)
    state["eval_after"] = evaluate(engine, task, test_set, cfg, desc="eval after")  # after final/ is safe
    engine.close()
    trackers.log(held_out_metrics(state["eval_after"]), step=cfg.steps)
    summary = run_folder.summarize(cfg, history, state, final)
    run_folder.write_report(run, history, summary)
    write_json(run / "summary.json", summary)  # last: its presence means finished
    trackers.finish()  # the plots, report and summary as the tracker runs' artifacts
    world.barrier()
    return summary


def log_step(run: Path, step: int, groups: list[Group], ranks: list[int], stats: dict, t_gen: float, t0: float,
             scheduler, engine, task, test_set: list[dict], cfg: ZeroConfig, history: list[dict], start_step: int,
             eval_seconds: float | None, device, world: distributed.World) -> dict:
    """Rank 0, after a step: its metrics (and a held-out evaluation when due) appended to ``metrics.jsonl``, its
    samples to ``samples.jsonl``, its console line, the time estimate after the first step, any warning."""
    metrics = step_metrics(step + 1, groups, stats, t_gen, time.perf_counter() - t0, cfg)
    metrics["lr"] = scheduler.get_last_lr()[0]
    if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
        metrics["eval_accuracy"] = evaluate(engine, task, test_set, cfg, desc="eval")["accuracy"]
    append_jsonl(run / "metrics.jsonl", metrics)
    append_jsonl(run / "samples.jsonl", *sample_records(step + 1, groups, ranks if world.size > 1 else None))
    say(console_line(metrics))
    if step == start_step and step + 1 < cfg.steps:
        say(time_estimate(metrics["seconds"], cfg.steps - step - 1, eval_seconds, device))
    for warning in check_step(metrics, history, cfg.max_new_tokens):
        say(f"  warning: {warning}")
    return metrics


# ----------------------------------------------------------------------------------------------- sampling
def sample_groups(engine, task, train_set, rewards, cfg: ZeroConfig, step: int,
                  world: distributed.World = distributed.SINGLE) -> list[Group]:
    """Sample and score this process's share of ``prompts_per_step`` groups (all of them in a single process).
    Sample j of the step's i-th prompt draws its randomness from (seed, step, i, j) alone, so it is the same
    whichever process samples it. With dynamic sampling (DAPO), groups whose rewards are all equal are dropped and
    more prompts are drawn, for at most ``max_sampling_rounds`` rounds (each process for its own share)."""
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, stop=cfg.stop, include_stop_str_in_output=True,
                            seed=cfg.seed * STEP_SEED_STRIDE + step)
    kept: list[Group] = []
    wanted = len(world.share(list(range(cfg.prompts_per_step))))
    rounds = cfg.max_sampling_rounds if cfg.dynamic_sampling else 1
    for r in range(rounds):
        mine = world.share(_batch_examples(train_set, cfg.prompts_per_step, cfg.seed, step, r))
        groups = generate_groups(engine, [ex for _, ex in mine], cfg.template, cfg.prefill, params, task,
                                 stream_ids=[i for i, _ in mine])
        for group in groups:
            score_group(group, rewards)
        kept.extend(g for g in groups if g.has_signal or not cfg.dynamic_sampling)
        if len(kept) >= wanted:
            break
        params = dataclasses.replace(params, seed=params.seed + REDRAW_OFFSET)
    if cfg.dynamic_sampling and len(kept) < wanted:
        say(f"  dynamic sampling: only {len(kept)}/{wanted} groups with signal after {rounds} rounds")
    return kept[:wanted] if kept else groups


def gathered(groups: list[Group], world: distributed.World) -> tuple[list[Group], list[int]]:
    """Every process's groups in the order a single process holds them (the step's i-th prompt i-th), and the
    rank that sampled each."""
    if world.size == 1:
        return groups, [0] * len(groups)
    parts = world.gather(groups)
    order = [(rank, j) for j in range(max(map(len, parts))) for rank in range(world.size) if j < len(parts[rank])]
    return [parts[rank][j] for rank, j in order], [rank for rank, _ in order]


def _batch_examples(train_set: list[dict], k: int, seed: int, step: int, round_: int) -> list[dict]:
    """The prompts of a step: a seeded walk through shuffled epochs, so resume sees the same data."""
    start = step * k + round_ * REDRAW_OFFSET * k
    places = [divmod(i, len(train_set)) for i in range(start, start + k)]  # (epoch, index)
    return [train_set[_epoch_order(len(train_set), seed, epoch)[index]] for epoch, index in places]


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * EPOCH_SEED_STRIDE + epoch).shuffle(order)
    return tuple(order)


# -------------------------------------------------------------------------------------------- advantages
def set_advantages(groups: list[Group], estimator: str) -> None:
    if not groups:  # a process with no prompt this step (fewer prompts than processes)
        return
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)  # (P, G)
    advantages = get_advantage(estimator)(rewards)
    for g, a in zip(groups, advantages.tolist()):
        g.advantages = a


# -------------------------------------------------------------------------------------------- the update
def update_policy(model, reference, optimizer, groups: list[Group], cfg: ZeroConfig, pad_id: int,
                  scaler: torch.amp.GradScaler | None = None, world: distributed.World = distributed.SINGLE) -> dict:
    """``updates_per_batch`` AdamW steps on the GRPO loss over ``groups``, computing in ``cfg.dtype`` over fp32
    weights; returns mean statistics, with the gap between the sampler's log-probs and the trainer's. Under
    torchrun ``groups`` are this process's share: token weights are those of the whole batch, and the summed
    gradients of all processes are the whole batch's."""
    device = next(model.parameters()).device
    dtype = resolve_dtype(cfg.dtype, device)
    lengths = [len(c) for g in groups for c in g.completions]
    weights = _my_weights(lengths, cfg.loss_aggregation, world).to(device)  # (N,)
    advantages = torch.tensor([a for g in groups for a, c in zip(g.advantages, g.completions) for _ in c.token_ids],
                              device=device)  # (N,)
    sampler_logprobs = torch.tensor([lp for g in groups for c in g.completions for lp in c.logprobs],
                                    device=device)  # (N,) as the engine computed them while sampling
    offsets = [0, *itertools.accumulate(sum(len(c) for c in g.completions) for g in groups)]  # group token spans
    active = [i for i, g in enumerate(groups) if cfg.beta > 0 or any(abs(a) > 0 for a in g.advantages)]
    size = cfg.groups_per_micro_batch
    micro_batches = [active[i:i + size] for i in range(0, len(active), size)]
    packs = [pack([(groups[i].prompt_ids, [c.token_ids for c in groups[i].completions]) for i in mb], pad_id)
             for mb in micro_batches]
    index = [torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in mb]).to(device) for mb in micro_batches]
    for _ in range(sharding.filler_count(len(packs), world, model)):  # FSDP's passes are collectives: as many as
        packs.append(pack([([pad_id], [[pad_id]])], pad_id))  # the busiest process, the extra ones on a pad token
        index.append(None)

    # The "old" policy is the trainer's own view of the weights that sampled: in bf16 the sampler's log-probs
    # differ from it. With one update per batch it is the first pass's detached log-probs (no extra forward).
    old_logprobs = None
    if cfg.updates_per_batch > 1:
        old_logprobs = torch.zeros_like(sampler_logprobs)
        with torch.no_grad(), precision(model, dtype):
            for pk, idx in zip(packs, index):
                logprobs = token_logprobs(model, pk, cfg.temperature).float()
                if idx is not None:
                    old_logprobs[idx] = logprobs
    ref_logprobs = None
    if cfg.beta > 0:
        ref_logprobs = torch.zeros_like(sampler_logprobs)
        with torch.no_grad(), no_adapter(reference) as ref, precision(ref, dtype):
            for pk, idx in zip(packs, index):
                logprobs = token_logprobs(ref, pk, cfg.temperature).float()
                if idx is not None:
                    ref_logprobs[idx] = logprobs

    totals = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "grad_norm": 0.0}
    gaps = []  # |trainer - sampler| log-prob per trained token, from the first update
    model.train()
    for update in range(cfg.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for pk, idx in zip(packs, index):
            with precision(model, dtype):
                logprobs = token_logprobs(model, pk, cfg.temperature).float()
            if idx is None:  # a filler: its backward only keeps this process in step with the others
                (logprobs.sum() * 0.0).backward()
                continue
            old = logprobs.detach() if old_logprobs is None else old_logprobs[idx]
            if update == 0:
                gaps.append((old - sampler_logprobs[idx]).abs())
            loss, stats = grpo_loss(logprobs, old, advantages[idx], weights[idx], cfg.clip_low, cfg.clip_high,
                                    cfg.beta, None if ref_logprobs is None else ref_logprobs[idx],
                                    sampler_weights=truncated_is_weights(old, sampler_logprobs[idx], cfg.tis_cap))
            (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.item()
            totals["clip_frac"] += stats["clip_frac"].item() / cfg.updates_per_batch
            totals["kl"] += stats.get("kl", torch.tensor(0.0)).item() / cfg.updates_per_batch
        sharding.sum_gradients(model, world)  # the whole batch's gradient on every process
        grad_norm = clip_and_step(model, optimizer, cfg.max_grad_norm, scaler)
        totals["loss"] += world.sum(loss_sum) / cfg.updates_per_batch
        totals["grad_norm"] += grad_norm / cfg.updates_per_batch
    totals["clip_frac"], totals["kl"] = world.sum(totals["clip_frac"]), world.sum(totals["kl"])
    totals["trained_groups"] = int(world.sum(len(active)))
    parts = world.gather((torch.cat(gaps).cpu() if gaps else torch.zeros(0), sharding.peak_memory_mb(device),
                          sum(sharding.held_bytes(model, optimizer).values())))  # (gaps, peak MiB, bytes held)
    gap = torch.cat([part for part, _, _ in parts])
    gap = gap if gap.numel() else torch.zeros(1)
    totals["logprob_gap_mean"], totals["logprob_gap_max"] = gap.mean().item(), gap.max().item()
    totals["memory/peak_mb"] = max(peak for _, peak, _ in parts)  # the busiest process's
    totals["memory/train_state_mb"] = max(held for _, _, held in parts) / 2**20  # weights, grads, AdamW (its shards)
    if world.size > 1:
        totals["memory/peak_mb_by_rank"] = [round(peak, 1) for _, peak, _ in parts]
    return totals


def _my_weights(lengths: list[int], aggregation: str, world: distributed.World) -> torch.Tensor:
    """This process's slice of the whole batch's token weights (:func:`token_weights` over every process's
    completions, taken in rank order)."""
    if world.size == 1:
        return token_weights(lengths, aggregation)
    every = world.gather(lengths)
    start = sum(sum(part) for part in every[:world.rank])
    return token_weights([n for part in every for n in part], aggregation)[start:start + sum(lengths)]


def evaluate(engine, task, examples: list[dict], cfg: ZeroConfig, desc: str = "eval") -> dict:
    """Held-out accuracy through the code ``r1lab eval`` runs: pass@1 over ``eval_samples`` samples per problem
    (one greedy answer when 1) with its 95% interval, and the format rate."""
    sampled = cfg.eval_samples > 1
    params = SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature if sampled else 0.0,
                            top_p=cfg.eval_top_p if sampled else 1.0, max_new_tokens=cfg.eval_max_new_tokens,
                            stop=cfg.stop, include_stop_str_in_output=True, seed=cfg.seed)
    return heldout_accuracy(engine, task, examples, params, cfg.template, cfg.prefill, desc)


# ----------------------------------------------------------------------------------------------- metrics
def held_out_metrics(result: dict) -> dict:
    """A held-out evaluation as the trackers log it (``eval/accuracy``, ``eval/format_rate``), the way
    ``metrics.jsonl`` names the evaluations between (``eval_accuracy``)."""
    return {"eval_accuracy": result["accuracy"], "eval_format_rate": result["format_rate"]}


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


def time_estimate(step_seconds: float, steps_left: int, eval_seconds: float | None, device) -> str:
    """What the first step says about the rest of the run: the remaining steps at its pace, plus the final
    held-out evaluation when the one before training was timed here (the first step also warms caches, so this
    errs long)."""
    seconds = step_seconds * steps_left + (eval_seconds or 0.0)
    minutes = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    evaluation = " and the final evaluation" if eval_seconds is not None else ""
    return (f"  estimated time left: about {minutes} for {steps_left} more steps{evaluation} "
            f"({step_seconds:.1f} s per step on {device})")


def console_line(m: dict) -> str:
    kl = f" kl {m['kl']:.4f}" if "kl" in m else ""
    ev = f" eval_acc {m['eval_accuracy']:.1%}" if "eval_accuracy" in m else ""
    return (f"step {m['step']:4d} | reward {m['reward']:.3f} acc {m['accuracy']:.3f} format {m['format_rate']:.2f} "
            f"len {m['mean_length']:5.1f}{kl} clip {m['clip_frac']:.3f} | {m['seconds']:.1f}s"
            f" (gen {m['seconds_generate']:.1f}s){ev}")


def sample_records(step: int, groups: list[Group], ranks: list[int] | None = None):
    """The rows of ``samples.jsonl``; under torchrun each says which ``rank`` sampled it."""
    for i, g in enumerate(groups):
        for response, reward, c, adv in zip(g.responses, g.rewards, g.completions, g.advantages):
            yield {"step": step, "prompt": g.example["prompt"], "answer": g.example.get("answer"),
                   "response": response, "reward": reward, "advantage": adv, "finish_reason": c.finish_reason,
                   "tokens": len(c), **({"rank": ranks[i]} if ranks else {})}


# ------------------------------------------------------------------------------------------- the policy
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


