"""Tasks: each owns its data, its prompt and the verifier of its answers (see :mod:`r1lab.tasks.base`).

Built in: ``arithmetic`` and ``countdown`` (generated, seeded, with worked cold-start traces), ``dataset``
(your JSONL file, a folder of splits or a Hugging Face dataset), ``gsm8k`` (a local GSM8K folder), and
``code_functions`` and ``code_dataset`` (judged in the sandbox), and ``general`` (helpful and harmless prompts
for stage 4, judged by reward models only). Build one by name with
``get_task("countdown", numbers=4)``, or with the defaults a recipe gets when it names no options with
``build_task("arithmetic", None)``.
"""

from __future__ import annotations

from r1lab.tasks.arithmetic import ArithmeticTask
from r1lab.tasks.base import TASKS, Task, register_task, seeded_split
from r1lab.tasks.code import CodeDatasetTask, CodeFunctionsTask
from r1lab.tasks.countdown import CountdownTask
from r1lab.tasks.dataset import DatasetTask
from r1lab.tasks.general import GeneralTask
from r1lab.tasks.mixture import MixtureTask

__all__ = ["Task", "get_task", "build_task", "task_args_for", "DEFAULT_TASK_ARGS", "TASKS", "seeded_split",
           "register_task", "ArithmeticTask", "CountdownTask", "DatasetTask", "CodeFunctionsTask",
           "CodeDatasetTask", "MixtureTask", "GeneralTask"]

#: what ``task_args: None`` means for each task. For arithmetic: 1-digit +, -, *, all 300 such problems, 100 held
#: out. SmolLM2-135M gets ~31% right at T=0.7 and about half the groups have mixed rewards, so there is signal.
DEFAULT_TASK_ARGS = {"arithmetic": {"digits": 1, "operands": 2, "operators": "+-*", "n_train": 200, "n_test": 100},
                     # R1 stage 4's scenarios: reasoning prompts, and general prompts (half as many) for reward models
                     "mix": {"tasks": {"arithmetic": {"share": 1}, "general": {"share": 0.5}}}}


def task_args_for(task: str, task_args: dict | None) -> dict:
    """The options to build ``task`` with: the given ones, else its defaults here (none for most tasks).

    >>> task_args_for("arithmetic", {"digits": 2}), task_args_for("countdown", None)
    ({'digits': 2}, {})
    """
    return dict(task_args) if task_args is not None else dict(DEFAULT_TASK_ARGS.get(task, {}))


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name, e.g. ``get_task("arithmetic", digits=1)``."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}. "
                       "For your own data use task=dataset with path=FILE.jsonl")
    try:
        return TASKS[name](**kwargs)
    except TypeError as exc:  # an option the task does not take
        raise ValueError(f"task {name!r}: {exc}. Set --task-args to options of this task (or leave them out)") from None


def build_task(name: str, task_args: dict | None) -> Task:
    """The task a recipe names: ``task_args`` as given, or the task's defaults (:data:`DEFAULT_TASK_ARGS`) when
    it gives none.

    >>> task = build_task("arithmetic", None)
    >>> len(task.examples("train")), len(build_task("countdown", {"n_train": 5, "n_test": 2}).examples("train"))
    (200, 5)
    """
    return get_task(name, **task_args_for(name, task_args))


@register_task("mix")
def _mixture(tasks: dict | None = None, seed: int = 0) -> MixtureTask:
    return MixtureTask(tasks, seed, build_task)
