"""``r1lab chat``: the server's conversation in a terminal, in-process, with the reasoning dimmed.

The same rendering (system folded in, earlier reasoning not sent back), streaming (:class:`TextStream`,
:class:`ReasoningSplitter`) and engine as the server, without HTTP. Empty line or Ctrl-D ends it;
``/reset`` starts a new conversation.
"""

from __future__ import annotations

import sys

from r1lab.chat import render
from r1lab.engine import SamplingParams
from r1lab.serve.stream import ReasoningSplitter, TextStream

DIM, RESET = "\x1b[2m", "\x1b[0m"


def reply(engine, messages: list[dict], template: str, params: SamplingParams, write=None) -> tuple[str, str]:
    """Generate one answer to ``messages``, writing reasoning (dimmed) and content as they come;
    returns ``(reasoning, content)``."""
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    rendered = render(messages, template, engine.tokenizer)
    stream = TextStream(engine.tokenizer, tuple(params.stop))
    splitter = ReasoningSplitter(rendered.thinking)
    parts = {"reasoning": "", "content": ""}

    def show(reasoning: str, content: str) -> None:
        if reasoning:
            write(f"{DIM}{reasoning}{RESET}")
            parts["reasoning"] += reasoning
        if content:
            if parts["reasoning"] and not parts["content"]:
                write("\n\n")
            write(content)
            parts["content"] += content

    def on_token(prompt: int, sample: int, token: int) -> bool:
        show(*splitter.feed(stream.push(token)))
        return True

    engine.generate([engine.encode(rendered.text)], params, on_token=on_token)
    show(*splitter.feed(stream.finish()))
    show(*splitter.finish())
    write("\n")
    return parts["reasoning"], parts["content"]


def chat_loop(engine, cfg, read=input) -> None:
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_tokens)
    messages: list[dict] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    print(f"r1lab chat with {cfg.model} (reasoning dimmed). Empty line or Ctrl-D quits; /reset starts over.")
    while True:
        try:
            text = read("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            return
        if text == "/reset":
            messages = messages[:1] if cfg.system else []
            continue
        messages.append({"role": "user", "content": text})
        reasoning, content = reply(engine, messages, cfg.template, params)
        messages.append({"role": "assistant", "content": content})
