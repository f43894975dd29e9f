"""Shaping rewards from open-r1, after Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs".

- ``cosine`` (:func:`cosine`): accuracy scaled by length on a cosine schedule, so that a short right answer earns
  most and a short wrong one is punished most (the paper's cosine reward, as open-r1's
  ``get_cosine_scaled_reward``).
- ``repetition`` (:func:`repetition`): a penalty for repeated word n-grams (the paper's appendix C.2, as open-r1's
  ``get_repetition_penalty_reward``), against the loops a length reward invites.
- ``reasoning_steps`` (:func:`reasoning_steps`): credit for visible step markers (open-r1's
  ``reasoning_steps_reward``; in no paper).

R1 itself uses none of these. Simplified: the paper's cosine reward also gives a fixed ``r_exceed`` to a response
that hits the length limit (use ``overlong``, :mod:`r1lab.rewards.length`, for that); its repetition penalty falls
on each repeated token, where this one (as open-r1's) is one score for the whole response.
"""

from __future__ import annotations

import math
import re

from r1lab.rewards.registry import register


@register("cosine", needs=("verify", "max_length"),
          help="accuracy scaled by length: short right answers earn most, short wrong ones lose most (Yeo et al.)")
def cosine(
    completion: str,
    *,
    verify,
    completion_length: int,
    max_length: int | None = None,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    **example,
) -> float | None:
    """Accuracy scaled by length: ``verify(completion, **example)`` decides right or wrong, and the progress
    ``p = min(1, completion_length / max_length)`` moves the score along a half cosine, from ``max_value_correct`` at
    ``p = 0`` down to ``min_value_correct`` at ``p = 1`` for a right answer, and from ``min_value_wrong`` up to
    ``max_value_wrong`` for a wrong one: ``end + (start - end) * (1 + cos(pi * p)) / 2``.

    Follows open-r1's ``get_cosine_scaled_reward`` (``src/open_r1/rewards.py``) and its defaults. Deliberate
    differences: the length is ``completion_length`` in tokens (the paper's unit) over ``max_length`` (the run's
    completion budget), where open-r1 counts characters over its own ``max_len``; a length beyond ``max_length`` counts
    as ``max_length`` (open-r1's cosine turns back up past it); right means a verdict of 1.0 (a partial verdict counts
    as wrong); and a verifier that cannot judge (None) gives None, where open-r1 scores an unreadable reference 1.0.
    The verifier sees what ``accuracy``'s does: the example's fields and ``completion_length``.

    >>> verify = lambda c, answer, **_: float(answer in c)
    >>> [cosine("4", verify=verify, answer="4", completion_length=n, max_length=100) for n in (0, 50, 100)]
    [1.0, 0.75, 0.5]
    >>> [cosine("5", verify=verify, answer="4", completion_length=n, max_length=100) for n in (0, 50, 100)]
    [-1.0, -0.75, -0.5]
    >>> cosine("4", verify=verify, answer="4", completion_length=10) is None   # no budget: cannot judge
    True
    """
    if max_length is None:
        return None
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    verdict = verify(completion, completion_length=completion_length, **example)
    if verdict is None:
        return None
    start, end = (max_value_correct, min_value_correct) if verdict >= 1.0 else (min_value_wrong, max_value_wrong)
    progress = min(1.0, completion_length / max_length)
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2


@register("repetition", help="(1 - unique/total word n-grams) x max_penalty (Yeo et al., open-r1)")
def repetition(completion: str, *, ngram_size: int = 3, max_penalty: float = -1.0, **_) -> float:
    """``(1 - unique / total) * max_penalty`` over the word n-grams of the whole response (lowercased, split at
    whitespace): 0 when no n-gram repeats, near ``max_penalty`` when one n-gram fills it, and 0 for a response of fewer
    than ``ngram_size`` words.

    Follows open-r1's ``get_repetition_penalty_reward`` (``src/open_r1/rewards.py``, English word splitting), which
    scores the whole response, reasoning, answer and tags alike. Its Chinese splitting (``jieba``) is left out. A
    ``max_penalty`` above 0 (a reward for repeating) or an ``ngram_size`` below 1 is an error.

    >>> repetition("A B C A B C")            # n-grams abc bca cab abc: 3 unique of 4
    -0.25
    >>> repetition("one two three four"), repetition("two words")
    (0.0, 0.0)
    >>> repetition("this this this this this", ngram_size=2, max_penalty=-0.5)
    -0.375
    """
    if max_penalty > 0:
        raise ValueError(f"repetition: max_penalty must be 0 or negative (a penalty), got {max_penalty}")
    if ngram_size < 1:
        raise ValueError(f"repetition: ngram_size must be at least 1, got {ngram_size}")
    words = completion.lower().split()
    if len(words) < ngram_size:
        return 0.0
    ngrams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    unique = len(set(ngrams))
    return 0.0 if unique == len(ngrams) else (1 - unique / len(ngrams)) * max_penalty


#: step markers counted by ``reasoning_steps``: "Step 3:", a numbered line, a bullet, a transition word
_STEP = re.compile(r"Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,", re.MULTILINE)
#: how many step markers earn full credit (open-r1's "magic number 3")
STEPS_FOR_FULL_CREDIT = 3


@register("reasoning_steps",
          help="min(1, step markers / 3): Step N:, numbered lines, bullets, First/Next/Finally (open-r1)")
def reasoning_steps(completion: str, **_) -> float:
    """``min(1, markers / 3)`` where ``markers`` counts the step markers in the whole response: ``Step N:``, a line
    starting with ``N.``, a line starting with ``-`` or ``*`` (not the first line), and ``First,``, ``Second,``,
    ``Next,``, ``Finally,`` (case-sensitive, anywhere).

    Follows open-r1's ``reasoning_steps_reward`` (``src/open_r1/rewards.py``) and its pattern. Deliberate difference:
    open-r1 compiles ``^\\d+\\.`` without ``re.MULTILINE``, so only a number at the very start of the response counts,
    though its docstring says "at start of line"; here a numbered line counts wherever it starts.

    >>> reasoning_steps("Step 1: add.\\nStep 2: carry.\\nFinally, 12.")
    1.0
    >>> reasoning_steps("First, add.\\nFinally, 12."), reasoning_steps("It is 12.")
    (0.6666666666666666, 0.0)
    >>> reasoning_steps("<think>\\n1. add\\n2. carry\\n</think>")   # open-r1 counts neither line: 0.0
    0.6666666666666666
    """
    return min(1.0, len(_STEP.findall(completion)) / STEPS_FOR_FULL_CREDIT)
