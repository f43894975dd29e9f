"""The GRPO loop of R1-Zero: sample a group per prompt, score it with rule rewards, update the policy.

One step, as :func:`train` reads:

    groups = sample_groups(...)        # engine.generate: G completions per prompt, scored by the rewards
    set_advantages(groups, ...)        # (r - mean) / std within each group, or another estimator (--advantage)
    stats = update_policy(...)         # the clipped surrogate (or GSPO's, CISPO's) + beta * KL; AdamW, clipping

The loop talks to one :class:`r1lab.policy.Policy` and never asks how training is laid out: in one process, a
replica per process, or FSDP2 shards, the policy gives log-probs, takes a step and pushes its weights to the engine.
Under torchrun (``--nproc N``) each process samples its share of the step's prompts (a group never spans two), the
policy sums the gradients across processes before the step, and rank 0 writes the files.

What it simplifies, next to the paper: no separate rollout workers; the reference policy for
beta > 0 is a frozen copy of the starting weights (with LoRA: the same model with adapters disabled);
the "old" policy is the sampling policy (the engine returns its log-probs), so mu = 1 needs no extra
forward pass. Groups whose advantages are all zero add nothing to the gradient when beta = 0 and are
skipped in the backward pass (the loss is still averaged over every token of the batch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import time
from pathlib import Path

import torch

from r1lab import tracking
from r1lab.config import ZeroConfig
from r1lab.console import progress as progress_bar, say
from r1lab.engine import SamplingParams, check_engine, engine_for_policy
from r1lab.files import write_json
from r1lab.models import use_threads
from r1lab.policy import SINGLE, Policy, World, open_policy, processes
from r1lab.rewards.build import build_rewards
from r1lab.rl import run as run_folder
from r1lab.rl.advantages import get_advantage
from r1lab.rl.batch import train_batch
from r1lab.rl.diagnostics import evaluate, held_out_metrics, step_metrics, step_notes
from r1lab.rl.losses import Objective, grpo_loss
from r1lab.rollout import Group, generate_groups, score_group
from r1lab.tasks import build_task

#: the prompts of step ``s`` sample with seed ``seed * STEP_SEED_STRIDE + s``; a redraw (dynamic sampling) adds
#: ``REDRAW_OFFSET`` to the seed and starts ``REDRAW_OFFSET`` batches further along the data
STEP_SEED_STRIDE, REDRAW_OFFSET = 100_003, 7919
#: epoch ``e`` of the training data is shuffled with seed ``seed * EPOCH_SEED_STRIDE + e``
EPOCH_SEED_STRIDE = 1_000_003


def train(cfg: ZeroConfig, progress: bool = True) -> dict:
    """Run R1-Zero GRPO as configured; returns the run's summary (also written to ``OUT/summary.json``)."""
    cfg.validate()
    world = processes(cfg.parallel, cfg.resume)
    cfg = dataclasses.replace(cfg, nproc=world.size) if world.size > 1 else cfg  # what config.yaml records
    run = Path(cfg.out)
    run_folder.check_run(run, cfg)
    if cfg.resume and run_folder.is_finished(run):
        say(f"r1lab: {run} is a finished run (final/ and summary.json are there); nothing to do")
        return json.loads((run / "summary.json").read_text())
    check_engine(cfg.engine, cfg.engine_args)  # before anything is written
    tracking.check(cfg.report_to)
    task = build_task(cfg.task, cfg.task_args)
    rewards = build_rewards(cfg.rewards, task, args=cfg.reward_args, language=cfg.language,
                            max_length=cfg.max_new_tokens, device=cfg.device, tags=cfg.tags)
    train_set, test_set = task.examples("train"), task.examples("test")[:cfg.eval_examples]

    start_step, checkpoint = run_folder.resume_point(run, cfg)
    world.barrier()  # every process has read the folder as it was before rank 0 writes
    trackers = tracking.start(cfg.report_to, run, cfg, name=cfg.run_name, group=cfg.report_group,
                              resume_step=start_step if cfg.resume else None, main=world.main)
    if world.main:
        run_folder.start_logs(run, cfg, start_step)
    threads = world.threads(cfg.threads)
    use_threads(threads)
    policy, state = open_policy(cfg, checkpoint, world)
    # torch samples from the policy's model itself; vLLM from its own copy, given the new weights after every update
    engine = engine_for_policy(policy.model, policy.tokenizer, cfg.engine, cfg.engine_args, threads, cfg.dtype)
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
        set_advantages(groups, cfg.advantage, world)
        engine.sleep()  # vLLM gives its memory to the update (where the platform can)
        stats = update_policy(policy, groups, cfg)
        policy.push_weights(engine)  # vLLM wakes and takes the new weights (under FSDP gathered first); torch: as is
        policy.advance_schedule()

        groups, ranks = world.gather_shares(groups)  # every process's groups, for the logs (rank 0 writes them)
        if world.main:
            metrics = step_metrics(step + 1, groups, stats, t_gen, time.perf_counter() - t0, cfg) | {"lr": policy.lr}
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                metrics["eval_accuracy"] = evaluate(engine, task, test_set, cfg, desc="eval")["accuracy"]
            notes = step_notes(metrics, history, cfg, first=step == start_step, eval_seconds=eval_seconds,
                               device=policy.device)
            run_folder.log_step(run, run_folder.StepRecord(metrics, groups, ranks if world.size > 1 else None, notes))
            history.append(metrics)
            trackers.log(metrics, step=step + 1)
            bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:  # the last step is a resume point too
            run_folder.save(run, policy, state, step + 1, cfg)
    bar.close()
    if not world.main:
        engine.close()
        world.barrier()  # rank 0 writes final/, evaluates and reports
        return {}

    final = run_folder.save(run, policy, state, cfg.steps, cfg, final=True)
    state["eval_after"] = evaluate(engine, task, test_set, cfg, desc="eval after")  # after final/ is safe
    engine.close()
    trackers.log(held_out_metrics(state["eval_after"]), step=cfg.steps)
    summary = run_folder.summarize(cfg, history, state, final)
    run_folder.write_report(run, history, summary)
    write_json(run / "summary.json", summary)  # last: its presence means finished
    trackers.finish()  # the plots, report and summary as the tracker runs' artifacts
    world.barrier()
    return summary


# ----------------------------------------------------------------------------------------------- sampling
def sample_groups(engine, task, train_set, rewards, cfg: ZeroConfig, step: int,
                  world: World = SINGLE) -> list[Group]:
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
            score_group(group, rewards, normalize=cfg.normalize_rewards)
        kept.extend(g for g in groups if g.has_signal or not cfg.dynamic_sampling)
        if len(kept) >= wanted:
            break
        params = dataclasses.replace(params, seed=params.seed + REDRAW_OFFSET)
    if cfg.dynamic_sampling and len(kept) < wanted:
        say(f"  dynamic sampling: only {len(kept)}/{wanted} groups with signal after {rounds} rounds")
    return kept[:wanted] if kept else groups


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
def set_advantages(groups: list[Group], estimator: str, world: World = SINGLE) -> None:
    """Each completion's advantage by ``estimator``, computed over the whole batch: a batch estimator (batch_std,
    REINFORCE++) scales by every process's rewards, so each process gives its rewards and takes back its rows."""
    rewards = [[math.nan if r is None else r for r in g.signal] for g in groups]  # NaN: no reward judged it
    lengths = [[len(c) for c in g.completions] for g in groups]
    every = world.gather((rewards, lengths))  # a collective: a process with no prompt this step takes part too
    width = max((len(row) for part, _ in every for row in part), default=0)
    if width == 0:  # no process has a completion this step
        return
    rows = torch.tensor([row + [math.nan] * (width - len(row)) for part, _ in every for row in part],
                        dtype=torch.float32).reshape(-1, width)  # (P, G), every process's prompts in rank order
    sizes = torch.tensor([row + [0] * (width - len(row)) for _, part in every for row in part]).reshape(-1, width)
    advantages = get_advantage(estimator)(rows, lengths=sizes)
    start = sum(len(part) for part, _ in every[:world.rank])
    for g, a in zip(groups, advantages[start:start + len(groups)].tolist()):
        g.advantages = a[:len(g.completions)]


# -------------------------------------------------------------------------------------------- the update
#: the statistics grpo_loss gives (token-weighted sums), averaged over the updates and summed over processes
LOSS_STATS = ("clip_frac", "kl", "off_policy_masked")


def update_policy(policy: Policy, groups: list[Group], cfg: ZeroConfig) -> dict:
    """``updates_per_batch`` AdamW steps on the GRPO-family loss over ``groups`` (:func:`r1lab.rl.losses.grpo_loss`:
    the loss type, masks and bonus of ``cfg``), computing in the policy's precision over fp32 weights; returns mean
    statistics, with the gap between the sampler's log-probs and the trainer's and the policy's entropy on the trained
    tokens. Under torchrun ``groups`` are this process's share: token weights are those of the whole batch, and the
    policy sums every process's gradient into the whole batch's."""
    world, mu, objective = policy.world, cfg.updates_per_batch, Objective.of(cfg)
    every_group = cfg.beta > 0 or cfg.entropy_coef != 0  # terms that act on tokens whatever their advantage
    batch = train_batch(groups, every_group, cfg.loss_aggregation, cfg.groups_per_micro_batch, policy.pad_id,
                        world, policy.device, max_length=cfg.max_new_tokens, mask_truncated=cfg.mask_truncated)
    packs, index = batch.packs, batch.index

    # The "old" policy is the trainer's own view of the weights that sampled: in bf16 the sampler's log-probs
    # differ from it. With one update per batch it is the first pass's detached log-probs (no extra forward).
    old_logprobs = policy.logprobs(packs, cfg.temperature) if mu > 1 else None
    ref_logprobs = policy.logprobs(packs, cfg.temperature, reference=True) if cfg.beta > 0 else None

    totals = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "off_policy_masked": 0.0, "grad_norm": 0.0}
    gaps = []  # |trainer - sampler| log-prob per trained token, from the first update
    entropy = [0.0, 0]  # the first update's entropy summed over the tokens in the loss, and their count
    for update in range(mu):
        policy.zero_grad()
        loss_sum = 0.0
        for i, (logprobs, entropies) in enumerate(policy.train_passes(packs, cfg.temperature)):
            idx, weights = index[i], batch.weights[index[i]]
            old = logprobs.detach() if old_logprobs is None else old_logprobs[i]
            sampler = batch.sampler_logprobs[idx]
            if update == 0:
                gaps.append((old - sampler).abs())
                entropy[0] += entropies.detach()[weights > 0].sum().item()
                entropy[1] += int((weights > 0).sum())
            loss, stats = grpo_loss(logprobs, old, batch.advantages[idx], weights, objective,
                                    sequences=batch.sequences[i], sampler_logprobs=sampler, entropies=entropies,
                                    ref_logprobs=None if ref_logprobs is None else ref_logprobs[i])
            policy.backward(loss)
            loss_sum += loss.item()
            for name in LOSS_STATS:
                totals[name] += stats.get(name, torch.tensor(0.0)).item() / mu
        totals["grad_norm"] += policy.step(cfg.max_grad_norm) / mu
        totals["loss"] += world.sum(loss_sum) / mu
    for name in LOSS_STATS:
        totals[name] = world.sum(totals[name])
    tokens = world.sum(entropy[1])
    totals["entropy"] = world.sum(entropy[0]) / tokens if tokens else math.nan
    totals["trained_groups"] = int(world.sum(len(batch.active)))
    totals["truncated_masked"] = batch.truncated
    parts = world.gather((torch.cat(gaps).cpu() if gaps else torch.zeros(0), *policy.memory()))
    gap = torch.cat([part for part, _, _ in parts])  # every process's gaps; then the busiest process's memory
    gap = gap if gap.numel() else torch.zeros(1)
    totals["logprob_gap_mean"], totals["logprob_gap_max"] = gap.mean().item(), gap.max().item()
    totals["memory/peak_mb"] = max(peak for _, peak, _ in parts)
    totals["memory/train_state_mb"] = max(held for _, _, held in parts) / 2**20  # weights, grads, AdamW (its shards)
    if world.size > 1:
        totals["memory/peak_mb_by_rank"] = [round(peak, 1) for _, peak, _ in parts]
    return totals
