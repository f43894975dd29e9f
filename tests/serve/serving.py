"""A server on a loopback port, and a scripted engine whose replies (and timing) are known in advance."""

import threading
import time
from contextlib import contextmanager

import uvicorn

from r1lab.engine.base import Completion, render_prompt

from conftest import make_tokenizer  # tests/conftest.py


@contextmanager
def running(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class ScriptedEngine:
    """Replies with ``script`` one character-token at a time, all rows in lockstep like the real engine,
    sleeping ``delay`` seconds a step. Counts the tokens it produced, so tests can see work stop."""

    def __init__(self, tokenizer, script: str, delay: float = 0.0, context: int = 512):
        self.tokenizer, self.script, self.delay = tokenizer, script, delay
        self.context_length = context
        self.tokens_made = 0
        self.calls = []

    def encode(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, messages, template, prefill=None):
        return render_prompt(self.tokenizer, messages, template, prefill)

    def load_weights(self, weights):
        pass

    def sleep(self):
        pass

    def wake_up(self):
        pass

    def close(self):
        pass

    def generate(self, prompts, params, on_token=None, stream_ids=None):
        self.calls.append(len(prompts))
        ids = self.encode(self.script) + [self.tokenizer.eos_token_id]
        rows = {(i, j): [] for i in range(len(prompts)) for j in range(params.n)}
        finish = {}
        for step in range(params.max_new_tokens):
            live = [key for key in rows if key not in finish]
            if not live:
                break
            time.sleep(self.delay)
            for key in live:
                token = ids[step] if step < len(ids) else ids[-1]
                rows[key].append(token)
                self.tokens_made += 1
                if token == self.tokenizer.eos_token_id:
                    finish[key] = "stop"
                elif on_token is not None and on_token(key[0], key[1], token) is False:
                    finish[key] = "abort"
        return [[Completion(i, rows[(i, j)], [0.0] * len(rows[(i, j)]), finish.get((i, j), "length"),
                            self.tokenizer.decode(rows[(i, j)], skip_special_tokens=True)) for j in range(params.n)]
                for i in range(len(prompts))]


def thinking_tokenizer():
    """The test tokenizer with a template that opens the think block, as DeepSeek-R1's does."""
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]<think>\n{% endif %}")
    return tok
