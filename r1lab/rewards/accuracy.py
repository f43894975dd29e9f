"""The accuracy reward: the task's own verifier (a :class:`r1lab.tasks.base.Task`'s ``verify``), so that the RL
reward, rejection sampling and the benchmark score judge an answer alike (STYLE.md, principle 4)."""

from __future__ import annotations

from r1lab.rewards.registry import register


@register("accuracy", needs=("verify",), help="1 for a verified final answer, 0 for a wrong one (the task's verifier)")
def accuracy(completion: str, *, verify, **example) -> float | None:
    """``verify(completion, **example)``: 1 for a verified final answer, 0 for a wrong one, None when the task
    cannot judge.

    >>> accuracy("<answer>4</answer>", verify=lambda c, answer, **_: float(answer in c), answer="4")
    1.0
    >>> accuracy("<answer>5</answer>", verify=lambda c, answer, **_: float(answer in c), answer="4")
    0.0
    """
    return verify(completion, **example)
