"""A run's rewards from their names and weights (``--rewards '{accuracy: 1.0, format: 0.5}'``): each registered
reward given the settings it declared it needs (:func:`r1lab.rewards.registry.register`), and each reward given as
a spec (``{reward_model: PATH, ...}``, ``{judge: {...}, ...}``) built by the kind its key names (:data:`SPEC_KINDS`).

Apart from :mod:`r1lab.rewards` itself because a spec may load a reward model (torch, transformers): importing the
registry stays light for what only scores (the sandbox's and the verifier's worker processes)."""

from __future__ import annotations

import inspect
import math
from functools import partial

from r1lab.config import reward_spec_problems
from r1lab.rewards.judge import judge_reward
from r1lab.rewards.registry import NEEDS, OPTIONS, REWARDS, SETTINGS, TAGS
from r1lab.rewards.reward_model import model_reward

#: a spec's kind (the key that names it) -> how it is built, and what of the run it needs (``loaded``: the reward
#: models loaded so far, so that specs naming one checkpoint share it)
SPEC_KINDS = {"reward_model": (model_reward, ("device", "loaded")), "judge": (judge_reward, ())}


def build_rewards(weights: dict, task, args: dict | None = None, **settings) -> dict:
    """``name -> (fn, weight)`` for the named rewards, each given what it needs of ``settings`` (:data:`SETTINGS`:
    ``language``, ``max_length``, ``device``, ``tags``: the delimiters, each kind's pair defaulting to :data:`TAGS`)
    and of ``task`` (its verifier, for ``accuracy``), and its own options from ``args`` (``{name: {option: value}}``:
    each option a keyword parameter of that reward); a reward given as a spec is built by its kind, each reward model
    loaded once, on ``device`` (the policy's)."""
    if not set(settings) <= set(SETTINGS) - {"verify"}:
        raise TypeError(f"build_rewards: settings {sorted(settings)}; give only language, max_length, device, tags")
    tags = {**TAGS, **{kind: tuple(pair) for kind, pair in (settings.pop("tags", None) or {}).items()}}
    given = {**SETTINGS, **settings, "tags": tags, "verify": task.verify, "loaded": {}}
    problems = [p for name, spec in weights.items() if isinstance(spec, dict) for p in reward_spec_problems(name, spec)]
    problems += _args_problems(weights, args or {}, given)
    if problems:
        raise ValueError("\n  ".join(["bad reward specs:", *problems]) if len(problems) > 1 else problems[0])
    out = {}
    for name, weight in weights.items():
        if isinstance(weight, dict):
            make, needs = next(SPEC_KINDS[kind] for kind in SPEC_KINDS if kind in weight)
            out[name] = (make(weight, **{need: given[need] for need in needs}), float(weight.get("weight", 1.0)))
        else:
            needs = {need: given[need] for need in NEEDS[name]} | (args or {}).get(name, {})
            out[name] = (_given(REWARDS[name], needs) if needs else REWARDS[name], float(weight))
    return out


def _args_problems(weights: dict, args: dict, given: dict) -> list[str]:
    """What is wrong with the rewards' names and options: an unknown reward, options for a reward the run does not
    use or for a spec (whose options are in the spec), an option the reward does not take."""
    problems = [f"rewards: {name!r} is unknown; use one of {', '.join(sorted(REWARDS))}, or register your own with "
                "r1lab.rewards.register" for name, weight in weights.items()
                if not isinstance(weight, dict) and name not in REWARDS]
    for name, options in args.items():
        if name not in weights or isinstance(weights[name], dict):
            why = "set its options in its spec" if name in weights else "it is not one of the run's rewards"
            problems.append(f"reward_args: {name!r}: {why}")
        elif name in REWARDS:
            takes = options_of(name)
            wrong = [f"reward_args: {name}: {option!r} is not an option of {name}; it takes "
                     f"{', '.join(takes) or 'none'}" for option in options if option not in takes]
            problems += wrong or _value_problems(name, options, given)
    return problems


def options_of(name: str) -> dict[str, object]:
    """The options a registered reward takes (``reward_args``), with their defaults: those it was registered with, else
    its keyword parameters whose default is a bool, int, float or str (less the completion, what the trainer passes
    and the run settings it needs)."""
    fixed = {"completion", "completion_length", *NEEDS[name], *SETTINGS}
    params = {p.name: p.default for p in inspect.signature(REWARDS[name]).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed}
    if name in OPTIONS:
        return {option: params.get(option) for option in OPTIONS[name]}
    return {option: default for option, default in params.items() if type(default) in (bool, int, float, str)}


#: what an option whose default is of a type may be given
_ACCEPTS = {bool: lambda v: type(v) is bool, int: lambda v: type(v) is int,
            float: lambda v: type(v) in (int, float) and math.isfinite(v), str: lambda v: type(v) is str}


def _value_problems(name: str, options: dict, given: dict) -> list[str]:
    """Each option's value of the type of its default (a number finite), then the reward called once on an empty
    reply with them, so that a value it refuses (``ngram_size: 0``) is refused now, not at the first scoring hours
    into a run. A reward that reads the verifier or a model is only type-checked."""
    defaults, problems = options_of(name), []
    for option, value in options.items():
        kind = type(defaults[option])
        if kind in _ACCEPTS and not _ACCEPTS[kind](value):
            problems.append(f"reward_args: {name}: {option}={value!r}: give a{'n' * (kind is int)} "
                            f"{'finite number' if kind is float else kind.__name__} (default {defaults[option]!r})")
    if problems or set(NEEDS[name]) & {"verify", "device"}:
        return problems
    try:
        REWARDS[name]("", completion_length=0, **{need: given[need] for need in NEEDS[name]}, **options)
    except (ValueError, TypeError) as e:
        problems.append(f"reward_args: {name}: {str(e).removeprefix(f'{name}: ')}")
    return problems


def _given(fn, needs: dict):
    """``fn`` with ``needs`` given as keyword arguments (an example's own field of the same name wins, as a call's
    does over :func:`functools.partial`'s), its ``batch`` (one call for many responses) kept and given them too."""
    bound = partial(fn, **needs)
    if hasattr(fn, "batch"):
        bound = _Batched(bound, lambda completions, examples: fn.batch(completions,
                                                                       [{**needs, **ex} for ex in examples]))
    return bound


class _Batched:
    def __init__(self, one, batch):
        self._one, self.batch = one, batch

    def __call__(self, completion, **example):
        return self._one(completion, **example)
