"""How a step's scored groups become the update's tensors: every completion token of every group in one flat order
(N tokens), with its advantage, its loss weight and the log-prob the sampler gave it, and the groups that train
packed a few at a time (:func:`r1lab.packing.pack`), each pack knowing where its tokens sit in that order and which
completion each belongs to."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from r1lab.packing import Packed, pack
from r1lab.rl.losses import token_weights
from r1lab.rollout import Group


@dataclass
class TrainBatch:
    advantages: torch.Tensor  # (N,) each token's completion's advantage
    weights: torch.Tensor  # (N,) each token's share of the loss, over every process's batch (0: out of the loss)
    sampler_logprobs: torch.Tensor  # (N,) as the engine computed them while sampling
    active: list[int]  # the groups that train: all with a KL term or entropy bonus, else those with an advantage
    packs: list[Packed]  # the active groups, a few per forward/backward pass
    index: list[torch.Tensor]  # per pack, the positions of its completion tokens among the N
    sequences: list[torch.Tensor]  # per pack, the completion (numbered from 0 in the pack) of each of its tokens
    truncated: int = 0  # completions out of the loss because they hit the length limit (overlong filtering)


def train_batch(groups: list[Group], every_group: bool, aggregation: str, groups_per_pack: int, pad_id: int,
                world, device, max_length: int | None = None, mask_truncated: bool = False) -> TrainBatch:
    """The update's view of ``groups`` (this process's share under torchrun: ``world`` gives the whole batch's
    token weights). Groups whose advantages are all zero add nothing to the gradient unless a term other than the
    advantage acts on every token (``every_group``: a KL term, an entropy bonus), so then they are not packed; their
    tokens still count in the weights. A completion no
    reward could judge (reward None) is out of the loss: its tokens weigh 0 and count in no average; so is one that
    hit the length limit when ``mask_truncated`` (DAPO's overlong filtering). ``max_length`` is the constant
    aggregation's normaliser; the micro_batch aggregation's micro-batches are ``groups_per_pack`` groups."""
    completions = [c for g in groups for c in g.completions]
    lengths = [len(c) for c in completions]
    judged = [r is not None for g in groups for r in g.rewards]
    cut = [mask_truncated and c.finish_reason == "length" for c in completions]
    kept = [j and not t for j, t in zip(judged, cut)]
    micro_batches = [i // groups_per_pack for i, g in enumerate(groups) for _ in g.completions]
    weights = _my_weights(lengths, kept, micro_batches, aggregation, max_length, world).to(device)  # (N,)
    advantages = torch.tensor([a for g in groups for a, c in zip(g.advantages, g.completions) for _ in c.token_ids],
                              device=device)  # (N,)
    sampler_logprobs = torch.tensor([lp for c in completions for lp in c.logprobs], device=device)  # (N,)
    active = [i for i, g in enumerate(groups) if every_group or any(abs(a) > 0 for a in g.advantages)]
    offsets = [0, *itertools.accumulate(sum(len(c) for c in g.completions) for g in groups)]  # group token spans
    chunks = [active[i:i + groups_per_pack] for i in range(0, len(active), groups_per_pack)]
    packs = [pack([(groups[i].prompt_ids, [c.token_ids for c in groups[i].completions]) for i in mb], pad_id)
             for mb in chunks]
    index = [torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in mb]).to(device) for mb in chunks]
    sequences = [torch.repeat_interleave(torch.arange(len(pk.lengths)), torch.tensor(pk.lengths)).to(device)
                 for pk in packs]
    return TrainBatch(advantages, weights, sampler_logprobs, active, packs, index, sequences,
                      truncated=int(world.sum(sum(j and t for j, t in zip(judged, cut)))))


def _my_weights(lengths: list[int], kept: list[bool], micro_batches: list[int], aggregation: str,
                max_length: int | None, world) -> torch.Tensor:
    """This process's slice of the whole batch's token weights (:func:`token_weights` over every process's
    completions, taken in rank order; micro-batches numbered apart per process)."""
    if world.size == 1:
        return token_weights(lengths, aggregation, kept, max_length, micro_batches)
    every = world.gather((lengths, kept, micro_batches))
    start = sum(sum(part[0]) for part in every[:world.rank])
    numbered, base = [], 0
    for _, _, parts in every:
        numbered.extend(base + p for p in parts)
        base += max(parts, default=-1) + 1
    weights = token_weights([n for part in every for n in part[0]], aggregation, [k for part in every for k in part[1]],
                            max_length, numbered)
    return weights[start:start + sum(lengths)]
