"""PID 1 of a sandbox: builds the program's world, starts it, reports how it ended (see run.py).

Runs as root inside fresh mount, PID, network, IPC and UTS namespaces made by ``unshare``. In order:

1. A new root on a small tmpfs holding only what the interpreter needs, each bound read-only, nosuid, nodev:
   the interpreter, its standard library (any site-packages inside it hidden under an empty tmpfs) and the
   shared libraries they load. Plus a private ``/dev`` (null, zero, full, random, urandom, its own devpts), a
   ``/proc`` of the new PID namespace, and a size-limited tmpfs ``/tmp`` owned by the program's user. The host's
   root is then detached (``pivot_root``): no host file, socket or pty is reachable by path.
2. The program is forked into the run's cgroups (opened before the pivot), given resource limits, an
   unprivileged uid of its own, ``no_new_privs`` and a seccomp filter, then exec'd with an empty environment.
3. Everything the launcher knows goes to the parent on a private status pipe, as JSON lines: ``ready``, then the
   program's exit status, or an ``error`` if the sandbox could not be built. The program never holds that
   pipe, so it cannot forge a verdict; its exit code means only what it says.

When PID 1 exits the kernel kills every process left in the namespace. Only the standard library: this file runs
with ``python -I``.
"""

import ctypes
import json
import os
import platform
import resource
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
#: the limits a spec gives (also the rlimits-only fallback's, in run.py), by name
RLIMITS = {"cpu": resource.RLIMIT_CPU, "memory": resource.RLIMIT_AS, "file": resource.RLIMIT_FSIZE,
           "open_files": resource.RLIMIT_NOFILE, "processes": resource.RLIMIT_NPROC}
DEVICES = ("null", "zero", "full", "random", "urandom")
MAX_PTYS = 16  # ptys one run may open (its devpts instance's max)

# seccomp (x86_64 only; elsewhere no filter is installed and the status says so)
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
EPERM, ENOSYS, AF_VSOCK = 1, 38, 40
CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
#: x86_64 syscalls a judged program has no use for, each an escape or host-state route: tracing, keyrings
#: (they outlive a run), namespaces and mounts, kernel modules, BPF, perf, io_uring (bypasses this filter)
DENIED_X86_64 = {
    "ptrace": 101, "syslog": 103, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "pivot_root": 155, "chroot": 161, "init_module": 175, "delete_module": 176,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    # channels between runs judged at the same time or one after another (issue 30): file locks live on the
    # host's inodes of the read-only files every run sees, and the page cache of those files is shared, so one run
    # can set a lock or evict / load a page and another read it. Deny the locks and the residency probes.
    "flock": 73, "fadvise64": 221, "mincore": 27, "readahead": 187, "cachestat": 451,
    # watches on those shared inodes see another run's reads (inotify; dnotify is fcntl's F_NOTIFY, below), and the
    # host's AIO pool is one count for the machine: a run could signal through it, or drain it
    "inotify_init": 253, "inotify_add_watch": 254, "inotify_rm_watch": 255, "inotify_init1": 294,
    "fanotify_init": 300, "fanotify_mark": 301, "io_setup": 206, "io_destroy": 207, "io_getevents": 208,
    "io_submit": 209, "io_cancel": 210, "io_pgetevents": 333,
}
#: fcntl commands that take or test a lock (classic and open-file-description locks), a lease, or a directory
#: notification (dnotify): EPERM
FCNTL_LOCKS = {"F_GETLK": 5, "F_SETLK": 6, "F_SETLKW": 7, "F_OFD_GETLK": 36, "F_OFD_SETLK": 37, "F_OFD_SETLKW": 38,
               "F_SETLEASE": 1024, "F_GETLEASE": 1025, "F_NOTIFY": 1026}
#: reads and writes with per-call flags (RWF_NOWAIT tells whether a page is cached): ENOSYS, so that libc falls
#: back to preadv/pwritev for flag-free calls
NO_FLAG_IO = {"preadv2": 327, "pwritev2": 328}
NR_CLONE, NR_CLONE3, NR_SOCKET, NR_FCNTL = 56, 435, 41, 72


class SetupError(Exception):
    pass


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise SetupError(f"mount {source} on {target}: {os.strerror(ctypes.get_errno())}")


def _bind(libc, source: str, target: str, flags: int) -> None:
    """Bind ``source`` at ``target`` (created to match), then remount the bind with ``flags``."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "wb").close()
    _mount(libc, source, target, None, MS_BIND)
    _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | flags)


def _place(root: str, path: str) -> str:
    """Recreate the symlinks on the way to ``path`` inside ``root`` (``/lib64`` -> ``usr/lib64`` and the like) and
    return where the real file lands there."""
    parts = [p for p in path.split("/") if p]
    current = "/"
    for i, part in enumerate(parts):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            link = os.readlink(candidate)
            inside = root + candidate
            if not os.path.lexists(inside):
                os.makedirs(os.path.dirname(inside), exist_ok=True)
                os.symlink(link, inside)
            rest = "/".join(parts[i + 1:])
            target = os.path.normpath(os.path.join(os.path.dirname(candidate), link))
            return _place(root, os.path.join(target, rest) if rest else target)
        current = candidate
    return root + current


def build_root(libc, spec: dict, root: str) -> None:
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in spec["binds"]:
        if os.path.exists(path):
            _bind(libc, os.path.realpath(path), _place(root, path), ro)
    for path in spec["masks"]:
        if os.path.isdir(root + path):
            _mount(libc, "tmpfs", root + path, "tmpfs", ro, "size=4k,mode=0555")
    os.makedirs(root + "/dev/pts")
    os.makedirs(root + "/dev/shm")
    for name in DEVICES:  # the device binds keep dev (that is what they are for) and stay writable like the host's
        _bind(libc, "/dev/" + name, root + "/dev/" + name, MS_NOSUID | MS_NOEXEC)
    # max: the machine's pty pool is one count for every instance; a run may hold a few, never drain it
    _mount(libc, "devpts", root + "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
           f"newinstance,ptmxmode=0666,mode=0620,max={MAX_PTYS}")
    os.symlink("pts/ptmx", root + "/dev/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + name)
    os.makedirs(root + "/proc")
    try:  # only the processes (Linux 5.8+): /proc/sys, meminfo, stat... are host-wide counters another run moves
        _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid,hidepid=invisible")
    except SetupError:  # an older kernel: the whole /proc of the run's PID namespace, as before
        _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    size = f"size={spec['tmpfs_mb']}m,mode=1777"
    for place in ("/tmp", "/dev/shm"):
        os.makedirs(root + place, exist_ok=True)
        _mount(libc, "tmpfs", root + place, "tmpfs", MS_NOSUID | MS_NODEV, size)


def pivot(libc, root: str) -> None:
    """Make ``root`` the root and detach the host's (``pivot_root(".", ".")``, then unmount the old one)."""
    os.chdir(root)
    nr = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
    if nr is None:
        raise SetupError(f"pivot_root: unknown syscall number on {platform.machine()}")
    if libc.syscall(nr, b".", b".") != 0:
        raise SetupError(f"pivot_root: {os.strerror(ctypes.get_errno())}")
    if libc.umount2(b".", MNT_DETACH) != 0:
        raise SetupError(f"detaching the host root: {os.strerror(ctypes.get_errno())}")
    os.chdir("/")
    _mount(libc, None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def seccomp_filter() -> bytes | None:
    """A BPF program: wrong architecture -> kill; x32 and denied calls -> EPERM; fcntl's lock and lease commands ->
    EPERM; preadv2/pwritev2 -> ENOSYS; clone with a namespace flag -> EPERM; clone3 -> ENOSYS (libc then falls back
    to clone, whose flags we can read); vsock sockets -> EPERM."""
    if platform.machine() != "x86_64":
        return None
    LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)  # noqa: E731
    errno = lambda e: SECCOMP_RET_ERRNO | e  # noqa: E731
    prog = [ins(LD_W_ABS, 0, 0, 4), ins(JEQ, 1, 0, AUDIT_ARCH_X86_64), ins(RET, 0, 0, SECCOMP_RET_KILL_PROCESS),
            ins(LD_W_ABS, 0, 0, 0), ins(JGE, 0, 1, 0x40000000), ins(RET, 0, 0, errno(EPERM))]
    for nr in sorted(DENIED_X86_64.values()):
        prog += [ins(JEQ, 0, 1, nr), ins(RET, 0, 0, errno(EPERM))]
    for nr in sorted(NO_FLAG_IO.values()):
        prog += [ins(JEQ, 0, 1, nr), ins(RET, 0, 0, errno(ENOSYS))]
    locks = sorted(FCNTL_LOCKS.values())  # fcntl: a lock command -> EPERM, any other -> allowed
    prog += [ins(JEQ, 0, len(locks) + 3, NR_FCNTL), ins(LD_W_ABS, 0, 0, 24)]  # arg 1 (the command), low 32 bits
    prog += [ins(JEQ, len(locks) - j, 0, cmd) for j, cmd in enumerate(locks)]
    prog += [ins(RET, 0, 0, SECCOMP_RET_ALLOW), ins(RET, 0, 0, errno(EPERM))]
    prog += [ins(JEQ, 0, 1, NR_CLONE3), ins(RET, 0, 0, errno(ENOSYS))]
    prog += [ins(JEQ, 0, 3, NR_CLONE), ins(LD_W_ABS, 0, 0, 16), ins(JSET, 0, 1, CLONE_NEW_ANY),
             ins(RET, 0, 0, errno(EPERM))]  # falls through to the socket check with arg0 loaded: no match
    prog += [ins(LD_W_ABS, 0, 0, 0), ins(JEQ, 0, 3, NR_SOCKET), ins(LD_W_ABS, 0, 0, 16), ins(JEQ, 0, 1, AF_VSOCK),
             ins(RET, 0, 0, errno(EPERM)), ins(RET, 0, 0, SECCOMP_RET_ALLOW)]
    return b"".join(prog)


def install_seccomp(libc, program: bytes) -> None:
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(program) // 8, program)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")


def start_program(libc, spec: dict, cgroup_fds: list[int]) -> int:
    filter_program = seccomp_filter() if spec.get("seccomp", True) else None
    pid = os.fork()
    if pid:
        return pid
    try:
        for fd in cgroup_fds:  # the program's whole tree is counted together: memory and processes per run
            os.write(fd, b"0")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for name, value in spec["limits"].items():
            resource.setrlimit(RLIMITS[name], (value, value))
        uid = spec["uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid binary raises privileges
            os._exit(126)
        if filter_program is not None:
            install_seccomp(libc, filter_program)
        os.chdir("/tmp")
        # no limit on int <-> decimal string size: contest answers can be big integers
        os.execve(spec["python"], [spec["python"], "-I", "-B", "-X", "int_max_str_digits=0", "/tmp/prog.py"], {})
    finally:
        os._exit(126)


def main() -> None:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    os.set_inheritable(status, False)

    def report(**message) -> None:
        os.write(status, (json.dumps(message) + "\n").encode())

    try:
        with open(spec["program"], "rb") as f:  # read before the host's files are out of reach
            program = f.read()
        libc = _libc()
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
        cgroup_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec["cgroups"]]
        root = spec["root"]
        build_root(libc, spec, root)
        with open(root + "/tmp/prog.py", "wb") as f:
            f.write(program)
        os.chown(root + "/tmp", spec["uid"], spec["uid"])
        os.chown(root + "/tmp/prog.py", spec["uid"], spec["uid"])
        pivot(libc, root)
        pid = start_program(libc, spec, cgroup_fds)
        for fd in cgroup_fds:
            os.close(fd)
    except Exception as exc:  # noqa: BLE001 - any failure here is the sandbox's, reported as such
        report(error=f"{type(exc).__name__}: {exc}")
        sys.exit(125)
    report(ready=True, seccomp=seccomp_filter() is not None and spec.get("seccomp", True))
    while True:  # reap everything; leave when the program itself is done
        try:
            done, wait_status = os.wait()
        except ChildProcessError:
            report(error="lost the program")
            sys.exit(125)
        if done == pid:
            break
    if os.WIFSIGNALED(wait_status):
        report(signal=os.WTERMSIG(wait_status))
    else:
        report(exit=os.WEXITSTATUS(wait_status))
    sys.exit(0)


if __name__ == "__main__":
    main()
