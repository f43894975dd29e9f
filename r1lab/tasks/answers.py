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
from r1lab.console import log
from r1lab.rewards.math import plain_numbers, verify_math

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.\-\u2212])[-\u2212])?"  # a minus that is a sign, not "pages 10-12" or "x-3"
    r"(?<![\w./])"  # not the tail of a word or of a longer number
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?!\d|\.\d))?|\.\d+)"  # a/b. ends a sentence; .5 is 0.5
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


def extract_boxed(text: str, nonempty: bool = False) -> str | None:
    """The content of the last complete ``\\boxed{…}`` (or ``\\fbox{…}``), braces balanced; with ``nonempty``, the
    last complete one that holds more than blanks (a repeated instruction's ``\\boxed{}`` is no answer).

    >>> extract_boxed("first \\\\boxed{1}, then \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_boxed("\\\\fbox{\\\\{1, 2\\\\}}"), extract_boxed("no box"), extract_boxed("\\\\boxed{3} \\\\boxed{4")
    ('\\\\{1, 2\\\\}', None, '3')
    >>> extract_boxed("\\\\boxed{3}, in \\\\boxed{}"), extract_boxed("\\\\boxed{3}, in \\\\boxed{ }", nonempty=True)
    ('', '3')
    """
    found = _last_box(text, nonempty)
    return found[0] if found is not None else None


def _last_box(text: str, nonempty: bool = False) -> tuple[str, int] | None:
    """The content of the last complete box and the index just past its closing brace."""
    starts = sorted(m.end() - 1 for opener in _BOX_OPENERS for m in re.finditer(re.escape(opener), text))  # their "{"
    for start in reversed(starts):
        content = _box_content(text, start)
        if content is not None and (content.strip() or not nonempty):
            return content, start + len(content) + 2
    return None


def last_number(text: str) -> str | None:
    """The last whole number in ``text``, never a piece of one: thousands separators removed (``1,234``, ``14{,}916``,
    ``1\\,000``, ``1 000``), a LaTeX fraction of whole numbers read as ``a/b``: ``-3``, ``1234``, ``2.5``, ``3/4``.

    >>> last_number("It costs $1,234.50."), last_number("not 5 but -3."), last_number("so x-3 = 4/5")
    ('1234.50', '-3', '4/5')
    >>> last_number("Pages 10-12 of 3,2"), last_number("no digits")
    ('2', None)
    >>> last_number("so $\\\\frac{1}{9}$"), last_number("it is 2/3."), last_number("$10,\\\\!455$")
    ('1/9', '2/3', '10455')
    >>> last_number("p = .75"), last_number("p = -.75")
    ('0.75', '-0.75')
    >>> last_number("x = $\\\\frac{1+\\\\sqrt5}{2}$"), last_number("3 or \\\\frac{a}{2}")  # no piece of a formula
    (None, '3')
    """
    numbers = _NUMBER.findall(_without_fractions(plain_numbers(text)))
    if not numbers:
        return None
    number = numbers[-1].replace(",", "").replace("\u2212", "-")
    return number.replace(".", "0.", 1) if number.lstrip("-").startswith(".") else number


def _without_fractions(text: str) -> str:
    """``text`` with each LaTeX fraction that is not a plain ``a/b`` (one with a formula in it) blanked out: a number
    inside one is a piece of it, never the answer."""
    kept, i = [], 0
    for match in re.finditer(r"\\[dtc]?frac(?=\{)", text):
        numerator = _box_content(text, match.end()) if match.start() >= i else None
        after = match.end() + len(numerator) + 2 if numerator is not None else -1
        denominator = _box_content(text, after) if 0 < after < len(text) and text[after] == "{" else None
        if denominator is not None:
            kept.append(text[i:match.start()] + " ")
            i = after + len(denominator) + 2
    return "".join(kept) + text[i:]


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


def closed_part(completion: str, code: bool = False) -> str | None:
    """The response up to the end of its last finished final answer (after all its thinking), or None if it has
    none: a closed ``<answer>`` block or a complete, non-empty ``\\boxed{}``; for code (``code``), also a closed
    code fence. A reply cut at the length limit is judged on this part only, so neither the last number of its
    unfinished text nor an empty ``\\boxed{}`` it copied from the instruction passes for its answer.

    >>> closed_part("<think>a</think>So \\\\boxed{20}. Next, 35"), closed_part("...120 cups are needed to feed 20")
    ('<think>a</think>So \\\\boxed{20}', None)
    >>> closed_part("put your answer within \\\\boxed{} so 20"), closed_part("<answer>4</answer> and 5")
    (None, '<answer>4</answer>')
    >>> closed_part("```python\\nf()\\n``` and", code=True), closed_part("```\\n3 * 6 = 18\\n``` so 18")
    ('```python\\nf()\\n```', None)
    """
    span, is_answer_block = final_span(completion)
    if is_answer_block:
        block = f"<answer>{span}</answer>"
        return completion[:completion.rfind(block) + len(block)] if span.strip() else None
    start = len(completion) - len(span)  # the span is the response's tail, after the last </think>
    ends = [box[1] for box in [_last_box(span, nonempty=True)] if box is not None]
    if code:
        ends += [end for end in [_last_fence_end(span)] if end is not None]
    return completion[:start + max(ends)] if ends else None


def _last_fence_end(text: str) -> int | None:
    """The index just past the closing fence of the last complete fenced code block, scanned as
    :func:`r1lab.rewards.code.extract_code` scans."""
    end, start = None, text.find("```")
    while start >= 0:
        newline = text.find("\n", start + 3)
        close = text.find("```", newline + 1) if newline >= 0 else -1
        if close < 0:
            break
        end, start = close + 3, text.find("```", close + 3)
    return end


def closed_answer(completion: str, code: bool = False) -> bool:
    """Whether a response already holds a finished final answer (:func:`closed_part`).

    >>> closed_answer("<think>a</think>So \\\\boxed{20}"), closed_answer("...120 cups of feed are needed to feed 20")
    (True, False)
    >>> closed_answer("<answer>4</answer>"), closed_answer("<think>x</think>```python\\nf()\\n```", code=True)
    (True, True)
    >>> closed_answer("Put it within \\\\boxed{}."), closed_answer("```\\nx\\n```"), closed_answer("")
    (False, False, False)
    """
    return closed_part(completion, code) is not None


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
    boxed = extract_boxed(span, nonempty=True)
    if boxed is not None:
        return boxed.strip()
    formula = _bare_formula(span) if is_answer_block else None
    return formula if formula is not None else last_number(span)


#: a word of prose: two or more letters outside LaTeX commands and their \text{...}-like groups
_TEXT_GROUP = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname|begin|end)\s*\{[^{}]*\}")
_UNREADABLE_SAID: set[str] = set()  # the references already logged as unreadable (each is said once)


def unreadable_reference(reference: str) -> bool:
    """Whether ``reference`` cannot be read as a math answer, so that nothing can be judged against it: empty, no
    letter or digit at all (``???``), or prose of two or more words (``forty two``, ``see the solution``). A
    number, a formula, a word in ``\\text{}`` or a single word (``odd``, ``Evelyn``) can be judged.

    >>> [unreadable_reference(r) for r in ("forty two", "???", "", "see the worked solution", "The answer is unknown.")]
    [True, True, True, True, True]
    >>> [unreadable_reference(r) for r in ("42", "\\\\frac{1}{2}", "x = 3", "odd", "\\\\text{(C)}")]
    [False, False, False, False, False]
    >>> unreadable_reference("\\\\text{no solution}"), unreadable_reference("N/A")  # N/A reads as a formula
    (False, False)
    """
    text = _TEXT_GROUP.sub(" ", plain_numbers(str(reference)))
    return not re.search(r"[^\W_]", text) and not _TEXT_GROUP.search(str(reference)) \
        or len(_WORD.findall(_LATEX_COMMAND.sub(" ", text))) >= 2


def score_answer(completion: str, reference: str, timeout: float = 5.0, problem: str | None = None) -> float | None:
    """1.0 if the response's final answer equals ``reference`` mathematically, 0.0 if not, None if there is no
    reference to judge against or it cannot be read as a math answer (:func:`unreadable_reference`; logged once,
    with the ``problem``'s id). Numbers compare in-process; the rest goes to math-verify.

    >>> score_answer("<think>…</think><answer>1,000</answer>", "1000"), score_answer("\\\\boxed{0.5}", "\\\\frac12")
    (1.0, 1.0)
    >>> score_answer("The answer is 7", "8"), score_answer("7", "  "), score_answer("42", "forty two")
    (0.0, None, None)
    """
    reference = str(reference).strip()
    if unreadable_reference(reference):
        if reference and reference not in _UNREADABLE_SAID:
            _UNREADABLE_SAID.add(reference)
            where = f" of problem {problem}" if problem is not None else ""
            log(f"r1lab: the reference answer{where}, {reference[:80]!r}, cannot be read as a math answer; its "
                "samples are not judged (not counted as wrong)")
        return None
    predicted = extract_answer(completion)
    if predicted is None:
        return 0.0
    return 1.0 if verify_math(reference, predicted, timeout=timeout) else 0.0
