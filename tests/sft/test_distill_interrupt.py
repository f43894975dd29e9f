"""Ctrl-C in distill while requests hang at a slow teacher: it stops at once, keeps what finished, resumes the rest."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1lab.config import DistillConfig
from r1lab.sft import distill

pytest.importorskip("openai")


@contextmanager
def slow_teacher(answer_first: int):
    """An OpenAI-compatible endpoint that answers the first ``answer_first`` requests at once and holds every
    later one until ``state["release"]`` is set (or a minute has passed)."""
    state = {"requests": 0, "holding": 0, "answered": 0, "prompts": [], "release": threading.Event()}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["prompts"].append(request["messages"][-1]["content"])
                state["requests"] += 1
                hold = state["requests"] > answer_first
                state["holding"] += hold
            if hold:
                state["release"].wait(60)
            body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                               "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                   "role": "assistant", "content": "5", "reasoning_content": "think"}}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client went away
                pass
            with lock:
                state["answered"] += 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        state["release"].set()
        server.shutdown()
        server.server_close()


def wait_for(condition, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def config(url, out, **kw):
    return DistillConfig(**{"teacher": "teacher", "base_url": url, "task_args": {"n_train": 12, "n_test": 2},
                            "concurrency": 4, "max_tokens": 64, "out": str(out), **kw})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ctrl_c_abandons_requests_in_flight_and_a_rerun_asks_only_the_rest(tmp_path):
    out = tmp_path / "run"
    with slow_teacher(answer_first=6) as (url, state):
        sent = {}

        def ctrl_c_once_four_requests_hang():
            if wait_for(lambda: state["holding"] == 4 and (out / "traces.jsonl").is_file()
                        and len(lines(out / "traces.jsonl")) == 6, 30):
                sent["at"] = time.monotonic()
                os.kill(os.getpid(), signal.SIGINT)

        timer = threading.Thread(target=ctrl_c_once_four_requests_hang, daemon=True)
        timer.start()
        with pytest.raises(distill.Interrupted) as stopped:
            distill.run_distill(config(url, out), progress=False)
        took = time.monotonic() - sent["at"]
        timer.join()
        assert took < 10, f"Ctrl-C took {took:.1f} s"  # the requests in flight (held for 60 s) were not awaited
        assert (stopped.value.done, stopped.value.total) == (6, 12)
        assert str(stopped.value) == (f"interrupted: 6 of 12 prompts done and saved in {out}; "
                                      "rerun the same command to resume")
        state["release"].set()  # the abandoned requests now return; none of them is written
        assert wait_for(lambda: state["answered"] == 10, 30)
        time.sleep(0.2)
        first = {r["id"] for r in lines(out / "traces.jsonl")}
        assert len(first) == 6  # the six answered, each once and whole

        summary = distill.run_distill(config(url, out), progress=False)
    rows = lines(out / "traces.jsonl")
    assert summary["traces"] == 12 and sorted(int(r["id"]) for r in rows) == list(range(12))
    asked_again = state["prompts"][10:]  # the rerun asked only the six that were missing, each once
    assert sorted(asked_again) == sorted(r["prompt"] for r in rows if r["id"] not in first)


def test_ctrl_c_ends_the_process_at_once_though_requests_still_hang(tmp_path):
    out = tmp_path / "run"
    with slow_teacher(answer_first=2) as (url, state):
        command = ["distill", "--teacher", "teacher", "--base-url", url, "--task-args", "{n_train: 12, n_test: 2}",
                   "--concurrency", "4", "--max-tokens", "64", "--out", str(out)]
        child = subprocess.Popen([sys.executable, "-m", "r1lab.cli", *command],  # the command a user runs
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: state["holding"] == 4 or child.poll() is not None, 120), "no request hung"
            assert wait_for(lambda: (out / "traces.jsonl").is_file() and len(lines(out / "traces.jsonl")) == 2, 30)
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            stdout, stderr = child.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert took < 10, f"the process took {took:.1f} s to end after Ctrl-C"
    assert child.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().endswith(f"r1lab distill: interrupted: 2 of 12 prompts done and saved in {out}; rerun the "
                                   "same command to resume"), stderr
