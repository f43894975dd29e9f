"""The rollout layer: prompts, sampling settings and a Task in; sampled, scored groups out.

Every stage that samples from a model goes through here, so they all make prompts, generate and judge the
same way, whichever engine samples (:mod:`r1lab.engine.registry`: torch, vLLM, an OpenAI-compatible endpoint):
GRPO's training groups (:func:`generate_groups`, :func:`score_group`) and its held-out evaluation, ``r1lab eval``
and ``r1lab sample`` (:func:`sample_problems`; their resumable batch files are :mod:`r1lab.evaluate.batches`), cold
start from a model and distillation. The rewards that score a group are built by :mod:`r1lab.rewards.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1lab.engine import Completion, Prompt, SamplingParams
from r1lab.rewards import score
from r1lab.rewards.registry import NEEDS, group_normalized, weighted_totals
from r1lab.tasks.answers import closed_part, extract_answer
from r1lab.tasks.base import question_text


@dataclass
class Group:
    """One prompt and the G completions sampled for it, with their scores."""

    example: dict
    prompt: Prompt
    completions: list[Completion]
    rewards: list[float | None] = field(default_factory=list)  # weighted total per completion; None: unjudged
    normalized: list[float | None] | None = None  # with normalize_rewards: the sum of per-reward group z-scores
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: list[float] = field(default_factory=list)

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.prompt.token_ids)

    @property
    def prefill(self) -> str:
        """The forced start of every reply (its text is part of each response)."""
        return self.prompt.prefill

    @property
    def thinking(self) -> bool:
        """The prompt opened the think block, so each reply starts inside it."""
        return self.prompt.thinking

    @property
    def responses(self) -> list[str]:
        """The whole assistant responses (prefill + generated text): what rewards and people read."""
        return [self.prefill + c.text for c in self.completions]

    @property
    def signal(self) -> list[float | None]:
        """What the advantages are computed from: the weighted totals, or their per-reward normalised sum."""
        return self.rewards if self.normalized is None else self.normalized

    @property
    def has_signal(self) -> bool:
        """At least two judged completions with different rewards (an unjudged one, None, compares with none)."""
        judged = [r for r in self.signal if r is not None]
        return len(judged) > 1 and max(judged) - min(judged) > 1e-6


def generate_groups(engine, examples: list[dict], template: str, prefill: str | None, params: SamplingParams,
                    task, stream_ids: list[int] | None = None) -> list[Group]:
    """``params.n`` completions for each example's question, made into a prompt by the engine (rendered with
    ``template``, or for an endpoint's chat API sent as a conversation); with ``stream_ids`` (one key per example)
    each example's samples draw from their own random stream, whatever else is in the batch."""
    prompts = [engine.prompt([{"role": "user", "content": question_text(ex, task)}], template, prefill)
               for ex in examples]
    outputs = engine.generate(prompts, params, stream_ids=stream_ids)
    return [Group(example=ex, prompt=prompt, completions=out) for ex, prompt, out in zip(examples, prompts, outputs)]


def score_group(group: Group, rewards: dict, normalize: bool = False) -> None:
    """Fill ``group.rewards`` (weighted totals) and ``group.per_reward`` from ``rewards`` (:func:`build_rewards`). A
    reward that reads the task's verifier (``accuracy``, ``cosine``: those that need ``verify``) judges what evaluation
    judges (:func:`judged_texts`): a reply cut at the length limit only on the answer it had closed, and an empty reply
    if it had none (``accuracy`` is then 0). With ``normalize`` the advantages are computed from each reward z-scored
    within the group before the weighted sum (``group.normalized``, :func:`r1lab.rewards.registry.group_normalized`);
    ``group.rewards`` stays the plain weighted total, the figure the logs report."""
    lengths = [len(c) for c in group.completions]
    examples = [group.example] * len(group.completions)
    verified = {name for name in rewards if "verify" in NEEDS.get(name, ())}
    judged = judged_texts(group) if verified else []
    per_reward = {}
    for names, texts in ((rewards.keys() - verified, group.responses), (verified, [t or "" for t in judged])):
        if names:
            per_reward |= score(texts, examples, {k: rewards[k] for k in names}, completion_lengths=lengths).per_reward
    if "accuracy" in verified:  # an unfinished reply's accuracy is 0, as in evaluation
        per_reward["accuracy"] = [0.0 if text is None and value is not None else value
                                  for text, value in zip(judged, per_reward["accuracy"])]
    weights = {name: weight for name, (_, weight) in rewards.items()}
    group.per_reward = {name: per_reward[name] for name in rewards}
    group.rewards = weighted_totals(group.per_reward, weights)  # what the logs and samples.jsonl report
    group.normalized = group_normalized(group.per_reward, weights) if normalize else None


def judged_texts(group: Group) -> list[str | None]:
    """Per completion, what its verifier judges: the whole response if it finished, else the part up to the answer
    it had closed before the length limit (:func:`r1lab.tasks.answers.closed_part`; code fences close an answer
    only for an example judged by tests, a code example), else None: no final answer."""
    code = bool(group.example.get("tests"))
    return [response if c.finish_reason != "length" else closed_part(response, code)
            for c, response in zip(group.completions, group.responses)]


def sample_problems(engine, task, examples: list[dict], params: SamplingParams, template: str,
                    prefill: str | None, stream_ids: list[int] | None = None) -> list[list[dict]]:
    """``params.n`` samples for each example, each judged by ``task.verify``: one record list per problem. A reply
    cut at the length limit is judged on the answer it had closed (:func:`judged_texts`); with none, its answer is
    None and it is wrong."""
    extract = getattr(task, "extract", extract_answer)
    out = []
    for group in generate_groups(engine, examples, template, prefill, params, task, stream_ids):
        out.append([{"id": str(group.example.get("id", "")), "sample": j, "prompt": group.prompt.text,
                     "completion": response,
                     "answer": extract(judged) if judged is not None else None,
                     "reference": group.example.get("answer"),
                     "correct": task.verify(judged, **group.example) if judged is not None else 0.0,
                     "tokens": completion.n_tokens, "finish_reason": completion.finish_reason}
                    for j, (completion, response, judged)
                    in enumerate(zip(group.completions, group.responses, judged_texts(group)))])
    return out


def context_room(engine, examples: list[dict], max_new_tokens: int) -> int:
    """``max_new_tokens`` cut so the longest of ``examples``' prompts (+ 64 for a template and instruction) and
    its reply fit the engine's context; an engine whose context is unknown (an endpoint that does not say) is not
    cut. An endpoint without a tokenizer here counts a prompt's characters, never fewer than its tokens."""
    if engine.context_length is None:
        return max_new_tokens
    size = (lambda text: len(engine.encode(text))) if engine.tokenizer is not None else len
    longest = max((size(e["prompt"]) for e in examples), default=0) + 64
    return max(1, min(max_new_tokens, engine.context_length - longest))
