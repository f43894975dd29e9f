"""What a GRPO run measures and warns about: a step's metrics and console line, the held-out evaluation, the
time estimate, and the warnings a person needs while RL runs (no learning signal, truncation, KL or length running
away)."""

from __future__ import annotations

import math

from r1lab.config import ZeroConfig
from r1lab.engine import SamplingParams
from r1lab.evaluate.runner import heldout_accuracy
from r1lab.rewards.format import format_reward, reflection_rate
from r1lab.rewards.registry import TAGS
from r1lab.rollout import Group


def evaluate(engine, task, examples: list[dict], cfg: ZeroConfig, desc: str = "eval") -> dict:
    """Held-out accuracy through the code ``r1lab eval`` runs: pass@1 over ``eval_samples`` samples per problem
    (one greedy answer when 1) with its 95% interval, and the format rate."""
    sampled = cfg.eval_samples > 1
    params = SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature if sampled else 0.0,
                            top_p=cfg.eval_top_p if sampled else 1.0, max_new_tokens=cfg.eval_max_new_tokens,
                            stop=cfg.stop, include_stop_str_in_output=True, seed=cfg.seed)
    return heldout_accuracy(engine, task, examples, params, cfg.template, cfg.prefill, desc)


def held_out_metrics(result: dict) -> dict:
    """A held-out evaluation as the trackers log it (``eval/accuracy``, ``eval/format_rate``), the way
    ``metrics.jsonl`` names the evaluations between (``eval_accuracy``)."""
    return {"eval_accuracy": result["accuracy"], "eval_format_rate": result["format_rate"]}


def step_metrics(step: int, groups: list[Group], stats: dict, t_gen: float, t_total: float, cfg: ZeroConfig) -> dict:
    """A step's line of ``metrics.jsonl``. Means over what was judged: a completion no reward could judge is out of
    ``reward`` (``unjudged_frac`` says how many), one the accuracy reward could not judge out of ``accuracy``
    (``accuracy_unjudged`` counts them)."""
    completions = [c for g in groups for c in g.completions]
    responses = [r for g in groups for r in g.responses]
    rewards = [r for g in groups for r in g.rewards if r is not None]
    metrics = {
        "step": step,
        "reward": sum(rewards) / len(rewards) if rewards else math.nan,
        "unjudged_frac": 1 - len(rewards) / len(completions),
        "format_rate": sum(format_reward(r, tags={**TAGS, **cfg.tags}) for r in responses) / len(responses),
        "mean_length": sum(len(c) for c in completions) / len(completions),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "reflection_rate": reflection_rate(responses),
        "zero_variance_frac": sum(not g.has_signal for g in groups) / len(groups),
    }
    for name in groups[0].per_reward:
        values = [v for g in groups for v in g.per_reward[name] if v is not None]
        metrics[f"reward/{name}"] = sum(values) / len(values) if values else math.nan
    metrics["accuracy"] = metrics.get("reward/accuracy", math.nan)
    if "accuracy" in groups[0].per_reward:
        metrics["accuracy_unjudged"] = sum(v is None for g in groups for v in g.per_reward["accuracy"])
    off = {"kl": cfg.beta == 0, "off_policy_masked": not cfg.off_policy_threshold,
           "truncated_masked": not cfg.mask_truncated}  # statistics of a term the run does not have
    metrics.update({k: v for k, v in stats.items() if not off.get(k)})
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
    skipped = f" ({m['unjudged_frac']:.0%} unjudged)" if m.get("unjudged_frac") else ""
    entropy = f" ent {m['entropy']:.3f}" if "entropy" in m else ""
    return (f"step {m['step']:4d} | reward {m['reward']:.3f}{skipped} acc {m['accuracy']:.3f} "
            f"format {m['format_rate']:.2f} len {m['mean_length']:5.1f}{kl}{entropy} clip {m['clip_frac']:.3f} | "
            f"{m['seconds']:.1f}s (gen {m['seconds_generate']:.1f}s){ev}")


def step_notes(metrics: dict, history: list[dict], cfg: ZeroConfig, first: bool, eval_seconds: float | None,
               device) -> list[str]:
    """The lines the console prints under a step's: after the first step of a run (or of a resume) the time
    estimate, then any warning about the step (:func:`check_step`)."""
    left = cfg.steps - metrics["step"]
    estimate = [time_estimate(metrics["seconds"], left, eval_seconds, device)] if first and left else []
    return estimate + [f"  warning: {w}" for w in check_step(metrics, history, cfg.max_new_tokens)]


def check_step(metrics: dict, history: list[dict], max_new_tokens: int) -> list[str]:
    """Return the warnings for this step's ``metrics`` given the earlier steps' ``history``."""
    warnings = []
    if metrics["zero_variance_frac"] > 0.5:
        warnings.append(
            f"{metrics['zero_variance_frac']:.0%} of groups have the same reward for every sample, so they give "
            "no learning signal. The task is too hard or too easy for this model: try an easier task setting, a "
            "larger group_size, dynamic_sampling=true, or a cold start (SFT on a few formatted examples) first.")
    if metrics["truncated_frac"] > 0.5:
        warnings.append(
            f"{metrics['truncated_frac']:.0%} of completions hit max_new_tokens={max_new_tokens}; their answers are "
            "cut off. Raise max_new_tokens or add the overlong reward.")
    if "kl" in metrics and metrics["kl"] > 1.0:
        warnings.append(f"KL to the reference is {metrics['kl']:.2f} (> 1): the policy is drifting fast; lower lr "
                        "or raise beta.")
    if len(history) >= 3:
        start = sum(h["mean_length"] for h in history[:3]) / 3
        if metrics["mean_length"] > max(2.5 * start, start + 0.5 * max_new_tokens) and not math.isnan(start):
            warnings.append(f"mean length {metrics['mean_length']:.0f} tokens is far above the start ({start:.0f}): "
                            "check samples.jsonl for repetition loops.")
    if not math.isfinite(metrics["loss"]):
        warnings.append("the loss is not finite; lower lr.")
    return warnings
