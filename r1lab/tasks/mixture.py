"""``mix``: several tasks as one, for RL over all scenarios (R1 stage 4: reasoning prompts and general prompts).

Each example keeps its own task's prompt (with that task's instruction written into it), is tagged with the task
it came from (``task``) and a ``kind`` (its own, else ``reasoning``), and is verified by its own task, so a
general prompt's accuracy is None (skipped) while reward-model rewards limited to ``on: general`` judge it.

The training split holds each task in proportion to its ``share`` (a task's examples are repeated, in order,
when its share asks for more than it has), shuffled with ``seed``; the test split is every task's test examples,
one task after another, in their own order.

>>> from r1lab.tasks import get_task
>>> mix = get_task("mix", tasks={"arithmetic": {"share": 3, "n_train": 30, "n_test": 4},
...                          "countdown": {"share": 1, "n_train": 10, "n_test": 2}})
>>> train = mix.examples("train")
>>> sum(e["task"] == "arithmetic" for e in train), sum(e["task"] == "countdown" for e in train)
(30, 10)
>>> [e["task"] for e in mix.examples("test")]
['arithmetic', 'arithmetic', 'arithmetic', 'arithmetic', 'countdown', 'countdown']
>>> e = mix.examples("test")[0]
>>> mix.verify("<think>x</think><answer>" + e["answer"] + "</answer>", **e)
1.0
"""

from __future__ import annotations

import random

from r1lab.tasks.base import Task, question_text


class MixtureTask(Task):
    """Registered as ``mix`` by :mod:`r1lab.tasks`, which passes its ``build_task``."""

    name = "mix"

    def __init__(self, tasks: dict | None = None, seed: int = 0, build_task=None):
        """``tasks``: ``{task_name: {share: weight, ...that task's options}}``; a share defaults to 1."""
        if not tasks or not isinstance(tasks, dict):
            raise ValueError("task mix needs task_args {tasks: {NAME: {share: W, ...options}}}, e.g. "
                             "{tasks: {arithmetic: {share: 1}, general: {share: 1}}}")
        self.parts, self.shares = {}, {}
        for name, options in tasks.items():
            options = dict(options or {})
            share = options.pop("share", 1)
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0:
                raise ValueError(f"task mix: the share of {name!r} is {share!r}; give a number > 0")
            self.parts[name] = build_task(name, options or None)
            self.shares[name] = float(share)
        self.seed = seed

    def examples(self, split: str) -> list[dict]:
        own = {name: [self._tag(e, name, task) for e in task.examples(split)] for name, task in self.parts.items()}
        if split != "train":
            return [e for examples in own.values() for e in examples]
        total, weight = sum(len(v) for v in own.values()), sum(self.shares.values())
        mixed = []
        for name, examples in own.items():
            count = round(total * self.shares[name] / weight)
            mixed += [dict(examples[i % len(examples)]) for i in range(count)] if examples else []
        random.Random(self.seed).shuffle(mixed)
        return mixed

    @staticmethod
    def _tag(example: dict, name: str, task: Task) -> dict:
        return {**example, "prompt": question_text(example, task), "task": name,
                "kind": example.get("kind", "reasoning")}

    def verify(self, completion: str, **example) -> float | None:
        task = self.parts.get(example.get("task"))
        return None if task is None else task.verify(completion, **example)
