"""The ``code`` reward: run the reply's program on the example's tests in the sandbox.

- :func:`extract_code`: the last fenced block of the reply's final part (```python first, else any fence).
- ``code`` reward (:func:`code_reward`): the share of tests passed, or 1.0 only when all pass (``partial=False``,
  the default, as R1's "passing test cases"); None when there are no tests or the sandbox itself failed.

The program runs in :mod:`r1lab.sandbox`; expected outputs stay here, and the verdict is made here
(:mod:`r1lab.sandbox.judge`). The code tasks that use this reward are in :mod:`r1lab.tasks.code`.
"""

from __future__ import annotations

import re

from r1lab.chat import final_answer_span
from r1lab.rewards.registry import register
from r1lab.sandbox.judge import CallTest, IOTest, judge_calls, judge_io

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str, language: str = "python") -> str | None:
    """The last fenced block in the reply's final part, preferring blocks tagged ``language``.

    >>> extract_code("<think>```python\\nx = 1\\n```</think>Here:\\n```python\\nprint(2)\\n```\\n```text\\nout\\n```")
    'print(2)\\n'
    >>> extract_code("no code"), extract_code("```\\nprint(3)\\n```")
    (None, 'print(3)\\n')
    """
    span = final_answer_span(completion) or completion
    blocks = _FENCE.findall(span)
    tagged = [code for lang, code in blocks if lang.lower() in (language, "py", "python3")]
    untagged = [code for lang, code in blocks if not lang]
    chosen = tagged or untagged
    return chosen[-1] if chosen else None


@register("code")
def code_reward(completion: str, tests: list | None = None, func: str | None = None, partial: bool = False,
                **_) -> float | None:
    """Run the reply's program on the example's tests in the sandbox (see :mod:`r1lab.sandbox.judge`)."""
    if not tests:
        return None
    program = extract_code(completion)
    if program is None:
        return 0.0
    if func:
        verdict = judge_calls(program, func, [t if isinstance(t, CallTest) else CallTest(**t) for t in tests])
    else:
        verdict = judge_io(program, [t if isinstance(t, IOTest) else IOTest(**t) for t in tests])
    return verdict.score(partial)
