"""Filters for rejection-sampled reasoning (R1 stage 3): each is a plain function of one sample that returns
None to keep it or a short reason to drop it, so a report can count the drops per filter.

R1 "filtered out chain-of-thought with mixed languages, long paragraphs, and code blocks". Here:

- ``language``: the share of the reasoning's words in the target language's script
  (:func:`r1lab.rewards.language.language_consistency`) is below a threshold;
- ``long_paragraph``: a paragraph of the reasoning (text between blank lines) is longer than a limit;
- ``code_block``: the reasoning holds a fenced code block;
- ``truncated``: the reply hit the length limit;
- ``no_reasoning``: the reply is not in R1's format (a closed, non-empty think block, then an answer): always on
  for reasoning samples, since stage-3 reasoning data must teach the format.

Duplicates and contamination need the other samples, so they are classes: :class:`Deduplicator` drops exact
repeats (after normalising whitespace and case) and near repeats (Jaccard similarity of word 5-gram sets at or
above a threshold) among one prompt's kept replies; :class:`Decontaminator` drops prompts sharing a word
8-gram with any evaluation prompt (open-r1's rule).
"""

from __future__ import annotations

import re

from r1lab.chat import split_reasoning
from r1lab.rewards.language import language_consistency

_WORD = re.compile(r"\w+")


def language_mixed(completion: str, language: str = "en", threshold: float = 0.95) -> str | None:
    """Drop reasoning whose share of words in ``language`` is below ``threshold``.

    >>> language_mixed("<think>Add 2 and 3 to get 5.</think>5"), language_mixed("<think>先加 2 and 3</think>5")
    (None, 'language: 33% of the reasoning in en')
    """
    share = language_consistency(completion, language=language)
    if share is not None and share < threshold:
        return f"language: {share:.0%} of the reasoning in {language}"
    return None


def long_paragraph(completion: str, max_chars: int = 1500) -> str | None:
    """Drop reasoning with a paragraph longer than ``max_chars``.

    >>> long_paragraph("<think>short\\n\\nalso short</think>ok"), long_paragraph("<think>" + "x" * 20 + "</think>", 10)
    (None, 'long_paragraph: 20 characters')
    """
    reasoning, _ = split_reasoning(completion)
    longest = max((len(p.strip()) for p in re.split(r"\n\s*\n", reasoning)), default=0)
    return f"long_paragraph: {longest} characters" if longest > max_chars else None


def code_block(completion: str) -> str | None:
    """Drop reasoning that holds a fenced code block (code in the answer is fine).

    >>> code_block("<think>```python\\nprint(1)\\n```</think>1"), code_block("<think>no code</think>```x```")
    ('code_block', None)
    """
    reasoning, _ = split_reasoning(completion)
    return "code_block" if "```" in reasoning else None


def no_reasoning(completion: str) -> str | None:
    """Drop a reasoning sample that is not in R1's format: it opens with one think block, closes it once, has
    reasoning inside and an answer after.

    >>> no_reasoning("<think>2 and 2 make 4.</think> 4"), no_reasoning("1 + 1 = 2"), no_reasoning("<think></think>2")
    (None, 'no_reasoning: no think block', 'no_reasoning: empty reasoning')
    >>> no_reasoning("so </think> 5"), no_reasoning("<think>a</think><think>b</think>5")
    ('no_reasoning: no think block', 'no_reasoning: more than one think block')
    """
    if not completion.lstrip().startswith("<think>") or "</think>" not in completion:
        return "no_reasoning: no think block"
    if completion.count("<think>") > 1 or completion.count("</think>") > 1:
        return "no_reasoning: more than one think block"
    reasoning, answer = split_reasoning(completion)
    if not reasoning:
        return "no_reasoning: empty reasoning"
    return None if answer else "no_reasoning: no answer after the reasoning"


def unreadable(completion: str, language: str = "en", min_share: float = 0.95, max_chars: int = 1500) -> str | None:
    """Why a reply is not a readable R1-format one (no think block, mixed language, a long paragraph or a code
    block in the reasoning), or None: the checks cold start and distillation keep a trace by."""
    return (no_reasoning(completion) or language_mixed(completion, language, min_share)
            or long_paragraph(completion, max_chars) or code_block(completion))


def truncated(finish_reason: str) -> str | None:
    return "truncated" if finish_reason == "length" else None


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))} if words else set()


class Deduplicator:
    """Exact and near duplicates among the replies kept for one prompt (call :meth:`reset` between prompts)."""

    def __init__(self, near_threshold: float = 0.9, n: int = 5):
        self.near_threshold, self.n = near_threshold, n
        self.reset()

    def reset(self) -> None:
        self._exact: set[str] = set()
        self._shingles: list[set] = []

    def check(self, text: str) -> str | None:
        """None (and remember ``text``) if new; else why it is a duplicate.

        >>> d = Deduplicator()
        >>> d.check("The sum of 2 and 3 is 5, so the answer is 5.")
        >>> d.check("the sum of 2 and 3  is 5, so the answer is 5.")
        'duplicate: exact'
        """
        key = " ".join(text.lower().split())  # whitespace and case do not count
        if key in self._exact:
            return "duplicate: exact"
        grams = shingles(text, self.n)
        for seen in self._shingles:
            union = len(grams | seen)
            if union and len(grams & seen) / union >= self.near_threshold:
                return "duplicate: near"
        self._exact.add(key)
        self._shingles.append(grams)
        return None


class Decontaminator:
    """Drops training prompts that share a word n-gram (8 by default) with any evaluation prompt."""

    def __init__(self, eval_prompts: list[str], n: int = 8):
        self.n = n
        self._grams = {g for p in eval_prompts for g in shingles(p, n) if len(g) == n}  # shorter prompts never match

    def check(self, prompt: str) -> str | None:
        """None if ``prompt`` shares no n-gram with the evaluation prompts, else why it is dropped.

        >>> d = Decontaminator(["Janet's ducks lay 16 eggs per day and she eats three"])
        >>> d.check("Q: Janet's ducks lay 16 eggs per day and she eats three. Left?"), d.check("Ducks lay eggs.")
        ('contaminated: shares an 8-gram with the evaluation set', None)
        """
        if any(g in self._grams for g in shingles(prompt, self.n)):
            return f"contaminated: shares an {self.n}-gram with the evaluation set"
        return None
