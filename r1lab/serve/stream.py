"""Turning sampled tokens into OpenAI deltas: safe incremental text, then reasoning vs content.

:class:`TextStream` decodes a growing token list and hands out only text that can no longer change: it
holds back a trailing replacement character (half of a multi-byte character) and any tail that could be
the start of a stop string. :class:`r1lab.chat.ReasoningSplitter` then routes that text to
``reasoning_content`` until the first ``</think>`` and to ``content`` after it. The non-streamed reply runs
the same classes, so streamed pieces always concatenate to exactly the non-streamed message, which is also
what :func:`r1lab.chat.split_reasoning` gives for the whole text.
"""

from __future__ import annotations

from r1lab.chat import partial_suffix


class TextStream:
    """Incremental detokenization with stop strings: ``push(token) -> new text``, ``finish() -> the rest``."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters handed out
        self.stopped = False

    def _text(self) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.stopped = True
            text = text[:min(hits)]
        return text

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.tokens.append(token)
        text = self._text()
        safe = len(text)
        if text.endswith("\ufffd"):
            safe -= 1
        if not self.stopped:
            safe -= max((partial_suffix(text[:safe], s) for s in self.stop), default=0)
        delta = text[self.sent:max(self.sent, safe)]
        self.sent += len(delta)
        return delta

    def finish(self) -> str:
        text = self._text()
        delta = text[self.sent:]
        self.sent = len(text)
        return delta
