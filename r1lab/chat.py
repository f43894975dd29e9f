"""Chat templates: how a conversation becomes the prompt text the policy continues.

Three templates, chosen by name:

- ``r1zero``: the paper's Table 1 text. The assistant reasons in ``<think> </think>`` and answers in
  ``<answer> </answer>``; no special tokens, so it suits base models.
- ``r1``: DeepSeek-R1's own format (``<｜User｜>…<｜Assistant｜>``) with the assistant turn prefilled with
  ``<think>\\n``, as DeepSeek recommends so the model never skips its reasoning.
- ``native``: the model's own chat template (``tokenizer.apply_chat_template``). ``native-zero`` puts the
  R1-Zero instruction into the user turn of the model's own template: the practical choice for small
  instruct models, which ignore a bare-text prompt. It prefills nothing by default; ``prefill="<think>\\n"``
  forces the think block (SmolLM2-135M then never closes it, so it gets no reward: measured 0/64).

R1 usage rules applied to every template: a system message is folded into the first user turn (R1 was not
trained with system prompts), and reasoning in earlier assistant turns is not sent back.

:func:`render` returns the prompt text *and* the prefill (the forced start of the assistant turn, already at
the end of the prompt text). Rewards judge ``prefill + generated text``, the whole assistant response.

This module also owns the tags' meaning, the one reasoning/answer split everyone uses:
:class:`ReasoningSplitter` (streamed, chunk by chunk) and :func:`split_reasoning` (the same over a whole
response) separate the think block from the reply; :func:`final_answer_span` finds the part of a response
that may hold its final answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

R1ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)
THINK_PREFILL = "<think>\n"
TEMPLATES = ("r1zero", "r1", "native", "native-zero")
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclass(frozen=True)
class Rendered:
    text: str  # the full prompt, ending with the prefill
    prefill: str  # the forced start of the assistant's reply ("" if none), with a <think> the template itself opens

    @property
    def thinking(self) -> bool:
        """The prompt opens the think block (R1's prefill, or a model template that ends in ``<think>``), so the
        reply starts as reasoning."""
        return self.text.rstrip().endswith("<think>")


def prepare_messages(messages: list[dict]) -> list[dict]:
    """Apply R1's usage rules: check roles, fold the system prompt into the first user turn, drop old reasoning.

    >>> prepare_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    [{'role': 'user', 'content': 'Be brief.\\n\\nHi'}]
    >>> prepare_messages([{"role": "user", "content": "1+1?"},
    ...                   {"role": "assistant", "content": "<think>easy</think>2"},
    ...                   {"role": "user", "content": "and 2+2?"}])[1]
    {'role': 'assistant', 'content': '2'}
    """
    system, out = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        role, content = message["role"], message["content"]
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        if role == "system":
            system.append(content)
        elif role == "user":
            out.append({"role": "user", "content": content})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _THINK_BLOCK.sub("", content).strip()})
        else:
            raise ValueError(f"message {i}: unknown role {role!r} (use system, user or assistant)")
    if system:
        first_user = next((m for m in out if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError("a system message needs a user message to fold into")
        first_user["content"] = "\n\n".join(system + [first_user["content"]])
    if not out or out[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    return out


def render(messages: list[dict], template: str, tokenizer=None, prefill: str | None = None) -> Rendered:
    """Turn a conversation into prompt text for ``template``; ``prefill`` overrides the template's own.

    >>> r = render([{"role": "user", "content": "What is 2+3?"}], "r1zero")
    >>> r.text.endswith("User: What is 2+3?. Assistant:"), r.prefill
    (True, '')
    >>> render([{"role": "user", "content": "2+3?"}], "r1").text
    '<｜begin▁of▁sentence｜><｜User｜>2+3?<｜Assistant｜><think>\\n'
    """
    messages = prepare_messages(messages)
    if template == "r1zero":
        text, default_prefill = _r1zero(messages), ""
    elif template == "r1":
        text, default_prefill = _r1(messages), THINK_PREFILL
    elif template in ("native", "native-zero"):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template {template!r} needs a tokenizer with a chat template; "
                             "use template=r1zero or template=r1 for models without one")
        if template == "native-zero":
            messages = with_zero_instruction(messages)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        default_prefill = ""
    else:
        raise ValueError(f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}")
    prefill = default_prefill if prefill is None else prefill
    opened = re.search(r"<think>\s*$", text) if template in ("native", "native-zero") else None
    opener = text[opened.start():] if opened else ""  # e.g. DeepSeek-R1-Distill's template ends with <think>\n
    return Rendered(text=text + prefill, prefill=opener + prefill)


def with_zero_instruction(messages: list[dict]) -> list[dict]:
    """``native-zero``'s conversation: the R1-Zero instruction before the last user turn's text (for a model's own
    chat template, here or in a server).

    >>> text = with_zero_instruction([{"role": "user", "content": "2+3?"}])[0]["content"]
    >>> text.startswith("A conversation between User and Assistant."), text.endswith("</answer>.\\n\\n2+3?")
    (True, True)
    """
    return messages[:-1] + [{"role": "user", "content": f"{R1ZERO_INSTRUCTION}\n\n{messages[-1]['content']}"}]


def _r1zero(messages: list[dict]) -> str:
    turns = [f"User: {m['content']}." if m["role"] == "user" else f"Assistant: {m['content']}" for m in messages]
    return f"{R1ZERO_INSTRUCTION} " + " ".join(turns) + " Assistant:"


def _r1(messages: list[dict]) -> str:
    turns = [f"<｜User｜>{m['content']}" if m["role"] == "user"
             else f"<｜Assistant｜>{m['content']}<｜end▁of▁sentence｜>" for m in messages]
    return "<｜begin▁of▁sentence｜>" + "".join(turns) + "<｜Assistant｜>"


OPEN, CLOSE = "<think>", "</think>"


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``.

    >>> partial_suffix("abc</th", "</think>"), partial_suffix("abc", "</think>"), partial_suffix("<", "</think>")
    (4, 0, 1)
    """
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """``feed(text) -> (reasoning, content)`` deltas; ``finish()`` flushes. ``thinking=True`` when the prompt
    already opened the think block (R1's ``<think>\\n`` prefill); otherwise a reply that begins with ``<think>``
    opens it, and one that does not is all content.

    Text goes to reasoning until the first ``</think>`` and to content after it; a tail that could be the start
    of the tag is held back, so a ``</think>`` split across chunks is still found. Any chunking of a text gives
    the same split as the whole text at once (:func:`split_reasoning`)."""

    def __init__(self, thinking: bool = False):
        self.state = "reasoning" if thinking else "start"
        self.buffer = ""
        self.started: set[str] = set()  # the parts ("reasoning", "content") whose first text has come

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
            if self.state not in self.started:  # drop the newline(s) after <think>, the whitespace after </think>
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    return reasoning, content
                self.started.add(self.state)
            if self.state == "reasoning":
                index = self.buffer.find(CLOSE)
                if index >= 0:
                    reasoning += self.buffer[:index]
                    self.buffer, self.state = self.buffer[index + len(CLOSE):], "content"
                    continue
                keep = partial_suffix(self.buffer, CLOSE)
                reasoning += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return reasoning, content
            content += self.buffer
            self.buffer = ""
            return reasoning, content

    def finish(self, text: str = "") -> tuple[str, str]:
        """Feed the last ``text``, then flush what was held back: an unfinished ``</thi`` stays reasoning."""
        reasoning, content = self.feed(text)
        rest, self.buffer = self.buffer, ""  # after feed(), the content part holds nothing back
        if self.state == "reasoning":
            return reasoning + rest, content
        return reasoning, content + (rest if rest.strip() else "")  # at the start: a bare "<thi" is content


def split_reasoning(response: str, thinking: bool | None = None) -> tuple[str, str]:
    """Split an assistant response into ``(reasoning, content)``: :class:`ReasoningSplitter` over the whole text,
    so the split is the same as the streamed one.

    ``thinking=True`` when the prompt opened the think block (the response starts inside it), ``False`` when it
    did not. ``None`` infers it: a response that starts with ``<think>`` opens the block itself, one with no
    opening tag but a ``</think>`` was prefilled, and one with neither is all content. Reasoning runs to the
    first ``</think>``; a think block never closed is all reasoning.

    >>> split_reasoning("<think>\\n2+3 is 5\\n</think>\\n\\nThe answer is 5.")
    ('2+3 is 5\\n', 'The answer is 5.')
    >>> split_reasoning("<think>\\nstill going"), split_reasoning("Hello!")
    (('still going', ''), ('', 'Hello!'))
    >>> split_reasoning("2+3 is 5.</think>It is 5."), split_reasoning("a stray </think> tag", thinking=False)
    (('2+3 is 5.', 'It is 5.'), ('', 'a stray </think> tag'))
    """
    if thinking is None:
        thinking = not response.lstrip().startswith(OPEN) and CLOSE in response
    return ReasoningSplitter(thinking).finish(response)


def final_answer_span(completion: str) -> str:
    """The part of a response that may hold its final answer: the last ``<answer>…</answer>`` block after the
    thinking, else the text after the last ``</think>``, else the whole response.

    Text inside the thinking never counts, and a response whose thinking is still open (cut off at
    the length limit) has no final answer at all. It reads after the *last* ``</think>``, where
    :func:`split_reasoning` (what a reader is shown) splits at the first: a verifier trusts nothing before the end
    of all thinking.

    >>> final_answer_span("<think>maybe 3</think> so <answer> 4 </answer>")
    ' 4 '
    >>> final_answer_span("<think>\\n<answer>3</answer></think> The answer is 5.")
    ' The answer is 5.'
    >>> final_answer_span("<answer>1</answer><answer>2</answer>"), final_answer_span("<think>still 7")
    ('2', '')
    >>> final_answer_span("Plain 6")
    'Plain 6'
    """
    return final_span(completion)[0]


def final_span(completion: str) -> tuple[str, bool]:
    """:func:`final_answer_span` and whether it is an ``<answer>`` block.

    >>> final_span("<think>a</think><answer>5</answer>"), final_span("<think>a</think>5")
    (('5', True), ('5', False))
    """
    if CLOSE in completion:
        completion = completion.rsplit(CLOSE, 1)[1]
    elif OPEN in completion:
        return "", False
    last, start = None, completion.find("<answer>")
    while start >= 0:  # the last <answer>...</answer> pair, in one linear scan (a lazy regex is quadratic here)
        end = completion.find("</answer>", start + 8)
        if end < 0:
            break
        last, start = completion[start + 8:end], completion.find("<answer>", end + 9)
    return (last, True) if last is not None else (completion, False)
