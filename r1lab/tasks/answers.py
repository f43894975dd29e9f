"""Finding the final answer in a response, shared by every task so they all read answers the same way.

The final answer lives in the *final span* of a response (:func:`r1lab.chat.final_answer_span`): the last
``<answer>…</answer>`` block after the thinking, else the text after the last ``</think>``, else the whole
response. Inside that span the answer is the last ``\\boxed{…}``, else (inside an answer block) the whole block
when it is a bare formula, else the last number (:func:`extract_answer`).

Left out: answers split over several boxes (``\\boxed{1}, \\boxed{2}``: only the last counts),
``\\boxed 5`` without braces, and numbers written as words ("seven").
"""

from __future__ import annotations

import re

from r1lab.chat import final_span
from r1lab.rewards.math import verify_math

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.\-\u2212])[-\u2212])?"  # a minus that is a sign, not "pages 10-12" or "x-3"
    r"(?<![\w./])"  # not the tail of a word or of a longer number
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?![.\d]))?"
)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _box_content(text: str, start: int) -> str | None:
    """The text between the brace at ``start`` and its partner, or None if it never closes."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":  # \{ and \} are characters, not grouping
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{…}`` (or ``\\fbox{…}``), braces balanced.

    >>> extract_boxed("first \\\\boxed{1}, then \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_boxed("\\\\fbox{\\\\{1, 2\\\\}}"), extract_boxed("no box"), extract_boxed("\\\\boxed{3} \\\\boxed{4")
    ('\\\\{1, 2\\\\}', None, '3')
    """
    starts = sorted(m.end() - 1 for opener in _BOX_OPENERS for m in re.finditer(re.escape(opener), text))  # their "{"
    for start in reversed(starts):
        content = _box_content(text, start)
        if content is not None:
            return content
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text``, thousands commas removed: ``-3``, ``1234``, ``2.5``, ``3/4``.

    >>> last_number("It costs $1,234.50."), last_number("not 5 but -3."), last_number("so x-3 = 4/5")
    ('1234.50', '-3', '4/5')
    >>> last_number("Pages 10-12 of 3,2"), last_number("no digits")
    ('2', None)
    """
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace("\u2212", "-") if numbers else None


def _bare_formula(text: str) -> str | None:
    """``text`` stripped if it reads as a formula rather than prose (no words outside LaTeX commands).

    >>> _bare_formula(" \\\\frac{1}{2} "), _bare_formula("x = 3"), _bare_formula("18 apples")
    ('\\\\frac{1}{2}', 'x = 3', None)
    >>> _bare_formula("5 \\\\text{cm}"), _bare_formula("  ")
    (None, None)
    """
    text = text.strip()
    if not text or len(text) > 200 or _WORD.search(_LATEX_COMMAND.sub(" ", text)):
        return None
    return text


def closed_answer(completion: str) -> bool:
    """Whether a response already holds a finished final answer after all its thinking: a closed ``<answer>``
    block, a complete ``\\boxed{}``, or a closed code fence. A reply cut at the length limit is judged only if
    it has one; otherwise the last number of unfinished text would pass for its answer.

    >>> closed_answer("<think>a</think>So \\\\boxed{20}"), closed_answer("...120 cups of feed are needed to feed 20")
    (True, False)
    >>> closed_answer("<answer>4</answer>"), closed_answer("<think>x</think>```python\\nf()\\n```"), closed_answer("")
    (True, True, False)
    """
    span, is_answer_block = final_span(completion)
    return is_answer_block or extract_boxed(span) is not None or span.count("```") >= 2


def extract_answer(completion: str) -> str | None:
    """The final answer of a response as a string, or None if it gives none.

    The last non-empty ``\\boxed{}`` of the final span; else a whole ``<answer>`` block that is a bare
    formula; else the last number of the final span.

    >>> extract_answer("<think>\\\\boxed{1}</think>I get \\\\boxed{2} and then \\\\boxed{3}.")
    '3'
    >>> extract_answer("<answer>\\\\frac{1}{2}</answer>"), extract_answer("<answer>It is 18 dollars.</answer>")
    ('\\\\frac{1}{2}', '18')
    >>> extract_answer("<think>The answer is 12</think>I don't know."), extract_answer("#### 1,000")
    (None, '1000')
    """
    span, is_answer_block = final_span(completion)
    boxed = extract_boxed(span)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    formula = _bare_formula(span) if is_answer_block else None
    return formula if formula is not None else last_number(span)


def score_answer(completion: str, reference: str, timeout: float = 5.0) -> float | None:
    """1.0 if the response's final answer equals ``reference`` mathematically, 0.0 if not, None if
    there is no reference to judge against. Numbers compare in-process; the rest goes to math-verify.

    >>> score_answer("<think>…</think><answer>1,000</answer>", "1000"), score_answer("\\\\boxed{0.5}", "\\\\frac12")
    (1.0, 1.0)
    >>> score_answer("The answer is 7", "8"), score_answer("7", "  ")
    (0.0, None)
    """
    reference = str(reference).strip()
    if not reference:
        return None
    predicted = extract_answer(completion)
    if predicted is None:
        return 0.0
    return 1.0 if verify_math(reference, predicted, timeout=timeout) else 0.0
