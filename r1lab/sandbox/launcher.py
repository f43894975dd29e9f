"""PID 1 of a sandbox (runs as root inside fresh mount, PID, network, IPC and UTS namespaces; see run.py).

It makes every mount read-only, puts size-limited tmpfs over the world-writable places (/tmp, /var/tmp,
/dev/shm), writes the program into /tmp, then forks the program as an unprivileged user with resource limits
and an empty environment, waits for it, and exits with its status. When PID 1 exits the kernel kills every
process left in the namespace, so nothing the program started (forked, setsid'd, daemonised) outlives it.
Only the standard library: this file runs with ``python -I``.
"""

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
#: the limits a spec gives (also the rlimits-only fallback's, in run.py), by name
RLIMITS = {"cpu": resource.RLIMIT_CPU, "memory": resource.RLIMIT_AS, "file": resource.RLIMIT_FSIZE,
           "open_files": resource.RLIMIT_NOFILE, "processes": resource.RLIMIT_NPROC}


def _mount(libc, source, target, fstype, flags, data=None) -> bool:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def main() -> None:
    spec = json.loads(sys.argv[1])
    with open(spec["program"], "rb") as f:  # read before /tmp is covered
        program = f.read()
    libc = ctypes.CDLL(None, use_errno=True)
    if not _mount(libc, None, "/", None, MS_REC | MS_PRIVATE):
        sys.exit(125)
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    for target in sorted(set(targets), key=len):  # every mount read-only (a submount keeps rw otherwise)
        if target.startswith("/proc"):
            continue
        _mount(libc, target, target, None, MS_BIND | MS_REC)
        _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    size = f"size={spec['tmpfs_mb']}m,mode=1777"
    for place in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(place) and not _mount(libc, "tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV, size):
            sys.exit(125)
    with open("/tmp/prog.py", "wb") as f:
        f.write(program)
    uid = spec["uid"]
    os.chown("/tmp", uid, uid)
    os.chown("/tmp/prog.py", uid, uid)
    pid = os.fork()
    if pid == 0:
        try:
            for name, value in spec["limits"].items():
                resource.setrlimit(RLIMITS[name], (value, value))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.chdir("/tmp")
            os.execve(spec["python"], [spec["python"], "-I", "-B", "/tmp/prog.py"], {})
        finally:
            os._exit(126)
    while True:  # reap everything; leave when the program itself is done
        try:
            done, status = os.wait()
        except ChildProcessError:
            sys.exit(125)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
    sys.exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
