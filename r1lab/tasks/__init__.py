"""Tasks: each owns its data, its prompt and the verifier of its answers (see :mod:`r1lab.tasks.base`).

Built in: ``arithmetic`` and ``countdown`` (generated, seeded), ``dataset`` (your JSONL file, a folder of
splits or a Hugging Face dataset) and ``gsm8k`` (a local GSM8K folder). Build one by name with
``get_task("countdown", numbers=4)``.
"""

from r1lab.tasks.arithmetic import ArithmeticTask
from r1lab.tasks.base import TASKS, Task, get_task, register_task, seeded_split
from r1lab.tasks.countdown import CountdownTask
from r1lab.tasks.dataset import DatasetTask

__all__ = ["Task", "get_task", "TASKS", "seeded_split", "register_task", "ArithmeticTask", "CountdownTask",
           "DatasetTask"]

from r1lab.sandbox import code as _code  # noqa: E402,F401  (registers the code tasks and the code reward)
