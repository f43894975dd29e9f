"""Run untrusted Python in a separate, locked-down process tree with a hard deadline.

Isolation, strongest first (the level a run got is in :attr:`Result.isolation`):

- ``namespaces``: ``unshare`` gives the program fresh mount, PID, network, IPC and UTS namespaces. Inside, a
  launcher (:mod:`r1lab.sandbox.launcher`, PID 1) makes every mount read-only, covers /tmp, /var/tmp and /dev/shm
  with small private tmpfs (the only writable place, and the only place files can grow), and starts the program
  as an unprivileged user id of its own with an empty environment and limits on CPU time, address space, file
  size, open files and processes. The new network namespace has no interfaces up: no outside, no host
  loopback, no metadata address. When the launcher exits, the kernel kills everything left in the PID
  namespace, so forked or setsid'd children cannot outlive the run.
- ``rlimits``: where namespaces are not allowed (no root, no user namespaces), only the resource limits, an
  empty environment and a private working directory apply. Network and filesystem are then NOT isolated;
  every such result says so, and :func:`isolation_level` warns once.

The wall-clock deadline is enforced from outside by killing the whole process group; output beyond
``output_bytes`` is cut and the run killed. Left out: seccomp filters, cgroups (memory is bounded with
RLIMIT_AS instead), and languages other than Python.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from r1lab.sandbox.launcher import RLIMITS

LAUNCHER = Path(__file__).with_name("launcher.py")
_uids = itertools.count()
_level: str | None = None


@dataclass
class Limits:
    wall: float = 5.0  # seconds, enforced by killing the process tree
    cpu: int = 5  # seconds of CPU time
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file the program may write
    tmpfs_mb: int = 64  # all files it may write together
    open_files: int = 64
    processes: int = 64
    output_bytes: int = 1_000_000  # stdout and stderr, each


@dataclass
class Result:
    status: str  # ok | error_exit | timeout | output_limit | sandbox_error
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def program_python() -> str:
    """An interpreter the unprivileged sandbox user can run: every folder on its path and the file itself must
    be executable by others (``/root/...`` pyenv builds are not)."""
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and _world_runnable(Path(candidate).resolve()):
            return str(Path(candidate).resolve())
    raise RuntimeError("no Python interpreter that other users may run; install one (e.g. apt-get install python3)")


def _world_runnable(path: Path) -> bool:
    try:
        if not path.is_file() or not path.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in path.parents)
    except OSError:
        return False


def isolation_level() -> str:
    """``namespaces`` if this machine lets us build the full sandbox, else ``rlimits`` (with a warning)."""
    global _level
    if _level is None:
        _level = "rlimits"
        if os.geteuid() == 0 and shutil.which("unshare"):
            probe = subprocess.run(["unshare", "--mount", "--pid", "--net", "--fork", "true"], capture_output=True)
            if probe.returncode == 0:
                _level = "namespaces"
        if _level != "namespaces":
            warnings.warn("r1lab.sandbox: no namespaces here (needs root and unshare): untrusted code runs with "
                          "resource limits only, WITHOUT network or filesystem isolation", RuntimeWarning,
                          stacklevel=2)
    return _level


def run(program: str, stdin: str = "", limits: Limits | None = None) -> Result:
    """Run ``program`` (Python source) with ``stdin``; never raises for anything the program does."""
    limits = limits or Limits()
    level = isolation_level()
    work = Path(tempfile.mkdtemp(prefix="r1lab-sandbox-"))
    try:
        (work / "prog.py").write_text(program, encoding="utf-8")
        uid = 200_000 + next(_uids) % 50_000  # a user of its own, so process limits are per run
        rlimits = {"cpu": limits.cpu, "memory": limits.memory_mb << 20, "file": limits.file_mb << 20,
                   "open_files": limits.open_files, "processes": limits.processes}
        if level == "namespaces":
            spec = {"program": str(work / "prog.py"), "python": program_python(), "uid": uid, "limits": rlimits,
                    "tmpfs_mb": limits.tmpfs_mb}
            argv = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--mount-proc",
                    "--kill-child", sys.executable, "-I", "-B", str(LAUNCHER), json.dumps(spec)]
            preexec = None
        else:
            argv = [sys.executable, "-I", "-B", str(work / "prog.py")]
            preexec = _limiter(rlimits)
        return _supervise(argv, stdin, limits, level, work, preexec)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _limiter(rlimits: dict):
    def apply() -> None:  # no RLIMIT_NPROC: it would count every process of this user, not only the run's
        for name in ("cpu", "memory", "file", "open_files"):
            resource.setrlimit(RLIMITS[name], (rlimits[name],) * 2)

    return apply


def _supervise(argv, stdin: str, limits: Limits, level: str, work: Path, preexec) -> Result:
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=work, env={}, start_new_session=True, preexec_fn=preexec)
    except OSError as exc:
        return Result("sandbox_error", None, "", f"could not start: {exc}", 0.0, level)
    flooded = threading.Event()
    outputs = {}

    def drain(name, stream):
        chunks, size = [], 0
        while True:
            block = stream.read(65536)
            if not block:
                break
            if size < limits.output_bytes:
                chunks.append(block[:limits.output_bytes - size])
            size += len(block)
            if size > limits.output_bytes:
                flooded.set()
                _kill(proc)
        outputs[name] = b"".join(chunks).decode("utf-8", errors="replace")

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    try:
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    timed_out = False
    try:
        proc.wait(timeout=limits.wall)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        proc.wait()
    for r in readers:
        r.join(timeout=2)
    seconds = time.monotonic() - t0
    stdout, stderr = outputs.get("stdout", ""), outputs.get("stderr", "")
    code = proc.returncode
    if timed_out:
        status = "timeout"
    elif flooded.is_set():
        status = "output_limit"
    elif level == "namespaces" and code in (125, 126):
        status = "sandbox_error"
    elif code == 0:
        status = "ok"
    else:
        status = "error_exit"
    if level == "namespaces" and code is not None and code > 128 and code - 128 == signal.SIGXCPU:
        status = "timeout"  # CPU-time limit
    return Result(status, code, stdout, stderr, seconds, level)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare and the launcher; the kernel then empties the namespace
    except (ProcessLookupError, PermissionError):
        pass
