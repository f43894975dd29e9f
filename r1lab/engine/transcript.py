"""The host side of decoding: what each sampled row has produced so far, and when it ends.

Both decode paths of :class:`r1lab.engine.TorchEngine` hand their tokens here, so they end rows by the same rules,
checked in this order for every token: a stop token id or a stop string (looked for in the decoded tail) ends
the row with finish reason "stop", the token kept; otherwise ``on_token`` sees the token, and False from it ends
the row with "abort". Tokens a row samples after it ended are never added. A row that runs out of budget ends
with "length".
"""

from __future__ import annotations

from collections.abc import Sequence

from r1lab.engine.base import Completion, OnToken, SamplingParams


class Transcript:
    def __init__(self, tokenizer, prompts: int, params: SamplingParams, stop_ids: set[int], offset: int = 0,
                 on_token: OnToken | None = None):
        rows = prompts * params.n
        self.tokenizer, self.params, self.stop_ids = tokenizer, params, stop_ids
        self.offset, self.on_token = offset, on_token
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.finish: list[str | None] = [None] * rows
        self.tail_tokens = max((len(s) for s in params.stop), default=0) + 2  # tokens decoded to find a stop

    def ended(self, row: int) -> bool:
        return self.finish[row] is not None

    def add(self, row: int, token: int, logprob: float) -> bool:
        """Append one token to ``row``; False once the row has ended (its finish reason is then set)."""
        return self._add(row, token, logprob, bool(self.params.stop))

    def add_block(self, row: int, tokens: Sequence[int], logprobs: Sequence[float]) -> bool:
        """Append consecutive tokens to ``row`` until it ends (the rest are dropped); False once it has ended.
        Stop strings are looked for once in the text of the whole block (with the tail before it) and token by
        token only where that text holds one, so a block costs one decode instead of one per token."""
        check = bool(self.params.stop) and self._text_hits_stop(self.tokens[row][-self.tail_tokens:] + list(tokens))
        return all(self._add(row, token, logprob, check) for token, logprob in zip(tokens, logprobs))

    def _add(self, row: int, token: int, logprob: float, check_stop_strings: bool) -> bool:
        self.tokens[row].append(token)
        self.logprobs[row].append(logprob)
        if token in self.stop_ids or (check_stop_strings
                                      and self._text_hits_stop(self.tokens[row][-self.tail_tokens:])):
            self.finish[row] = "stop"
        elif self.on_token is not None and self.on_token(self.offset + row // self.params.n, row % self.params.n,
                                                         token) is False:
            self.finish[row] = "abort"
        else:
            return True
        return False

    def _text_hits_stop(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in tail for s in self.params.stop)

    def completions(self) -> list[list[Completion]]:
        """Result[i]: the ``n`` completions of prompt i of this batch, in sample order."""
        n = self.params.n

        def completion(row: int) -> Completion:
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            return Completion(prompt_index=self.offset + row // n, token_ids=self.tokens[row],
                              logprobs=self.logprobs[row], finish_reason=self.finish[row] or "length",
                              text=cut_at_stop(text, self.params.stop, self.params.include_stop_str_in_output))

        return [[completion(row) for row in range(i * n, (i + 1) * n)] for i in range(len(self.tokens) // n)]


def cut_at_stop(text: str, stop: Sequence[str], include: bool) -> str:
    """``text`` up to the first stop string in it (with the stop string itself when ``include``)."""
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text
    index, s = min(hits)
    return text[:index + len(s)] if include else text[:index]
