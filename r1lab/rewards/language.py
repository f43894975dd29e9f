"""Language-consistency reward: how much of the reasoning is written in the prompt's language.

R1 stage 2 (paper section 2.3.2) adds "a language consistency reward during RL training, calculated as
the proportion of target language words in the CoT" to stop the chain of thought mixing languages.
The paper does not say how words are found; here a word is decided by its script alone:

- a run of letters of one script is one word (``don't`` is two words, ``double-check`` two);
- scripts written without spaces (Chinese ideographs, Japanese kana) count one word per character;
- numbers, punctuation and maths (``$…$``, ``\\(…\\)``, ``\\[…\\]``, TeX commands, ASCII runs joined by
  ``= + * / ^ < >``, tokens glued to digits such as ``x2``, a lone Greek letter) are not words and
  count for neither side.

Simplified: no language identification, so French reasoning passes for English (both are Latin script),
and a lone variable written without math markup (``x``) counts as a Latin word.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from r1lab.chat import split_reasoning
from r1lab.rewards.registry import register

_RANGES = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u052f",
    "arabic": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f",
    "kana": "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f",
}
_SCRIPT = {name: re.compile(f"[{chars}]+") for name, chars in _RANGES.items()}
_PER_CHARACTER = re.compile(f"[{_RANGES['han']}{_RANGES['kana']}]")  # one word per character

_LATIN_LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs",
                    "ro", "tr", "id", "vi")
#: language code -> the scripts whose words count as that language
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: frozenset({"latin"}) for code in _LATIN_LANGUAGES},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul"}),
    "ru": frozenset({"cyrillic"}),
    "ar": frozenset({"arabic"}),
}

_MATH = re.compile(
    r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]"                    # delimited TeX
    r"|\\[A-Za-z]+(?:\{[^{}]*\})*"                                         # \frac{a}{b}
    r"|(?<!\w)[\u0370-\u03ff](?!\w)"                                       # a lone Greek letter
    r"|(?a:[\w.()]*(?:\s*[=+*/^<>]\s*[\w.()]+)+)",                         # a+b=c, x^2, f(x)=1
    re.DOTALL,
)
_TAG = re.compile(r"</?(?:think|answer)>")


def reasoning_text(completion: str) -> str:
    """The think block's content (:func:`r1lab.chat.split_reasoning`) up to a first ``<answer>``; without a
    think block, the text before ``<answer>``. Stray tags become spaces.

    An unclosed ``<think>`` (a truncated response) runs to ``<answer>`` or the end.

    >>> reasoning_text("<think>\\nadd them</think><answer>5</answer>")
    'add them'
    >>> reasoning_text("add them <answer>5</answer>"), reasoning_text("<think>\\nadd them, truncated")
    ('add them ', 'add them, truncated')
    >>> reasoning_text("Sure. <think>add them</think><answer>5</answer>")
    'add them'
    """
    reasoning, content = split_reasoning(completion[max(0, completion.find("<think>")):])  # text before it is not CoT
    if "<think>" not in completion and "</think>" not in completion:  # no think block
        reasoning = content
    return _TAG.sub(" ", reasoning.split("<answer>", 1)[0])


def words_by_script(text: str) -> list[str]:
    """The script of each word of ``text`` (``"other"`` for letters of any other script).

    >>> words_by_script("Add them: $2+3$ 相加, x2 Ответ")
    ['latin', 'latin', 'han', 'han', 'cyrillic']
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")  # Arabic vowel marks etc.
    text = _MATH.sub(" ", text)
    scripts = []
    for token in re.findall(r"\w+", text):
        for piece in re.split(f"({_PER_CHARACTER.pattern})", token):
            if _PER_CHARACTER.fullmatch(piece):
                scripts.append("han" if _SCRIPT["han"].fullmatch(piece) else "kana")
            elif piece and not any(ch.isnumeric() or ch == "_" for ch in piece):  # x2, 3rd, a_1
                scripts.extend(_split_scripts(piece))
    return scripts


def _split_scripts(run: str) -> list[str]:
    """The scripts of a run of letters, one word per same-script stretch (``helloпривет``: two)."""
    scripts = (next((n for n, p in _SCRIPT.items() if p.fullmatch(ch)), "other") for ch in run)
    return [name for name, _ in itertools.groupby(scripts)]


@register("language_consistency", needs=("language",),
          help="share of the reasoning's words in --language (R1 stage 2)")
def language_consistency(completion: str, *, language: str = "en", **_) -> float | None:
    """Share of the reasoning's words in ``language``'s script; None if the reasoning has no words.

    ``language`` is a code of ``LANGUAGE_SCRIPTS`` (a region suffix such as ``zh-CN`` is ignored).

    >>> language_consistency("<think>\\nFirst add the numbers: 2+3=5.\\n</think><answer>5</answer>")
    1.0
    >>> language_consistency("<think>\\nadd them 相加\\n</think><answer>5</answer>", language="en")
    0.5
    >>> language_consistency("<think>\\n先相加\\n</think><answer>5</answer>", language="zh")
    1.0
    """
    code = str(language).lower().replace("_", "-").split("-")[0]
    if code not in LANGUAGE_SCRIPTS:
        supported = ", ".join(sorted(LANGUAGE_SCRIPTS))
        raise ValueError(f"unsupported language {language!r}; supported: {supported}")
    scripts = words_by_script(reasoning_text(completion))
    if not scripts:
        return None
    target = LANGUAGE_SCRIPTS[code]
    return sum(s in target for s in scripts) / len(scripts)
