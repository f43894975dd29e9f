"""Math equivalence: the in-process number path, math-verify in its worker, and the worker's deadline."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from r1lab.rewards import math as math_reward
from r1lab.rewards.math import parse_number, verify_math, verify_math_many, worker_restarts

HANG = "\\boxed{9^{9^{9^9}}}"  # sympy would try to build this number; only a kill stops it


@pytest.mark.parametrize("gold, pred, equal", [
    ("42", "42", True),
    ("1,234", "1234", True),
    ("1234", "1,234.0", True),
    ("-3", "−3", True),  # a unicode minus
    ("8", "+8", True),
    ("8", "8.", True),
    ("18", "$18", True),
    ("18", "\\$18", True),
    ("1/2", "0.5", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("1/3", "0.333333", True),  # decimals match after rounding to 6 places, as in math-verify
    ("1/3", "0.333", False),
    ("2", "3", False),
    ("1,234", "1.234", False),
    ("1000000", "1,000,001", False),
])
def test_numbers_are_compared_in_process(gold, pred, equal):
    assert math_reward._fast_verdict(gold, pred) is equal
    assert verify_math(gold, pred) is equal


@pytest.mark.parametrize("text", ["1,23", "1/0", "x", "3 apples", "1" * 100, "2^10", "1e3"])
def test_what_is_not_a_plain_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("gold, pred", [
    ("\\sqrt{2}", "2^{1/2}"),
    ("3", "x = 3"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}"),
    ("10\\%", "0.1"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
])
def test_math_verify_equivalences(gold, pred):
    assert math_reward._fast_verdict(gold, pred) is None  # these need the worker
    assert verify_math(gold, pred) is True


@pytest.mark.parametrize("gold, pred", [
    ("2", "2\\pi"),
    ("\\sqrt{2}", "1.4"),
    ("x^2", "x^3"),
    ("5", "\\frac{"),  # unparsable
    ("5", ""),
    ("", "5"),
])
def test_math_verify_differences(gold, pred):
    assert verify_math(gold, pred) is False


def test_batch_keeps_order_and_mixes_paths():
    pairs = [("1/2", "0.5"), ("\\sqrt{4}", "2"), ("7", "8"), ("x+1", "1+x"), ("\\pi", "3.14")]
    assert verify_math_many(pairs) == [True, True, False, True, False]
    assert verify_math_many([]) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout must be positive"):
        verify_math("1", "1", timeout=0)
    with pytest.raises(TypeError, match="compares strings"):
        verify_math(1, "1")


def test_threads_share_the_worker_safely():
    pairs = [("\\sqrt{%d}" % (n * n), str(n)) for n in range(2, 10)] + [("\\sqrt{5}", "2"), ("\\pi", "3")]
    expected = [True] * 8 + [False, False]
    results = {}

    def check(i):
        results[i] = verify_math_many(pairs)

    threads = [threading.Thread(target=check, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == expected for i in range(6))


def test_a_hanging_item_is_killed_at_the_deadline_even_off_the_main_thread():
    assert verify_math("\\sqrt{4}", "2")  # the worker is up, so the clock measures only the deadline
    restarts = worker_restarts()
    outcome = {}

    def run():
        start = time.monotonic()
        outcome["single"] = verify_math("1", HANG, timeout=1.0)
        outcome["single_s"] = time.monotonic() - start
        start = time.monotonic()
        outcome["batch"] = verify_math_many([("\\sqrt{9}", "3"), ("1", HANG), ("x+x", "2x")], timeout=1.0)
        outcome["batch_s"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    # the 1 s deadline, not the 5 s default nor the hang (for ever): room for a loaded machine to kill the worker
    assert outcome["single"] is False and outcome["single_s"] < 4.0
    # the batch: the item before the hang kept its verdict, the one after ran on a fresh worker. Its time holds two
    # worker starts (sympy's import, seconds on a busy machine), so it is bounded only against a hang
    assert outcome["batch"] == [True, False, True] and outcome["batch_s"] < 60
    assert worker_restarts() == restarts + 2
    # and the worker still works afterwards, although the thread that started it has ended
    assert verify_math("\\frac{2}{4}", "\\sqrt{1/4}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
def test_a_stuck_worker_dies_with_its_parent():
    script = textwrap.dedent(f"""
        import os, threading, time
        from r1lab.rewards import math as m
        m.verify_math("\\\\sqrt{{4}}", "2")
        print(m._VERIFIER._worker.process.pid, flush=True)
        threading.Thread(target=m.verify_math, args=("1", {HANG!r}, 60)).start()
        time.sleep(1)  # the worker is now inside one long C call
        os._exit(0)  # no atexit cleanup: as if the trainer were killed
    """)
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, timeout=60,
                         cwd=Path(math_reward.__file__).resolve().parents[2])
    worker_pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(worker_pid):
        time.sleep(0.1)
    assert not _running(worker_pid)


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper has stopped running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_worker():
    assert verify_math("\\sqrt{9}", "3")
    parent_worker = math_reward._VERIFIER._worker.process.pid
    child = os.fork()
    if child == 0:  # the child: a fresh worker of its own, the parent's left alone
        ok = verify_math("\\sqrt{16}", "4") and math_reward._VERIFIER._worker.process.pid != parent_worker
        math_reward.shutdown()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert math_reward._VERIFIER._worker.process.pid == parent_worker and verify_math("\\sqrt{25}", "5")
