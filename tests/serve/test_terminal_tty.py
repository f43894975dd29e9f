"""``r1lab chat`` on a real terminal (a pseudo-terminal): arrow keys edit and recall lines, Ctrl-C stops a reply
or clears the line, Ctrl-D ends the chat, and the history is there next time."""

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pty = pytest.importorskip("pty")
pytest.importorskip("readline")

TESTS = Path(__file__).parents[1]

CHILD = """
import fcntl, json, sys, termios
from types import SimpleNamespace

fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # this pseudo-terminal is our terminal: Ctrl-C on it is our SIGINT
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/serve"]
from serving import ScriptedEngine, thinking_tokenizer
from r1lab.serve.terminal import chat_loop

engine = ScriptedEngine(thinking_tokenizer(), "thinking " * 10 + "\\n</think>\\nfine", delay=float(sys.argv[3]))
real = engine.generate

def generate(ids, params, on_token=None, stream_ids=None):
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps(engine.tokenizer.decode(list(ids[0].token_ids))) + "\\n")
    return real(ids, params, on_token)

engine.generate = generate
chat_loop(engine, SimpleNamespace(model="scripted", template="native", temperature=0.6, top_p=0.95, max_tokens=512,
                                  system=None))
print("chat ended")
"""


class Terminal:
    def __init__(self, tmp_path, delay: float):
        self.master, slave = pty.openpty()
        self.prompts = tmp_path / "prompts.jsonl"
        env = {**os.environ, "R1LAB_CACHE": str(tmp_path / "cache"), "TERM": "xterm"}
        self.child = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(self.prompts), str(delay)],
                                      stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env)
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, seconds: float = 60) -> None:
        """Read until ``pattern`` (a regex) shows up in what was printed since the last expect."""
        deadline = time.monotonic() + seconds
        while not re.search(pattern, self.seen, re.S):
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.seen[-500:]!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    assert re.search(pattern, self.seen, re.S), f"no {pattern!r} in {self.seen[-500:]!r}"
        self.seen = self.seen[re.search(pattern, self.seen, re.S).end():]

    def saw(self, pattern: str, seconds: float) -> bool:
        """Whether ``pattern`` shows up within ``seconds`` (what was read is kept for the next expect)."""
        try:
            self.expect(pattern, seconds)
        except AssertionError:
            return False
        return True

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def asked(self) -> list[str]:
        return [json.loads(line) for line in self.prompts.read_text().splitlines()] if self.prompts.exists() else []

    def close(self):
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        os.close(self.master)


def test_a_chat_on_a_terminal(tmp_path):
    term = Terminal(tmp_path, delay=0.03)
    try:
        term.expect(r"> ")
        term.type("helo\x1b[Dl\r")  # left arrow, then the missing l: "hello"
        term.expect(r"\x1b\[2mg")  # the reasoning streams, dimmed, a character at a time (about 3 s in all)
        term.type("\x03")  # Ctrl-C during the reply
        term.expect(r"\(stopped.*> ", 60)
        assert term.asked() == ["[user]hello\n[assistant]<think>\n"]
        term.type("a line I regret")
        term.expect("regret", 60)  # shown: readline has read it (a Ctrl-C inside the same read goes unseen)
        # Ctrl-C at the prompt: the line is gone, the chat goes on. On a loaded machine the key can land while
        # readline is still taking in the line (then it goes unseen): press it again until the prompt comes back
        for _ in range(12):
            term.type("\x03")
            if term.saw(r"> ", 5):
                break
        else:
            raise AssertionError(f"Ctrl-C at the prompt gave no new prompt: {term.seen[-500:]!r}")
        term.type("\x1b[A\x1b[A\r")  # up arrow twice: the line before the regretted one
        term.expect(r"fine", 60)
        term.expect(r"> ", 60)
        assert term.asked()[1] == "[user]hello\n[assistant]<think>\n"  # the stopped turn was left out
        term.type("\x04")  # Ctrl-D
        term.expect("chat ended", 60)
        assert term.child.wait(60) == 0
    finally:
        term.close()
    history = (tmp_path / "cache" / "chat" / "history").read_text().splitlines()
    assert history == ["hello"]  # what was typed and sent, not the cleared line
