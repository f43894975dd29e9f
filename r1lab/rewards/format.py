"""Format rewards: does the response keep the ``<think>…</think><answer>…</answer>`` shape?

R1-Zero (paper section 2.2.2) pairs its accuracy reward with a format reward that "enforces the model to
put its thinking process between '<think>' and '</think>' tags". The paper gives no formula; ``format``
(:func:`format_reward`) is the strict all-or-nothing check most reproductions use, ``tag_count`` the
partial-credit shaping from open-r1 that helps a small model discover the tags. ``reflection_rate`` is not a
reward: it measures the share of responses that re-examine themselves, the paper's "aha moment" curve.

Simplified: tags are matched exactly (case-sensitive, no attributes); the paper's readability rules for
stage 2 (markdown, summaries) are left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from r1lab.rewards.registry import register

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

_FORMAT = re.compile(r"^\s*<think>\n?(.+?)\n?</think>\s*<answer>\n?(.+?)\n?</answer>\s*$", re.DOTALL)

#: what ``tag_count`` takes off per character after the last ``</answer>``, and at most
TRAILING_PENALTY_PER_CHAR = 0.001
TRAILING_PENALTY_MAX = 0.25


@register("format")
def format_reward(completion: str, **_) -> float:
    """1.0 iff the response is one non-empty think block then one non-empty answer block, else 0.0.

    Whitespace around and between the blocks is allowed; any further ``<think>``/``</think>``/
    ``<answer>``/``</answer>`` tag (nested, repeated, stray) fails the check.

    >>> format_reward("<think>\\n2+3=5</think><answer>5</answer>")   # R1 template: prefill + generation
    1.0
    >>> format_reward("<think>\\n</think><answer>5</answer>")        # empty reasoning
    0.0
    >>> format_reward("<think>2+3</think><answer>5</answer><answer>6</answer>")
    0.0
    """
    match = _FORMAT.match(completion)
    if match is None or any(completion.count(tag) != 1 for tag in TAGS):
        return 0.0
    reasoning, answer = match.groups()
    return 1.0 if reasoning.strip() and answer.strip() else 0.0


@register("tag_count")
def tag_count(completion: str, **_) -> float:
    """Partial credit for the four tags, after open-r1's ``tag_count_reward``.

    Each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` earns 0.25 if it appears exactly
    once and, when the tag before it in that order is present, after that tag (so an answer before
    the thinking, or a closing tag before its opening, loses credit; a repeated tag earns nothing).
    Text after the last ``</answer>`` costs ``TRAILING_PENALTY_PER_CHAR`` per non-whitespace
    character, at most ``TRAILING_PENALTY_MAX``; the score never goes below 0.

    >>> tag_count("<think>\\n2+3=5</think><answer>5</answer>")
    1.0
    >>> tag_count("<think>a</think><think>b</think><answer>5</answer>")   # repeated think block
    0.5
    >>> tag_count("<think>a</think><answer>5</answer>" + "x" * 100)      # 100 trailing characters
    0.9
    """
    score = 0.0
    previous = -1  # position of the previous tag in canonical order, -1 if absent or repeated
    for tag in TAGS:
        position = completion.find(tag)
        once = position >= 0 and completion.count(tag) == 1
        if once and position > previous:
            score += 0.25
        previous = position if once else -1
    end = completion.rfind("</answer>")
    if end >= 0:
        trailing = len("".join(completion[end + len("</answer>"):].split()))
        score -= min(TRAILING_PENALTY_MAX, TRAILING_PENALTY_PER_CHAR * trailing)
    return round(max(0.0, score), 6)


#: reflection words and phrases counted by ``reflection_rate`` (case-insensitive, whole words)
REFLECTION_WORDS = ("wait", "verify", "let me check", "recheck", "double-check", "re-evaluate", "hmm")

_REFLECTION = re.compile(
    r"\b(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in REFLECTION_WORDS) + r")\b",
    re.IGNORECASE,
)


def reflection_rate(texts: Iterable[str]) -> float:
    """Share of ``texts`` containing a word or phrase of ``REFLECTION_WORDS`` (NaN for no texts).

    >>> reflection_rate(["Wait, that is wrong.", "So x = 2.", "Let me  check: 2+2=4", "awaiting"])
    0.5
    """
    texts = list(texts)
    if not texts:
        return math.nan
    return sum(_REFLECTION.search(t) is not None for t in texts) / len(texts)
