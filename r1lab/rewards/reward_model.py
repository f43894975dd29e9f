"""Reward-model rewards: a scalar reward model trained by ``r1lab rm`` scores a response, as a GRPO reward.

DeepSeek-R1's last stage (section 2.3.4) adds reward models for general prompts: helpfulness judged on the final
summary only, harmlessness on the whole response, reasoning included. In a recipe a reward may therefore be a spec
instead of a weight::

    rewards:
      accuracy: 1.0
      helpful: {reward_model: runs/rm-help/final, part: summary, weight: 1.0, on: general}
      harmless: {reward_model: runs/rm-harm/final, part: whole, weight: 1.0, on: general, output: pass}

- ``part``: ``summary`` (what follows the think block, :func:`r1lab.chat.split_reasoning`) or ``whole``.
- ``on``: only examples whose ``kind`` field is this; elsewhere the reward is None (skipped, not 0).
- ``output``: ``score`` (default) is the raw score normalised with the held-out statistics the checkpoint stores,
  ``(raw - score_mean) / score_std``; ``pass`` is 1.0 when the raw score reaches the stored ``threshold`` (the
  midpoint of the held-out chosen and rejected means), else 0.0.
- ``batch_size``: responses per forward pass (default 16); ``max_length``: tokens (default: the RM's own).

A model is loaded once, when the rewards are built, on the policy's device, and scores a group's responses in one
packed pass (:func:`values`: the prompt once, each response attending to it and to itself) through the reward's
``batch`` method (:func:`r1lab.rewards.registry.score` uses it); calling the reward on one response gives the same
number. The text a reward model reads is the user's question through the model's chat template, then the reply and
the end-of-sequence token (:func:`encode`); the score is the value head's output there. ``r1lab rm`` trains with the
same function, so training and scoring never drift apart.

Left out: reward models that need their own process or server (use the ``judge`` reward for those), multi-turn
prompts at scoring time (the example's ``prompt`` is one user turn), and length-normalised scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lab.chat import render, split_reasoning
from r1lab.config import rm_checkpoint_problem
from r1lab.files import CHECKPOINT_MARKER
from r1lab.models import resolve_device, resolve_dtype
from r1lab.packing import _attention, pack, packed_attention

PARTS = ("summary", "whole")
OUTPUTS = ("score", "pass")
#: the marker metadata ``kind`` of a reward-model checkpoint written by ``r1lab rm``
RM_KIND = "reward_model"


def judged_part(completion: str, part: str) -> str:
    """What a ``part`` reward reads: the whole response, or its summary (the text after the think block).

    >>> judged_part("<think>\\nplan</think>\\n\\nHere it is.", "summary"), judged_part("<think>a</think>b", "whole")
    ('Here it is.', '<think>a</think>b')
    """
    if part == "whole":
        return completion
    if part != "summary":
        raise ValueError(f"part={part!r}: use {' | '.join(PARTS)}")
    return split_reasoning(completion)[1]


def applies(example: Mapping, on: str | None) -> bool:
    """Whether a reward limited to ``on`` (an example ``kind``; None = all) judges ``example``.

    >>> applies({"kind": "general"}, "general"), applies({"answer": "5"}, "general"), applies({}, None)
    (True, False, True)
    """
    return on is None or example.get("kind") == on


def judged(completions: Sequence[str], examples: Sequence[Mapping], on: str | None,
           part: str) -> tuple[list[int], list[tuple[str, str]]]:
    """What a reward-model or judge reward scores in a batch: the indices of the examples it applies to (``on``,
    and a text prompt), and for each its ``(prompt, judged part of the completion)``."""
    todo = [i for i, ex in enumerate(examples) if applies(ex, on) and isinstance(ex.get("prompt"), str)]
    return todo, [(examples[i]["prompt"], judged_part(completions[i], part)) for i in todo]


def prompt_text(messages: list[dict], tokenizer) -> str:
    """The conversation before the reply as the reward model reads it: the model's chat template with the assistant
    turn opened, or ``role: content`` lines for a tokenizer without one."""
    if getattr(tokenizer, "chat_template", None):
        return render(messages, "native", tokenizer).text
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "


def encode(messages: list[dict], replies: Sequence[str], tokenizer,
           max_length: int) -> tuple[list[int], list[list[int]], bool]:
    """``(prompt_ids, [reply_ids, ...], cut)``: the text :func:`values` scores, each reply ending in the EOS token
    (its value is read there). Prompt + any one reply fit in ``max_length`` tokens: a reply keeps its last
    ``3/4 * max_length`` tokens (the end, where the score is read), the prompt its last tokens that still fit.
    ``cut`` says whether anything was left out."""
    prompt = tokenizer(prompt_text(messages, tokenizer), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    full = [tokenizer(reply + eos, add_special_tokens=False)["input_ids"] for reply in replies]
    keep = max(1, max_length * 3 // 4)
    kept = [ids[-keep:] for ids in full]
    room = max(1, max_length - max(len(ids) for ids in kept))
    cut = len(prompt) > room or any(len(a) != len(b) for a, b in zip(kept, full))
    return prompt[-room:], kept, cut


def values(model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> torch.Tensor:
    """The value head's score of every reply, ``(N,)`` in order, for ``groups`` of ``(prompt_ids, [reply_ids...])``:
    one packed row per group (:func:`r1lab.packing.pack`), the value read at each reply's last token. Runs with
    autograd when the caller enables it (``r1lab rm`` trains through it)."""
    packed = pack(groups, pad_id)
    device = next(model.parameters()).device
    width = packed.input_ids.shape[1]
    last = []
    for r, (prompt, replies) in enumerate(groups):
        end = len(prompt)
        for reply in replies:
            end += len(reply)
            last.append(r * width + end - 1)
    base = getattr(model, model.base_model_prefix)
    attend = packed_attention(packed.segments, width, device)
    with _attention(base, "r1lab_segments"):
        hidden = base(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                      use_cache=False, r1lab_segments=attend).last_hidden_state  # (R, L, H)
    h = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(last, device=device)]  # (N, H)
    return model.score(h).squeeze(-1).float()  # (N,)


@dataclass
class RewardModel:
    """A loaded reward model: its network, tokenizer and the statistics ``r1lab rm`` stored with it."""

    model: torch.nn.Module
    tokenizer: object
    meta: dict

    @property
    def max_length(self) -> int:
        return int(self.meta.get("max_length", 1024))

    @torch.no_grad()
    def raw_scores(self, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 16,
                   max_length: int | None = None) -> list[float]:
        """The raw score of each ``(prompt, reply)``; consecutive replies to one prompt share its pass."""
        groups: list[tuple[str, list[int]]] = []  # (prompt, indices of its replies), at most batch_size each
        for i, prompt in enumerate(prompts):
            if groups and groups[-1][0] == prompt and len(groups[-1][1]) < batch_size:
                groups[-1][1].append(i)
            else:
                groups.append((prompt, [i]))
        out = [math.nan] * len(prompts)
        passes, current, size = [], [], 0
        for group in groups:
            if current and size + len(group[1]) > batch_size:
                passes.append(current)
                current, size = [], 0
            current.append(group)
            size += len(group[1])
        if current:
            passes.append(current)
        self.model.eval()
        for groups_of_pass in passes:
            encoded = [encode([{"role": "user", "content": prompt}], [replies[i] for i in idx], self.tokenizer,
                              max_length or self.max_length)[:2] for prompt, idx in groups_of_pass]
            scores = values(self.model, encoded, self.tokenizer.pad_token_id).tolist()
            for i, value in zip([i for _, idx in groups_of_pass for i in idx], scores):
                out[i] = value
        return out

    def normalise(self, raw: float) -> float:
        """``(raw - score_mean) / score_std``, with the held-out statistics stored at training time."""
        return (raw - float(self.meta["score_mean"])) / max(float(self.meta["score_std"]), 1e-6)

    def passes(self, raw: float) -> float:
        """1.0 if ``raw`` reaches the stored threshold (between the held-out chosen and rejected means), else 0.0."""
        return 1.0 if raw >= float(self.meta["threshold"]) else 0.0


def load_reward_model(path, device: str | torch.device = "auto", dtype: str = "auto") -> RewardModel:
    """A reward model ``r1lab rm`` saved (its ``final/`` folder), on ``device``, its weights in ``dtype`` (auto: bf16
    on a GPU that has it, else fp32; it only scores); refuses anything else, saying what to do."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    problem = rm_checkpoint_problem(str(path))
    path = Path(str(path)).expanduser()
    meta = None if problem else _read_meta(path / CHECKPOINT_MARKER)
    if not problem and (not isinstance(meta, dict) or meta.get("kind") != RM_KIND):
        problem = (f"reward_model {path} is a checkpoint but not a reward model (its {CHECKPOINT_MARKER} lacks kind: "
                   f"{RM_KIND}); train one with `r1lab rm --data PAIRS.jsonl --out runs/rm` and give runs/rm/final")
    if problem:
        raise ValueError(problem)
    where = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_dtype(dtype, where, "sample")  # forward passes only
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=precision).to(where)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return RewardModel(model.eval(), tokenizer, meta)


def _read_meta(marker: Path):
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class ModelReward:
    """A reward-model reward: ``reward(completion, **example)`` and ``batch(completions, examples)`` give the same
    numbers; None for examples outside ``on`` or without a prompt."""

    rm: RewardModel
    part: str = "summary"
    on: str | None = None
    output: str = "score"
    batch_size: int = 16
    max_length: int | None = None

    def __call__(self, completion: str, **example) -> float | None:
        return self.batch([completion], [example])[0]

    def batch(self, completions: Sequence[str], examples: Sequence[Mapping]) -> list[float | None]:
        todo, asks = judged(completions, examples, self.on, self.part)
        out: list[float | None] = [None] * len(completions)
        raw = self.rm.raw_scores([prompt for prompt, _ in asks], [text for _, text in asks], self.batch_size,
                                 self.max_length)
        for i, value in zip(todo, raw):
            out[i] = self.rm.passes(value) if self.output == "pass" else self.rm.normalise(value)
        return out


def model_reward(spec: Mapping, device: str | torch.device = "auto", loaded: dict | None = None) -> ModelReward:
    """The reward a ``{reward_model: PATH, ...}`` spec names (checked by :func:`r1lab.config.reward_spec_problems`);
    ``loaded`` shares one model between specs that name the same path."""
    path = str(Path(str(spec["reward_model"])).expanduser().resolve())
    loaded = {} if loaded is None else loaded
    if path not in loaded:
        loaded[path] = load_reward_model(path, device)
    return ModelReward(loaded[path], part=spec.get("part", "summary"), on=spec.get("on"),
                       output=spec.get("output", "score"), batch_size=int(spec.get("batch_size", 16)),
                       max_length=spec.get("max_length"))
