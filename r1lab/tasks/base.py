"""The Task contract: a Task owns its data, its prompts and the verifier of their answers.

The same ``Task.verify`` is the RL accuracy reward, the rejection sampler's filter and the benchmark's
score, so the three can never drift apart.

An example is a plain dict with at least ``prompt`` (the question as the user would ask it, without any
chat framing: the chat template adds that) and ``answer`` (the reference answer as a string); a Task may
add its own fields (``numbers`` and ``target`` for countdown). ``verify`` has the reward signature
(see :mod:`r1lab.rewards.registry`), so a bound ``task.verify`` is a reward. A procedural task may also
write worked solutions of its own examples (``Task.trace``), the cold-start traces.

Tasks are built by name with :func:`r1lab.tasks.get_task` (or :func:`r1lab.tasks.build_task`, with defaults).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    """Decorator for a Task class (or factory) so recipes can name it."""

    def wrap(factory):
        TASKS[name] = factory
        return factory

    return wrap


class Task(ABC):
    name: str = "task"
    #: sentence appended to the question asking for the answer's form; the chat template decides
    #: where it goes. Math datasets ask for ``\\boxed{}`` (the R1 evaluation instruction).
    instruction: str = ""

    def examples(self, split: str) -> list[dict]:
        """The examples of ``split`` ("train" or "test"), in a fixed, seeded order. This default serves tasks that
        keep their splits in ``self._splits`` (``{"train": [...], "test": [...]}``), each example a fresh copy."""
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
        return [dict(example) for example in self._splits[split]]

    @abstractmethod
    def verify(self, completion: str, **example) -> float | None:
        """1.0 if the completion's final answer is correct, 0.0 if not, None if it cannot judge."""

    def trace(self, example: dict) -> tuple[str, str]:
        """A worked ``(reasoning, answer)`` for ``example``, for cold-start data (:mod:`r1lab.sft.coldstart`).
        Only procedural tasks that know how their problems were made write them; the rest raise."""
        raise NotImplementedError(f"task {self.name!r} writes no worked traces")


def question_text(example: dict, task: Task) -> str:
    """The user turn for ``example``: its question, then the task's instruction (if any), the same for RL,
    evaluation, rejection sampling, cold start and distillation.

    >>> class T(Task):
    ...     instruction = "Answer in words."
    ...     def examples(self, split): return []
    ...     def verify(self, completion, **example): return None
    >>> print(question_text({"prompt": "2+3?"}, T()))
    2+3?
    Answer in words.
    """
    return f"{example['prompt']}\n{task.instruction}" if task.instruction else example["prompt"]


def seeded_split(items: list, test_size: int | float, seed: int) -> tuple[list, list]:
    """Shuffle ``items`` with ``seed`` and cut off a test part: a count (an int) or a fraction (a float, 1.0 = all).

    >>> seeded_split(list(range(10)), 0.2, seed=0) == seeded_split(list(range(10)), 2, seed=0)
    True
    """
    items = list(items)
    random.Random(seed).shuffle(items)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ValueError(f"test_size must be a count (an int) or a fraction (a float from 0.0 to 1.0), "
                         f"got {test_size!r}")
    if isinstance(test_size, float):  # 1.0 is the whole set, not one item
        if not 0.0 <= test_size <= 1.0:
            raise ValueError(f"test_size {test_size} is a float, so a fraction: give one from 0.0 to 1.0, or a "
                             "whole number of items (e.g. 100)")
        n_test = int(round(test_size * len(items)))
    else:
        n_test = test_size
    if not 0 <= n_test <= len(items):
        raise ValueError(f"test_size {test_size} does not fit {len(items)} items")
    return items[n_test:], items[:n_test]
