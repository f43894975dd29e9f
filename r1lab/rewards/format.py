"""Format rewards: does the response keep the ``<think>…</think><answer>…</answer>`` shape?

R1-Zero (paper section 2.2.2) pairs its accuracy reward with a format reward that "enforces the model to
put its thinking process between '<think>' and '</think>' tags". The paper gives no formula; ``format``
(:func:`format_reward`) is the strict all-or-nothing check most reproductions use, ``tag_count`` the
partial-credit shaping from open-r1 that helps a small model discover the tags, ``code_format`` open-r1's
check that the answer holds a fenced program, and ``think_format`` TRL's check for templates that answer
after the thinking without an ``<answer>`` block. ``reflection_rate`` is not a reward: it measures the share
of responses that re-examine themselves, the paper's "aha moment" curve.

The delimiters are the run's (``tags``: :data:`r1lab.rewards.registry.TAGS` unless it sets its own, as
``{"think": (open, close), "answer": (open, close)}``); each of these rewards takes them as ``tags=``, and a
key left out keeps its default.

Simplified: tags are matched exactly (case-sensitive, no attributes); the paper's readability rules for
stage 2 (markdown, summaries) are left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from r1lab.rewards.registry import TAGS, register

#: what ``tag_count`` takes off per character after the last ``</answer>``, and at most
TRAILING_PENALTY_PER_CHAR = 0.001
TRAILING_PENALTY_MAX = 0.25

FENCE = "```"


def delimiters(tags: Mapping = TAGS) -> tuple[str, str, str, str]:
    """The four delimiters of ``tags`` in the order they should appear: think open, think close, answer open,
    answer close. A key ``tags`` lacks keeps its default (:data:`TAGS`); other keys are ignored.

    >>> delimiters({"think": ("<reasoning>", "</reasoning>")})
    ('<reasoning>', '</reasoning>', '<answer>', '</answer>')
    """
    four = []
    for key in ("think", "answer"):
        pair = tags.get(key, TAGS[key])
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) and s for s in pair)):
            raise ValueError(f"tags[{key!r}] must be a pair of non-empty strings (open, close), got {pair!r}")
        four.extend(pair)
    if len(set(four)) < 4:
        raise ValueError(f"tags: the four delimiters must differ, got {four}")
    return tuple(four)


@lru_cache(maxsize=64)
def _format_pattern(four: tuple[str, str, str, str]) -> re.Pattern:
    think_open, think_close, answer_open, answer_close = map(re.escape, four)
    return re.compile(rf"^\s*{think_open}\n?(.+?)\n?{think_close}\s*{answer_open}\n?(.+?)\n?{answer_close}\s*$",
                      re.DOTALL)


def _blocks(completion: str, tags: Mapping) -> tuple[str, str] | None:
    """``(reasoning, answer)`` if the response is one non-empty think block then one non-empty answer block (see
    :func:`format_reward`), else None."""
    four = delimiters(tags)
    match = _format_pattern(four).match(completion)
    if match is None or any(completion.count(tag) != 1 for tag in four):
        return None
    reasoning, answer = match.groups()
    return (reasoning, answer) if reasoning.strip() and answer.strip() else None


@register("format", needs=("tags",), help="1 iff one non-empty think block, then one non-empty answer block (R1-Zero)")
def format_reward(completion: str, *, tags: Mapping = TAGS, **_) -> float:
    """1.0 iff the response is one non-empty think block then one non-empty answer block, else 0.0.

    Whitespace around and between the blocks is allowed; any further ``<think>``/``</think>``/
    ``<answer>``/``</answer>`` tag (nested, repeated, stray) fails the check. ``tags`` sets other delimiters.

    >>> format_reward("<think>\\n2+3=5</think><answer>5</answer>")   # R1 template: prefill + generation
    1.0
    >>> format_reward("<think>\\n</think><answer>5</answer>")        # empty reasoning
    0.0
    >>> format_reward("<think>2+3</think><answer>5</answer><answer>6</answer>")
    0.0
    >>> format_reward("<reasoning>2+3</reasoning><answer>5</answer>", tags={"think": ("<reasoning>", "</reasoning>")})
    1.0
    """
    return 0.0 if _blocks(completion, tags) is None else 1.0


@register("tag_count", needs=("tags",), help="0.25 per tag present once and in order, less trailing text (open-r1)")
def tag_count(completion: str, *, tags: Mapping = TAGS, **_) -> float:
    """Partial credit for the four tags, after open-r1's ``tag_count_reward``.

    Each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` (or the delimiters ``tags`` sets) earns 0.25 if it
    appears exactly once and, when the tag before it in that order is present, after that tag (so an answer before
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
    four = delimiters(tags)
    score = 0.0
    previous = -1  # position of the previous tag in canonical order, -1 if absent or repeated
    for tag in four:
        position = completion.find(tag)
        once = position >= 0 and completion.count(tag) == 1
        if once and position > previous:
            score += 0.25
        previous = position if once else -1
    answer_close = four[3]
    end = completion.rfind(answer_close)
    if end >= 0:
        trailing = len("".join(completion[end + len(answer_close):].split()))
        score -= min(TRAILING_PENALTY_MAX, TRAILING_PENALTY_PER_CHAR * trailing)
    return round(max(0.0, score), 6)


@register("code_format", needs=("tags",),
          help="1 iff the think/answer format holds a fenced code block of code_language (open-r1)")
def code_format(completion: str, *, code_language: str = "python", tags: Mapping = TAGS, **_) -> float:
    """1.0 iff the response passes :func:`format_reward` and its answer block holds a closed fenced code block of
    ``code_language``, else 0.0: open-r1's ``get_code_format_reward`` (``src/open_r1/rewards.py``).

    A block is a fence (```` ``` ````) whose info string's first word is ``code_language`` (any case), a line break, and
    a closing fence; fences pair up in order, so a closing fence is never read as an opening one. Fences inside the
    thinking do not count. An example's own ``code_language`` field wins over the option (mixed-language code data).

    Deliberate differences from open-r1 (whose check is the regex
    ``^<think>\\n.*?\\n</think>\\n<answer>\\n.*?```python.*?```.*?\\n</answer>$``): the think/answer shape is
    :func:`format_reward`'s (whitespace between the blocks allowed, no repeated or stray tag), where open-r1 demands
    exact newlines; the language must be the whole first word of the info string (```` ```python3 ```` is not
    ``python``; open-r1 matches a prefix, so even ```` ```pythonic ```` passes there) and the code must start on the
    next line; and the option is ``code_language`` (open-r1's script option; its function says ``language``, which
    here is the run's natural-language setting).

    >>> code_format("<think>\\nplan</think><answer>\\n```python\\nprint(5)\\n```\\n</answer>")
    1.0
    >>> code_format("<think>\\nplan</think><answer>\\n```js\\nlog(5)\\n```\\n</answer>"), code_format(
    ...     "<think>\\nplan</think><answer>\\n```js\\nlog(5)\\n```\\n</answer>", code_language="js")
    (0.0, 1.0)
    """
    blocks = _blocks(completion, tags)
    return 1.0 if blocks is not None and _has_fenced_block(blocks[1], code_language) else 0.0


def _has_fenced_block(text: str, language: str) -> bool:
    """Whether ``text`` holds a closed fenced block whose info string starts with the word ``language``. One pass
    over the fences, each opening one paired with the next."""
    start = text.find(FENCE)
    while start >= 0:
        newline = text.find("\n", start + len(FENCE))
        if newline < 0:
            return False
        end = text.find(FENCE, newline + 1)
        if end < 0:
            return False
        info = text[start + len(FENCE):newline].split()
        if info and info[0].lower() == language.lower():
            return True
        start = text.find(FENCE, end + len(FENCE))
    return False


@register("think_format", needs=("tags",),
          help="1 iff the reply opens one think block and closes it; no <answer> needed (TRL)")
def think_format(completion: str, *, tags: Mapping = TAGS, **_) -> float:
    """1.0 iff the response opens with ``<think>``, never opens another, and closes it with ``</think>``, else 0.0:
    TRL's ``think_format_reward`` (``trl/rewards/format_rewards.py``), for templates whose answer follows the thinking
    without ``<answer>`` tags. Only ``tags["think"]`` is used.

    As in TRL, the reasoning may be empty, anything may follow the first ``</think>`` (a further ``</think>`` too, but
    no ``<think>``), and a tag inside the reasoning is just text. Deliberate difference: whitespace before the opening
    ``<think>`` is allowed, as :func:`format_reward` allows it; TRL's ``^<think>`` does not.

    >>> think_format("<think>\\nThis is my reasoning.\\n</think>\\nThis is my answer.")
    1.0
    >>> think_format("<think>\\nThis is my reasoning.\\nThis is my answer.")   # never closed
    0.0
    >>> think_format("<think>a</think>\\nb\\n<think>c</think>\\nd")              # a second think block
    0.0
    """
    think_open, think_close = delimiters(tags)[:2]
    body = completion.lstrip()
    if not body.startswith(think_open):
        return 0.0
    rest = body[len(think_open):]
    return 1.0 if think_open not in rest and think_close in rest else 0.0


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
