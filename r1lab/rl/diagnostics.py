"""Warnings a person needs while RL runs: no learning signal, truncation, KL or length running away."""

from __future__ import annotations

import math


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
