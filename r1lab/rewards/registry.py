"""The reward contract: a reward is a plain function, found by name, combined with weights.

Every reward has one signature::

    reward(completion: str, **example) -> float | None

``completion`` is the whole assistant response, *including* any text the chat template prefilled
(the R1 template's ``<think>\\n``), so a reward never needs to know which template produced it.
``example`` holds the example's fields (``prompt``, ``answer`` and whatever the Task adds) and
``completion_length`` (the response's token count). A reward returns ``None`` when it cannot judge
(the example lacks what it needs, a verifier crashed): that score is skipped, not counted as 0.
Rewards accept and ignore fields they do not use (``**_``).

A reward that is cheaper over many responses at once (a reward model, a judge behind an endpoint) may also offer
``reward.batch(completions, examples) -> [float | None, ...]``, each example with its ``completion_length``;
:func:`score` then calls that once per batch, and it must give what calling the reward on each would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

RewardFn = Callable[..., "float | None"]

REWARDS: dict[str, RewardFn] = {}
#: per reward, the settings of the run it takes as keyword arguments (:func:`register`)
NEEDS: dict[str, tuple[str, ...]] = {}
#: per reward, one line for ``r1lab zero --help`` (:func:`register`; else its docstring's first sentence)
HELP: dict[str, str] = {}
#: per reward, the options ``--reward-args`` may set, when it names them (:func:`register`); else its keyword
#: parameters whose defaults are a bool, int, float or str (:func:`r1lab.rewards.build.options_of`)
OPTIONS: dict[str, tuple[str, ...]] = {}
#: the delimiters of the reasoning and of the answer when a run does not set its own (``--tags``)
TAGS = {"think": ("<think>", "</think>"), "answer": ("<answer>", "</answer>")}
#: what a reward may need, with the value it gets when the run does not say: the target ``language`` of the
#: reasoning, ``max_length`` (the completion budget in tokens), ``verify`` (the task's verifier), ``device`` (the
#: policy's, for a reward that runs a model), ``tags`` (the reasoning and answer delimiters: :data:`TAGS`)
SETTINGS = {"language": "en", "max_length": None, "verify": None, "device": "auto", "tags": TAGS}


def register(name: str, needs: Sequence[str] = (), help: str = "",
             options: Sequence[str] | None = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn`` available as ``name`` in recipes and on the command line. ``needs`` names the run's
    settings (:data:`SETTINGS`) it takes as keyword arguments, given to it when the rewards are built
    (:func:`r1lab.rewards.build.build_rewards`) rather than by every caller; ``help`` is its line in
    ``r1lab zero --help`` (default: the first sentence of its docstring); ``options`` the keyword parameters a run
    may set (``--reward-args``; default: those with a bool, int, float or str default)."""
    if isinstance(needs, str) or not set(needs) <= set(SETTINGS):
        raise ValueError(f"reward {name!r}: needs={list(needs)}; a reward may need only {', '.join(SETTINGS)}")

    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            first = REWARDS[name]
            raise ValueError(f"reward {name!r} is registered twice: {getattr(first, '__module__', '?')}."
                             f"{getattr(first, '__qualname__', first)} has that name; choose another")
        REWARDS[name], NEEDS[name] = fn, tuple(needs)
        first = " ".join((fn.__doc__ or "").split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        HELP[name] = help or first or "(no description: register it with help=...)"
        if options is not None:
            OPTIONS[name] = tuple(options)
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        known = ", ".join(sorted(REWARDS)) or "(none)"
        raise KeyError(f"unknown reward {name!r}; known rewards: {known}") from None


@dataclass
class RewardScores:
    """Scores of a batch: the weighted total per completion (None where no reward could judge it) and each reward on
    its own."""

    totals: list[float | None]
    per_reward: dict[str, list[float | None]] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        """Mean of each reward over the completions it could judge (NaN if none)."""
        judged = {name: [v for v in values if v is not None] for name, values in self.per_reward.items()}
        return {name: sum(values) / len(values) if values else math.nan for name, values in judged.items()}


def score(
    completions: Sequence[str],
    examples: Sequence[Mapping],
    rewards: Mapping[str, tuple[RewardFn, float]],
    completion_lengths: Sequence[int] | None = None,
) -> RewardScores:
    """Score each completion with every ``name -> (fn, weight)``; ``None`` scores add nothing, and a completion that
    no reward could judge has the total None (skipped, not counted as 0: training leaves it out of its group's
    statistics and of the loss).

    >>> r = {"len": (lambda c, **_: float(len(c)), 0.5), "skip": (lambda c, **_: None, 1.0)}
    >>> s = score(["ab", "abcd"], [{}, {}], r)
    >>> s.totals, s.per_reward["skip"]
    ([1.0, 2.0], [None, None])
    >>> score(["ab"], [{}], {"skip": r["skip"]}).totals
    [None]
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    lengths = completion_lengths if completion_lengths is not None else [len(c) for c in completions]
    per_reward: dict[str, list[float | None]] = {}
    for name, (fn, _) in rewards.items():
        if hasattr(fn, "batch"):  # one call for the whole batch (see the module docstring)
            raw = list(fn.batch(completions, [{**example, "completion_length": n}
                                              for example, n in zip(examples, lengths)]))
        else:
            raw = [fn(completion, completion_length=lengths[i], **example)
                   for i, (completion, example) in enumerate(zip(completions, examples))]
        if len(raw) != len(completions):
            raise ValueError(f"reward {name!r} gave {len(raw)} scores for {len(completions)} completions")
        per_reward[name] = [None if value is None else float(value) for value in raw]
    totals = weighted_totals(per_reward, {name: weight for name, (_, weight) in rewards.items()})
    return RewardScores(totals=totals, per_reward=per_reward)


def weighted_totals(per_reward: Mapping[str, Sequence[float | None]],
                    weights: Mapping[str, float]) -> list[float | None]:
    """Per completion, the sum of each reward times its weight over the rewards that judged it; None where none did.

    >>> weighted_totals({"acc": [1.0, None], "fmt": [0.5, None]}, {"acc": 1.0, "fmt": 0.5})
    [1.25, None]
    """
    count = len(next(iter(per_reward.values()), []))
    totals: list[float | None] = [None] * count
    for name, values in per_reward.items():
        for i, value in enumerate(values):
            if value is not None:
                totals[i] = (totals[i] or 0.0) + weights[name] * value
    return totals


def group_normalized(per_reward: Mapping[str, Sequence[float | None]], weights: Mapping[str, float],
                     eps: float = 1e-4) -> list[float | None]:
    """The weighted sum of each reward after z-scoring it within the group, ``(r - mean) / (std + eps)`` over the
    completions it judged (sample std; a reward that judged fewer than two, or judged all alike, adds 0): GDPO's
    decoupled normalisation (Liu et al. 2026), TRL's ``multi_objective_aggregation="normalize_then_sum"``. A reward
    on a larger scale then weighs what its weight says. None where no reward judged the completion.

    >>> [round(t, 4) for t in group_normalized({"acc": [1.0, 0.0], "len": [10.0, 30.0]}, {"acc": 1.0, "len": 0.5})]
    [0.3535, -0.3535]
    """
    z_scored = {}
    for name, values in per_reward.items():
        judged = [v for v in values if v is not None]
        mean = sum(judged) / len(judged) if judged else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in judged) / (len(judged) - 1)) if len(judged) > 1 else 0.0
        z_scored[name] = [None if v is None else (v - mean) / (std + eps) if std > 0 else 0.0 for v in values]
    return weighted_totals(z_scored, weights)
