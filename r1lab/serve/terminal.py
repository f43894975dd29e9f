"""``r1lab chat``: the server's conversation in a terminal, in-process, with the reasoning dimmed.

The same rendering (system folded in, earlier reasoning not sent back), streaming (:class:`TextStream`,
:class:`ReasoningSplitter`) and engine as the server, without HTTP.

Keys and commands, as in a shell or the Python REPL. Ctrl-C during a reply stops that reply only: the engine
ends it at the next token (a second Ctrl-C gives up on it at once, say during a long prompt), and the unfinished
turn, question and partial answer, is left out of the conversation, which goes on as if it had not been asked.
Ctrl-C at the prompt clears the line. Ctrl-D, ``/quit`` or ``/exit`` ends the chat, ``/reset`` starts a new
conversation, ``/help`` lists these; a line whose first word is a slash and letters is a command and never goes
to the model (``/etc/hosts?`` does). On a terminal, ``readline`` gives line editing and a history that is kept
in ``~/.cache/r1lab/chat/history`` (under ``$R1LAB_CACHE``), in a folder only its owner can read.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from r1lab.chat import ReasoningSplitter
from r1lab.engine import SamplingParams
from r1lab.files import write_atomic
from r1lab.models import cache_dir
from r1lab.serve.stream import TextStream

DIM, RESET = "\x1b[2m", "\x1b[0m"
HELP = ("/reset starts a new conversation, /quit or /exit (or Ctrl-D) ends the chat, /help shows this; "
        "Ctrl-C stops a reply, or clears the line")
HISTORY_LINES = 1000


def reply(engine, messages: list[dict], template: str, params: SamplingParams, write=None) -> tuple[str, str]:
    """Generate one answer to ``messages``, writing reasoning (dimmed) and content as they come;
    returns ``(reasoning, content)``, or raises KeyboardInterrupt once Ctrl-C has stopped the reply."""
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    prompt = engine.prompt(messages, template)
    stream = TextStream(engine.tokenizer, tuple(params.stop))
    splitter = ReasoningSplitter(prompt.thinking)
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

    stop = threading.Event()

    def on_token(prompt: int, sample: int, token: int) -> bool:
        show(*splitter.feed(stream.push(token)))
        return not stop.is_set()  # False ends the generation

    with _ctrl_c_sets(stop):
        engine.generate([prompt], params, on_token=on_token)
    if stop.is_set():
        raise KeyboardInterrupt
    show(*splitter.finish(stream.finish()))
    write("\n")
    return parts["reasoning"], parts["content"]


@contextmanager
def _ctrl_c_sets(stop: threading.Event):
    """Within: the first Ctrl-C sets ``stop`` (the engine ends the reply cleanly at its next token), a second
    raises KeyboardInterrupt at once. Signal handlers belong to the main thread; elsewhere Ctrl-C is as ever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def chat_loop(engine, cfg, read=input) -> None:
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_tokens)
    start: list[dict] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(start)
    keep_history = _line_editing() if read is input and sys.stdin.isatty() else None
    print(f"r1lab chat with {cfg.model} (reasoning dimmed). /help for commands; Ctrl-D or /quit ends it.")
    try:
        while True:
            print()
            try:
                text = read("> ").strip()
            except KeyboardInterrupt:  # as in a shell: the line is dropped, the chat goes on
                print()
                continue
            except EOFError:
                print()
                return
            if not text:
                continue
            word = text.split()[0]
            if not re.fullmatch(r"/[A-Za-z]+", word):
                turn = messages + [{"role": "user", "content": text}]
                try:
                    _, content = reply(engine, turn, cfg.template, params)
                except KeyboardInterrupt:
                    print(f"{RESET}\n(stopped; that question and the partial reply are left out of the conversation)")
                    continue
                messages = turn + [{"role": "assistant", "content": content}]
            elif word in ("/quit", "/exit"):
                return
            elif word == "/reset":
                messages = list(start)
                print("(a new conversation)")
            elif word == "/help":
                print(HELP)
            else:
                print(f"unknown command {word}: {HELP}")
    finally:
        if keep_history:
            keep_history()


def _line_editing():
    """Line editing and history for ``input()`` through ``readline`` (where Python has it), with the history of
    earlier sessions loaded; returns the function that saves it."""
    try:
        import readline
    except ImportError:
        return None
    folder = cache_dir() / "chat"
    for line in load_history(folder):
        readline.add_history(line)
    return lambda: save_history(folder, [readline.get_history_item(i)
                                         for i in range(1, readline.get_current_history_length() + 1)])


def load_history(folder: Path) -> list[str]:
    try:
        return (folder / "history").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def save_history(folder: Path, lines: list[str]) -> None:
    """The last :data:`HISTORY_LINES` lines, atomically, in a folder only the user can read (what was typed may
    be private). A history that cannot be written is not worth an error at exit."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        write_atomic(folder / "history", "".join(f"{line}\n" for line in lines[-HISTORY_LINES:] if line))
    except OSError:
        pass
