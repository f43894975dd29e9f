"""Run untrusted Python in a separate, locked-down process tree with a hard deadline.

Isolation, strongest first (the level a run got is in :attr:`Result.isolation`):

- ``namespaces``: ``unshare`` gives the program fresh mount, PID, network, IPC and UTS namespaces. Inside, a
  launcher (:mod:`r1lab.sandbox.launcher`, PID 1) builds a minimal root (the interpreter, its standard library
  and their shared libraries, read-only, nosuid, nodev; a private ``/dev`` with its own devpts; a size-limited
  private ``/tmp``), detaches the host's root, and starts the program as a user id no other run on this machine
  holds, with an empty environment, resource limits, ``no_new_privs`` and a seccomp filter (x86_64). The new
  network namespace has no interfaces up: no outside, no host loopback, no metadata address; host unix sockets
  and ptys are not reachable because no host path is. When the launcher exits, the kernel kills everything
  left in the PID namespace.
- ``rlimits``: where namespaces are not allowed (no root, no user namespaces), only the resource limits, an
  empty environment and a private working directory apply. Network and filesystem are then NOT isolated;
  every such result says so, and :func:`isolation_level` warns once.

Per-run limits (:attr:`Result.limits`): with ``cgroup``, memory (swap included), the process count and CPU
(``cpus``) are bounded for the run's whole process tree by a cgroup made for the run (v1 or v2) and removed
after it. Where no cgroup can be made (``rlimits``), memory is bounded per process (RLIMIT_AS), so a run may use up to
``processes`` times ``memory_mb``; the process count stays per run because the uid is the run's alone.

Verdicts: the wall-clock deadline starts before the process does and covers the whole run, stdin included
(fed by a thread); output beyond ``output_bytes`` is cut and the run killed. Whether the sandbox itself failed
comes from the launcher over a pipe the program never holds: no exit code the program picks reads as
``sandbox_error``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import resource
import secrets
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
UID_BASE, UID_COUNT = 200_000, 50_000
_level: str | None = None
_claimed: set[int] = set()
_claim_lock = threading.Lock()


@dataclass
class Limits:
    wall: float = 5.0  # seconds, from start to end of the run, enforced by killing the process tree
    cpu: int = 5  # seconds of CPU time
    memory_mb: int = 1024  # the whole run (cgroup), else each process (address space)
    file_mb: int = 16  # largest file the program may write
    tmpfs_mb: int = 64  # all files it may write together
    open_files: int = 64
    processes: int = 64
    cpus: float = 1.0  # cores' worth of CPU the whole run may use at once (cgroup only)
    output_bytes: int = 1_000_000  # stdout and stderr, each
    budget: float = 20.0  # wall seconds all the runs judging one completion take together (its stdin/stdout tests),
    budget_per_test: float = 0.5  # plus this per test (a run's start-up alone is ~0.1 s: 200 quick tests fit)


@dataclass
class Result:
    status: str  # ok | error_exit | timeout | output_limit | sandbox_error
    exit_code: int | None  # the program's own exit code (None when it was killed by a signal or never ran)
    stdout: str
    stderr: str
    seconds: float
    isolation: str
    limits: str = "rlimits"  # cgroup: memory and processes bounded per run; rlimits: see the module doc

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


_PROBE = r"""
import json, os, sys
dirs = [p for p in sys.path if os.path.isdir(p) and os.path.basename(p) not in ('site-packages', 'dist-packages')]
libs = [os.path.join(d, f) for d in dirs for f in os.listdir(d) if f.endswith('.so')]
print(json.dumps({'dirs': dirs, 'libs': libs}))
"""


@functools.cache
def root_spec(python: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the sandbox's root holds for ``python``: paths bound read-only (the interpreter, its standard library
    folders, every shared library they load, files the stdlib links to) and folders hidden (site-packages)."""
    found = json.loads(subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True, text=True,
                                      check=True).stdout)
    binds = {python, *found["dirs"]}
    masks = {os.path.join(d, sub) for d in found["dirs"] for sub in ("site-packages", "dist-packages")
             if os.path.isdir(os.path.join(d, sub))}
    for folder in found["dirs"]:  # e.g. Debian's sitecustomize.py -> /etc/python3.11/sitecustomize.py
        for entry in os.scandir(folder):
            target = os.path.realpath(entry.path)
            if entry.is_symlink() and os.path.isfile(target) and not any(
                    target.startswith(d.rstrip("/") + "/") for d in found["dirs"]):
                binds.add(target)
    binds |= _shared_libraries([python, *found["libs"]])
    return tuple(sorted(binds)), tuple(sorted(masks))


def _shared_libraries(files: list[str]) -> set[str]:
    """Every library ``ldd`` says these files load (and libgcc_s, which glibc opens at thread exit)."""
    libs: set[str] = set()
    if not shutil.which("ldd"):
        raise RuntimeError("r1lab.sandbox needs ldd (glibc's libc-bin) to find the interpreter's shared libraries")
    for i in range(0, len(files), 64):
        out = subprocess.run(["ldd", *files[i:i + 64]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            line = line.strip()
            path = (line.split("=>", 1)[1] if "=>" in line else line).split("(")[0].strip()
            if path.startswith("/") and os.path.exists(path):
                libs.add(path)
    for lib in list(libs):
        if os.path.basename(lib).startswith("libc.so"):
            libs.update(str(p) for p in Path(lib).parent.glob("libgcc_s.so*"))
    return libs


_lock_fd: int | None = None


@contextlib.contextmanager
def claim_uid():
    """A uid in [200000, 250000) that no other run on this machine holds until the block ends: an in-process set
    for threads, and a POSIX byte-range lock (byte ``uid - 200000`` of one lock file) for other processes, which
    the kernel drops if we die. The file descriptor stays open for the process's life (closing any descriptor of
    the file would drop all of this process's locks on it), so nothing is left behind but that one empty file."""
    global _lock_fd
    with _claim_lock:
        if _lock_fd is None:
            _lock_fd = os.open(Path(tempfile.gettempdir()) / "r1lab-sandbox-uids.lock",
                               os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    start = secrets.randbelow(UID_COUNT)
    for step in range(UID_COUNT):
        index = (start + step) % UID_COUNT
        with _claim_lock:
            if index in _claimed:
                continue
            try:
                fcntl.lockf(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
            except OSError:
                continue
            _claimed.add(index)
        try:
            yield UID_BASE + index
        finally:
            with _claim_lock:
                fcntl.lockf(_lock_fd, fcntl.LOCK_UN, 1, index, os.SEEK_SET)
                _claimed.discard(index)
        return
    raise RuntimeError("no free sandbox uid")


class RunCgroup:
    """A cgroup per run bounding memory (swap included), processes and CPU (``cpus`` cores' worth: a run that forks
    many spinners, each in a session of its own, cannot starve the runs beside it) of the whole tree: v1 (the
    ``memory``, ``pids`` and ``cpu`` hierarchies) or v2. :func:`make` gives None where none can be made (no root,
    no cgroupfs)."""

    ROOT = Path("/sys/fs/cgroup")

    def __init__(self, procs: list[Path], folders: list[Path]):
        self.procs, self.folders = procs, folders

    @classmethod
    def make(cls, memory_bytes: int, processes: int, cpus: float = 1.0) -> RunCgroup | None:
        name = f"r1lab-sandbox/{os.getpid()}-{secrets.token_hex(6)}"
        made: list[Path] = []
        try:
            if (cls.ROOT / "cgroup.controllers").exists():  # v2
                parent = cls.ROOT / "r1lab-sandbox"
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
                folder = cls.ROOT / name
                folder.mkdir()
                made.append(folder)
                (folder / "memory.max").write_text(str(memory_bytes))
                if (folder / "memory.swap.max").exists():
                    (folder / "memory.swap.max").write_text("0")
                (folder / "pids.max").write_text(str(processes))
                (folder / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
                return cls([folder / "cgroup.procs"], made)
            memory, pids, cpu = (cls.ROOT / kind / name for kind in ("memory", "pids", "cpu"))
            for folder in (memory, pids, cpu):
                folder.mkdir(parents=True)
                made.append(folder)
            (cpu / "cpu.cfs_period_us").write_text("100000")
            (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * 100_000)))
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(processes))
            return cls([memory / "cgroup.procs", pids / "cgroup.procs", cpu / "cgroup.procs"], made)
        except OSError:
            cls([], made).remove()
            return None

    def oom_killed(self) -> bool:
        for folder in self.folders:
            for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
                try:
                    for line in (folder / name).read_text().splitlines():
                        if line.startswith(key + " ") and int(line.split()[1]) > 0:
                            return True
                except (OSError, ValueError, IndexError):
                    pass
        return False

    def remove(self) -> None:
        """Kill whatever is left in the run's cgroups and remove them (retrying while the kernel reaps)."""
        for folder in self.folders:
            deadline = time.monotonic() + 2
            while folder.exists():
                try:
                    for pid in (folder / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)


@functools.lru_cache(maxsize=1)
def cgroups_available() -> bool:
    """Whether a run's cgroup can be made here (warns once if not). Also removes the cgroups of runs whose
    process died before it could (named ``<pid>-<random>``)."""
    for stale in RunCgroup.ROOT.glob("*/r1lab-sandbox/*-*") if os.geteuid() == 0 else ():
        pid = stale.name.split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            RunCgroup([], [stale]).remove()
    probe = RunCgroup.make(64 << 20, 8) if os.geteuid() == 0 else None
    if probe is None:
        warnings.warn("r1lab.sandbox: no cgroup can be made here: memory is bounded per process (RLIMIT_AS), not "
                      "per run, so a run that forks may use up to processes x memory_mb", RuntimeWarning, stacklevel=2)
        return False
    probe.remove()
    return True


def run(program: str, stdin: str = "", limits: Limits | None = None) -> Result:
    """Run ``program`` (Python source) with ``stdin``; never raises for anything the program does."""
    limits = limits or Limits()
    level = isolation_level()
    work = Path(tempfile.mkdtemp(prefix="r1lab-sandbox-"))
    cgroup = None
    try:
        # a lone surrogate cannot be encoded as UTF-8: written as is, it is the program's SyntaxError, not ours
        (work / "prog.py").write_bytes(program.encode("utf-8", "surrogatepass"))
        rlimits = {"cpu": limits.cpu, "memory": limits.memory_mb << 20, "file": limits.file_mb << 20,
                   "open_files": limits.open_files, "processes": limits.processes}
        if level != "namespaces":
            argv = [sys.executable, "-I", "-B", "-X", "int_max_str_digits=0", str(work / "prog.py")]
            return _supervise(argv, stdin, limits, level, work, _limiter(rlimits), None, None)
        with claim_uid() as uid:
            try:
                if cgroups_available():
                    cgroup = RunCgroup.make(limits.memory_mb << 20, limits.processes, limits.cpus)
                python = program_python()
                binds, masks = root_spec(python)
                (work / "root").mkdir()
            except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                return Result("sandbox_error", None, "", f"sandbox: could not prepare the run: {exc}", 0.0, level)
            status_read, status_write = os.pipe()
            spec = {"program": str(work / "prog.py"), "python": python, "uid": uid, "limits": rlimits,
                    "tmpfs_mb": limits.tmpfs_mb, "root": str(work / "root"), "binds": binds, "masks": masks,
                    "cgroups": [str(p) for p in cgroup.procs] if cgroup else [], "status_fd": status_write}
            argv = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
                    sys.executable, "-I", "-B", str(LAUNCHER), json.dumps(spec)]
            try:
                return _supervise(argv, stdin, limits, level, work, None, (status_read, status_write), cgroup)
            finally:
                os.close(status_read)
                if cgroup is not None:  # empty before the uid is free for another run
                    cgroup.remove()
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(work, ignore_errors=True)


def _limiter(rlimits: dict):
    def apply() -> None:  # no RLIMIT_NPROC: it would count every process of this user, not only the run's
        for name in ("cpu", "memory", "file", "open_files"):
            resource.setrlimit(RLIMITS[name], (rlimits[name],) * 2)

    return apply


def _supervise(argv, stdin: str, limits: Limits, level: str, work: Path, preexec, status_pipe,
               cgroup: RunCgroup | None) -> Result:
    t0 = time.monotonic()
    deadline = t0 + limits.wall
    pass_fds = (status_pipe[1],) if status_pipe else ()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=work, env={}, start_new_session=True, preexec_fn=preexec, pass_fds=pass_fds)
    except OSError as exc:
        return Result("sandbox_error", None, "", f"could not start: {exc}", 0.0, level)
    finally:
        if status_pipe:
            os.close(status_pipe[1])
    flooded = threading.Event()
    outputs: dict[str, str] = {}
    reports: list[dict] = []

    def drain(name, stream):
        chunks, size = [], 0
        while True:
            block = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not block:
                break
            if size < limits.output_bytes:
                chunks.append(block[:limits.output_bytes - size])
            size += len(block)
            if size > limits.output_bytes:
                flooded.set()
                _kill(proc)
        outputs[name] = b"".join(chunks).decode("utf-8", errors="replace")

    def feed():  # in a thread, so a program that never reads cannot stop the clock
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(stdin.encode("utf-8", "surrogatepass"))
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()

    def listen():  # the launcher's reports, JSON lines; only it holds the write end
        with os.fdopen(os.dup(status_pipe[0]), "rb") as pipe:
            for line in pipe.read(1 << 16).splitlines():
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        reports.append(message)

    threads = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    threads.append(threading.Thread(target=feed, daemon=True))
    if status_pipe:
        threads.append(threading.Thread(target=listen, daemon=True))
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        proc.wait()
    for t in threads:
        t.join(timeout=2)
    seconds = time.monotonic() - t0
    stdout, stderr = outputs.get("stdout", ""), outputs.get("stderr", "")
    limits_kind = "cgroup" if cgroup else "rlimits"
    if not status_pipe:  # rlimits only: the exit code is all there is
        code = proc.returncode
        status = "timeout" if timed_out else "output_limit" if flooded.is_set() else "ok" if code == 0 else "error_exit"
        return Result(status, code, stdout, stderr, seconds, level, limits_kind)
    report = {k: v for message in reports for k, v in message.items()}
    code = report.get("exit")
    if "error" in report:
        return Result("sandbox_error", None, stdout, f"sandbox: {report['error']}", seconds, level, limits_kind)
    if timed_out:
        status = "timeout" if report.get("ready") else "sandbox_error"  # it never started: not the program's fault
    elif flooded.is_set():
        status = "output_limit"
    elif "exit" not in report and "signal" not in report:
        status = "sandbox_error"  # the launcher died without a word
    elif report.get("signal") == signal.SIGXCPU:
        status = "timeout"  # CPU-time limit
    elif code == 0:
        status = "ok"
    else:
        status = "error_exit"
    if status == "sandbox_error" and not stderr.startswith("sandbox:"):
        stderr = "sandbox: the launcher gave no verdict" + ("" if report.get("ready") else " (never ready)")
    if cgroup is not None and status == "error_exit" and cgroup.oom_killed():
        stderr += "\n[r1lab.sandbox: the run went over its memory limit]"
    return Result(status, code if isinstance(code, int) else None, stdout, stderr, seconds, level, limits_kind)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare and the launcher; the kernel then empties the namespace
    except (ProcessLookupError, PermissionError):
        pass
