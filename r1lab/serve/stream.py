"""Turning sampled tokens into OpenAI deltas: safe incremental text, then reasoning vs content.

:class:`TextStream` decodes a growing token list and hands out only text that can no longer change: it
holds back a trailing replacement character (half of a multi-byte character) and any tail that could be
the start of a stop string. :class:`ReasoningSplitter` routes text to ``reasoning_content`` until the
first ``</think>`` and to ``content`` after it, holding back a tail that could be the start of the tag, so
a ``</think>`` split across chunks is still found. The non-streamed reply runs the same classes over the
whole text at once, so streamed pieces always concatenate to exactly the non-streamed message.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``.

    >>> _partial_suffix("abc</th", "</think>"), _partial_suffix("abc", "</think>"), _partial_suffix("<", "</think>")
    (4, 0, 1)
    """
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


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
            safe -= max((_partial_suffix(text[:safe], s) for s in self.stop), default=0)
        delta = text[self.sent:max(self.sent, safe)]
        self.sent += len(delta)
        return delta

    def finish(self) -> str:
        text = self._text()
        delta = text[self.sent:]
        self.sent = len(text)
        return delta


class ReasoningSplitter:
    """``feed(text) -> (reasoning, content)`` deltas; ``finish()`` flushes. ``thinking=True`` when the prompt
    already opened the think block (R1's ``<think>\\n`` prefill); otherwise a reply that begins with ``<think>``
    opens it, and one that does not is all content."""

    def __init__(self, thinking: bool = False):
        self.state = "reasoning" if thinking else "start"
        self.buffer = ""
        self.content_started = False
        self.reasoning_started = False

    def feed(self, text: str) -> tuple[str, str]:
        self.buffer += text
        reasoning, content = "", ""
        while True:
            if self.state == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(OPEN):
                    self.buffer, self.state = stripped[len(OPEN):], "reasoning"
                elif OPEN.startswith(stripped):  # maybe "<thi" so far: wait
                    return reasoning, content
                else:
                    self.state = "content"
                continue
            if self.state == "reasoning":
                if not self.reasoning_started:  # drop the newline(s) after <think>
                    self.buffer = self.buffer.lstrip()
                    if not self.buffer:
                        return reasoning, content
                    self.reasoning_started = True
                index = self.buffer.find(CLOSE)
                if index >= 0:
                    reasoning += self.buffer[:index]
                    self.buffer, self.state = self.buffer[index + len(CLOSE):], "content"
                    continue
                keep = _partial_suffix(self.buffer, CLOSE)
                reasoning += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return reasoning, content
            # content: drop the whitespace between </think> and the answer
            if not self.content_started:
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    return reasoning, content
                self.content_started = True
            content += self.buffer
            self.buffer = ""
            return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Flush what was held back: an unfinished ``</thi`` stays reasoning."""
        rest, self.buffer = self.buffer, ""
        if self.state == "reasoning":
            return rest, ""
        if self.state == "start":
            return "", rest if rest.strip() else ""
        return "", rest if self.content_started else rest.lstrip()


def split_whole(text: str, thinking: bool) -> tuple[str, str]:
    """The non-streamed split: the same splitter over the whole text.

    >>> split_whole("2+3 is 5.\\n</think>\\n\\nIt is 5.", thinking=True)
    ('2+3 is 5.\\n', 'It is 5.')
    >>> split_whole("<think>hm</think>5", False), split_whole("Hello", False), split_whole("still thinking", True)
    (('hm', '5'), ('', 'Hello'), ('still thinking', ''))
    """
    splitter = ReasoningSplitter(thinking)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.finish()
    return r1 + r2, c1 + c2
