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
from r1lab.sandbox.judge import AssertTest, CallTest, IOTest, judge_asserts, judge_calls, judge_io
from r1lab.sandbox.run import Limits

FENCE = "```"


def extract_code(completion: str, language: str = "python") -> str | None:
    """The last fenced block in the reply's final part, preferring blocks tagged ``language``. Linear time: a
    scan for fences, no backtracking regex (a long reply with an unclosed fence costs one pass).

    >>> extract_code("<think>```python\\nx = 1\\n```</think>Here:\\n```python\\nprint(2)\\n```\\n```text\\nout\\n```")
    'print(2)\\n'
    >>> extract_code("no code"), extract_code("```\\nprint(3)\\n```"), extract_code("```python\\nopen")
    (None, 'print(3)\\n', None)
    """
    span = final_answer_span(completion)  # the answer part only: code inside the thinking never counts
    tagged, untagged = [], []
    start = span.find(FENCE)
    while start >= 0:
        newline = span.find("\n", start + len(FENCE))
        if newline < 0:
            break
        end = span.find(FENCE, newline + 1)
        if end < 0:
            break
        header = span[start + len(FENCE):newline]
        lang = re.match(r"[\w+-]*", header).group().lower()
        (tagged if lang in (language, "py", "python3") else untagged if not lang else []).append(span[newline + 1:end])
        start = span.find(FENCE, end + len(FENCE))
    chosen = tagged or untagged
    return chosen[-1] if chosen else None


@register("code", help="share of the example's tests the reply's program passes, run in the sandbox",
          options=("partial",))  # the rest (tests, func, setup, limits) are each example's
def code_reward(completion: str, tests: list | None = None, func: str | None = None, partial: bool = False,
                setup: str = "", limits: Limits | None = None, **_) -> float | None:
    """Run the reply's program on the example's tests in the sandbox (see :mod:`r1lab.sandbox.judge`): ``{assert}``
    lines (after ``setup``), ``{args, expected}`` calls of ``func``, or ``{input, output[, tolerance]}`` runs, each run
    under ``limits`` (the sandbox's defaults: 5 s wall and CPU, 1 GiB; stdin/stdout runs share a 20 s budget per
    completion, and stop at the first failure unless ``partial``)."""
    if not tests:
        return None
    program = extract_code(completion)
    if program is None:
        return 0.0
    first = tests[0]
    if isinstance(first, AssertTest) or isinstance(first, dict) and "assert" in first:
        verdict = judge_asserts(program, [t if isinstance(t, AssertTest) else AssertTest(t["assert"]) for t in tests],
                                setup=setup, limits=limits)
    elif func:
        verdict = judge_calls(program, func, [t if isinstance(t, CallTest) else CallTest(**t) for t in tests],
                              limits=limits)
    else:
        verdict = judge_io(program, [t if isinstance(t, IOTest) else IOTest(**t) for t in tests], limits=limits,
                           stop_at_failure=not partial)
    return verdict.score(partial)
