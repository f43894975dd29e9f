"""Math answer equivalence: ``verify_math(gold, pred)`` with a hard deadline.

Two paths:

* **Numbers, in-process.** When both strings are plain numbers (``42``, ``-3``, ``+8``, ``1,234``,
  ``2.50``, ``3/4``, ``\\frac{3}{4}``, ``8.``, optionally inside ``$…$`` or after a currency ``$``) they
  are compared exactly with :class:`fractions.Fraction`; when either is written as a decimal both are
  first rounded to 6 places, as math-verify does (so ``1/3`` equals ``0.333333``). No ``eval``.
  GSM8K's references and numeric answers never leave this path.
* **Everything else, in a worker process.** math-verify (sympy underneath) parses and compares the two.
  Parsing untrusted text with sympy can run for ever (``\\boxed{9^{9^{9^9}}}`` tries to build a number
  with more digits than there are atoms), and math-verify's own timeout is ``signal.alarm``, which works
  only in the main thread and cannot interrupt a long C-level integer operation. So the comparison runs
  in one persistent worker process (a fresh interpreter started lazily, never a fork; shared by all
  threads under a lock) and the parent kills and replaces it when an item passes its deadline. A batch
  goes to the worker in one message and comes back one result per item, so each item has its own
  deadline.

Left out: math-verify's ``StringExtractionConfig`` (multiple-choice letters) and its non-strict
variable matching. A worker killed at the deadline costs a restart (about half a second: sympy's
import), and only one item is checked at a time (one worker, a few milliseconds an item), which is
plenty for rewards but not for grading a large benchmark on many cores. POSIX only (the worker
inherits a socket descriptor); only on Linux does a worker stuck on an item die with a killed parent.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from fractions import Fraction

#: how long a fresh worker may take to import math-verify and sympy before we give up
STARTUP_TIMEOUT = 120.0
#: numbers written with a decimal point are compared after rounding to this many places (math-verify's)
FLOAT_ROUNDING = 6
#: longer strings never take the in-process number path
_MAX_NUMBER_CHARS = 60

_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DECIMAL = rf"(?:{_INT}\.\d*|\.\d+)"
_PLAIN_NUMBER = re.compile(rf"(?P<sign>[+-]?)(?:(?P<decimal>{_DECIMAL})|(?P<num>{_INT})(?:\s*/\s*(?P<den>\d+))?)")
_LATEX_FRACTION = re.compile(r"(?P<sign>[+-]?)\\[dtc]?frac\{\s*(?P<num>\d+)\s*\}\{\s*(?P<den>\d+)\s*\}")
_LATEX_DELIMITERS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
#: a thousands separator between digit groups as LaTeX and typography write it: {,} ,\! \, \; \  and thin,
#: narrow and no-break spaces (a plain comma stays: _INT reads it)
_SEPARATOR = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\[,;:! ]|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))")
#: a number written in groups of three with plain spaces, "1 000 000" (not "3 100" inside a longer run of digits)
_SPACED = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?![\d.,]\d|\d)")
#: a LaTeX fraction of two whole numbers: \frac{1}{9}, \dfrac{12}{5}, \cfrac{1}{3}, \frac12, \frac3{4} (an unbraced
#: part is one digit)
_LATEX_NUMBER_FRACTION = re.compile(r"\\[dtc]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")


# ---------------------------------------------------------------------------------------------------
# the in-process number path
# ---------------------------------------------------------------------------------------------------


def plain_numbers(text: str) -> str:
    """``text`` with its numbers written plainly: LaTeX and typographic thousands separators dropped, digits grouped
    by plain spaces joined, and LaTeX fractions of whole numbers as ``a/b``, so that no reader takes a piece of a
    number for the number.

    >>> plain_numbers("$14{,}916$ or 10,\\\\!455 or 1\\\\,000 or 1 000 000")
    '$14916$ or 10455 or 1000 or 1000000'
    >>> plain_numbers("$-\\\\dfrac{10}{9}$, \\\\frac12")
    '$-10/9$, 1/2'
    >>> plain_numbers("pages 3 100 and 12 345 678, x = 1 2")
    'pages 3100 and 12345678, x = 1 2'
    """
    text = _SEPARATOR.sub("", text)
    text = _SPACED.sub(lambda m: m[0].replace(" ", ""), text)
    return _LATEX_NUMBER_FRACTION.sub(lambda m: f"{m[1] or m[2]}/{m[3] or m[4]}", text)


def _strip_wrappers(text: str) -> str:
    """Remove what surrounds a bare number: whitespace, ``$…$``, a currency ``$``, a final period; separators."""
    text = plain_numbers(text.strip().replace("\u2212", "-"))
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    text = re.sub(r"^([+-]?)\\?\$\s*", r"\1", text)  # $18, -$5, \$18
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text


def parse_number(text: str) -> tuple[Fraction, bool] | None:
    """``(value, written_as_decimal)`` if ``text`` is a plain number, else None.

    >>> parse_number("1,234"), parse_number("-3/4"), parse_number(" $2.50$ ")
    ((Fraction(1234, 1), False), (Fraction(-3, 4), False), (Fraction(5, 2), True))
    >>> parse_number("\\\\frac{1}{2}"), parse_number("+8."), parse_number("x=3"), parse_number("1/0")
    ((Fraction(1, 2), False), (Fraction(8, 1), False), None, None)
    """
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    text = _strip_wrappers(text)
    match = _PLAIN_NUMBER.fullmatch(text) or _LATEX_FRACTION.fullmatch(text)
    if match is None:
        return None
    sign = -1 if match["sign"] == "-" else 1
    groups = match.groupdict()
    if groups.get("decimal"):
        return sign * Fraction(groups["decimal"].replace(",", "")), True
    numerator = int(groups["num"].replace(",", ""))
    denominator = int(groups["den"]) if groups.get("den") else 1
    if denominator == 0:
        return None
    return sign * Fraction(numerator, denominator), False


def numbers_equal(gold: tuple[Fraction, bool], pred: tuple[Fraction, bool]) -> bool:
    """Exact equality, or equality after rounding to ``FLOAT_ROUNDING`` places when a side is a decimal.

    >>> numbers_equal(parse_number("1/3"), parse_number("0.333333"))
    True
    >>> numbers_equal(parse_number("1/3"), parse_number("0.33")), numbers_equal(parse_number("2"), parse_number("2.0"))
    (False, True)
    """
    (a, a_decimal), (b, b_decimal) = gold, pred
    return a == b or (a_decimal or b_decimal) and round(a, FLOAT_ROUNDING) == round(b, FLOAT_ROUNDING)


def _fast_verdict(gold: str, pred: str) -> bool | None:
    """The verdict without the worker, or None when it needs math-verify."""
    if not gold.strip() or not pred.strip():
        return False
    a, b = parse_number(gold), parse_number(pred)
    if a is None or b is None:
        return None
    return numbers_equal(a, b)


# ---------------------------------------------------------------------------------------------------
# the worker process (this code runs in the child)
# ---------------------------------------------------------------------------------------------------


def _as_latex(text: str) -> str:
    """Wrap a bare answer in ``$…$`` so math-verify's LaTeX extraction sees all of it.

    >>> _as_latex("\\\\sqrt{2}"), _as_latex("$x=3$"), _as_latex("\\\\boxed{5}")
    ('$\\\\sqrt{2}$', '$x=3$', '\\\\boxed{5}')
    """
    unescaped = text.replace("\\$", "")
    if any(d in unescaped for d in _LATEX_DELIMITERS):
        return text
    return f"${text}$"


def _parse(text: str, math_verify) -> list:
    """math-verify's parse of an answer: as LaTeX first, then as a plain expression."""
    configs = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]
    parsed = math_verify.parse(_as_latex(text), configs, parsing_timeout=None)
    return parsed or math_verify.parse(text, configs, parsing_timeout=None)


def _equivalent(gold: str, pred: str, math_verify) -> bool:
    try:
        gold_parsed, pred_parsed = _parse(gold, math_verify), _parse(pred, math_verify)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # a verifier crash is a wrong answer, never a crashed training run
        return False


def _die_with_parent(parent_pid: int) -> bool:
    """Have Linux SIGKILL this worker when its parent dies, even inside a long C call (where no Python
    thread could notice). False if the parent is already gone. Elsewhere an idle worker still exits
    when its pipe closes, but one stuck on an item lingers until the item ends."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent_pid


def _worker_main(fd: int, parent_pid: int) -> None:
    """Child: import math-verify, say ``ready``, then answer batches ``[(i, gold, pred), …]`` item by item."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    if not _die_with_parent(parent_pid):
        return
    try:
        import logging

        import math_verify

        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we are the timeout
        logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
        _equivalent("1", "\\frac{2}{2}", math_verify)  # compile the regexes and load the LaTeX parser now
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for index, gold, pred in batch:
            conn.send((index, _equivalent(gold, pred, math_verify)))


# ---------------------------------------------------------------------------------------------------
# the parent side
# ---------------------------------------------------------------------------------------------------


class WorkerStartError(RuntimeError):
    """The math-verify worker process could not start (math-verify missing or broken)."""


class _Spawner:
    """Starts worker processes from one long-lived thread.

    Linux's parent-death signal fires when the *thread* that started a process ends, not the process;
    a worker started by a short-lived thread (a data-loader thread, a test's thread) would be killed
    when that thread returns. Starting every worker from this thread ties them to the whole process.
    """

    def __init__(self):
        self._requests: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="r1lab-math-spawner", daemon=True)
                self._thread.start()
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((args, kwargs, reply))
        process, error = reply.get()
        if error is not None:
            raise error
        return process

    def _serve(self) -> None:
        while True:
            args, kwargs, reply = self._requests.get()
            try:
                reply.put((subprocess.Popen(*args, **kwargs), None))
            except BaseException as exc:  # noqa: BLE001  (raised in the asking thread)
                reply.put((None, exc))


_SPAWNER = _Spawner()


def _child_env() -> dict[str, str]:
    """The environment with this copy of r1lab first on PYTHONPATH, installed or not."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = (package_root, os.environ.get("PYTHONPATH", ""))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


class _Worker:
    """One worker process and its pipe. Not thread safe: :class:`MathVerifier` holds the lock.

    The worker is a fresh interpreter (``subprocess`` with ``sys.executable``) rather than a
    ``multiprocessing`` spawn child, because spawn re-runs the parent's ``__main__`` module in the
    child: any script without an ``if __name__ == "__main__":`` guard would start a second run of
    itself (or fail with "the current process has finished its bootstrapping phase"). Like spawn it
    never forks a process that runs torch threads.
    """

    def __init__(self):
        self.conn, child_conn = multiprocessing.Pipe()  # a socket pair; the child gets its descriptor
        fd = child_conn.fileno()
        entry = f"from r1lab.rewards.math import _worker_main; _worker_main({fd}, {os.getpid()})"
        command = [sys.executable, "-c", entry]
        try:
            self.process = _SPAWNER.popen(command, pass_fds=[fd], env=_child_env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL)
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_conn.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.kill()
            raise WorkerStartError(f"the math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            kind, detail = "error", f"the process exited with code {self.process.wait()}; see its stderr above"
        if kind != "ready":
            self.kill()
            raise WorkerStartError(f"the math-verify worker could not start ({detail}); "
                                   "install math-verify with: pip install 'math-verify[antlr4_13_2]'")

    def run(self, items: list[tuple[int, str, str]], timeout: float) -> tuple[dict[int, bool], int | None]:
        """Results of ``items`` until one passes ``timeout`` (its index is returned; kill the worker)."""
        self.conn.send(items)
        results: dict[int, bool] = {}
        for index, _, _ in items:
            if not self.conn.poll(timeout):
                return results, index
            try:
                done_index, verdict = self.conn.recv()
            except (EOFError, OSError):  # the worker crashed on this item (out of memory, a segfault)
                return results, index
            results[done_index] = verdict
        return results, None

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self.conn.close()

    def close(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        try:
            self.conn.send(None)
            self.process.wait(timeout=2)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class MathVerifier:
    """A lazily started worker shared by all threads; replaced whenever an item passes its deadline."""

    def __init__(self):
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self.restarts = 0  # how many workers were killed at a deadline or crashed (a diagnostic)

    def check(self, items: list[tuple[int, str, str]], timeout: float) -> dict[int, bool]:
        """Verdicts for ``(index, gold, pred)`` items; an item past ``timeout`` seconds is False."""
        results: dict[int, bool] = {}
        pending = list(items)
        with self._lock:
            while pending:
                worker = self._get_worker()
                try:
                    done, stuck = worker.run(pending, timeout)
                except BaseException:  # interrupted mid-batch: the pipe may hold stale replies
                    self._drop_worker()
                    raise
                results.update(done)
                if stuck is None:
                    break
                results[stuck] = False
                self._drop_worker()
                self.restarts += 1
                pending = [item for item in pending if item[0] not in results]
        return results

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def _get_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            self._drop_worker()  # one whose process died (a crash)
            self._worker = _Worker()
        return self._worker

    def _drop_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None


def _forget_after_fork() -> None:
    """In a forked child: the worker and the locks belong to the parent; start afresh, lazily."""
    global _VERIFIER, _SPAWNER
    _VERIFIER, _SPAWNER = MathVerifier(), _Spawner()


_VERIFIER = MathVerifier()
atexit.register(lambda: _VERIFIER.close())
os.register_at_fork(after_in_child=_forget_after_fork)


def verify_math_many(pairs: Sequence[tuple[str, str]], timeout: float = 5.0) -> list[bool]:
    """``verify_math`` over ``(gold, pred)`` pairs: numbers in-process, the rest in one worker round trip.

    Each item sent to the worker has its own ``timeout``; an item past it is False, the worker is
    replaced and the items after it are sent again.

    >>> verify_math_many([("1/2", "0.5"), ("1,234", "1234"), ("7", "8")])
    [True, True, False]
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    verdicts: list[bool | None] = []
    for gold, pred in pairs:
        if not isinstance(gold, str) or not isinstance(pred, str):
            raise TypeError(f"verify_math compares strings, got {type(gold).__name__} and {type(pred).__name__}")
        verdicts.append(_fast_verdict(gold, pred))
    slow = [(i, gold, pred) for i, ((gold, pred), v) in enumerate(zip(pairs, verdicts)) if v is None]
    if slow:
        for i, verdict in _VERIFIER.check(slow, timeout).items():
            verdicts[i] = verdict
    return [bool(v) for v in verdicts]


def verify_math(gold: str, pred: str, timeout: float = 5.0) -> bool:
    """True if ``pred`` is mathematically equivalent to ``gold``; False if not, unparsable or too slow.

    ``gold`` and ``pred`` are answers, not whole responses (see :func:`r1lab.tasks.answers.extract_answer`).

    >>> verify_math("\\\\frac{1}{2}", "0.5"), verify_math("3", "x = 3"), verify_math("2", "2\\\\pi")
    (True, True, False)
    >>> verify_math("18", "$18"), verify_math("18", "")
    (True, False)
    """
    return verify_math_many([(gold, pred)], timeout=timeout)[0]


def worker_restarts() -> int:
    """How many times the shared worker was killed at a deadline or crashed."""
    return _VERIFIER.restarts


def shutdown() -> None:
    """Stop the shared worker now (it also stops at exit; the next call starts a fresh one)."""
    _VERIFIER.close()


__all__ = ["verify_math", "verify_math_many", "parse_number", "numbers_equal", "worker_restarts", "shutdown",
           "WorkerStartError", "MathVerifier"]
