"""One test per way untrusted code has beaten local graders: each must earn no reward and leave the host clean
(the canary file outside the sandbox untouched, no sandbox process left behind). The gold solution passes."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1lab.sandbox.judge import CallTest, IOTest, judge_calls, judge_io
from r1lab.sandbox.run import Limits, isolation_level

pytestmark = pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and unshare for namespaces")

TESTS = [CallTest([1, 2], 3), CallTest([10, -4], 6), CallTest([0, 0], 0)]
GOLD = "def add(a, b):\n    return a + b\n"
FAST = Limits(wall=3, cpu=2)  # for programs that must be cut off: short, so a hang costs little
ROOMY = Limits(wall=30, cpu=30)  # for programs that must pass: room for a slow or busy machine


def sandbox_processes() -> list[int]:
    """Processes of the sandbox users (uid 200000-249999) still alive on the host, left by this test session's runs:
    below this process, or adopted by init (escaped). Runs of another session on the same machine (a busy machine
    runs several) are below that session's own judge, and are not counted."""
    uid, parent = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                uid[int(entry.name)] = int(status.split("\nUid:")[1].split()[0])
                parent[int(entry.name)] = int(status.split("\nPPid:")[1].split()[0])
            except (OSError, IndexError, ValueError):
                continue

    def ours(pid: int) -> bool:
        while 200_000 <= uid.get(pid, 0) < 250_000:  # up to the first process outside the sandbox users
            pid = parent.get(pid, 0)
        if pid in (0, 1):  # adopted by init (or its parent just ended): nobody's, so counted
            return True
        while pid not in (0, 1, os.getpid()):
            pid = parent.get(pid, 0)
        return pid == os.getpid()

    return [pid for pid in uid if 200_000 <= uid[pid] < 250_000 and ours(pid)]


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("untouched")
    os.chmod(tmp_path, 0o777)  # even a world-writable folder outside the sandbox must stay untouched
    yield path
    deadline = time.monotonic() + 10  # generous: a loaded machine may take a while to reap a killed tree
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
    # read only now: whatever a surviving process would have written, it has written by the time it is gone
    assert path.read_text() == "untouched" and sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]


def score(solution: str, limits: Limits = FAST) -> float | None:
    return judge_calls(solution, "add", TESTS, limits=limits).score()


def test_gold_solution_passes(canary):
    assert score(GOLD, ROOMY) == 1.0


@pytest.mark.parametrize("method", ["__eq__", "__ne__", "__bool__"])
def test_objects_with_rigged_comparisons(canary, method):
    rigged = """
class Always:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __hash__(self): return 0
def add(a, b):
    return Always()
"""
    assert score(rigged) == 0.0


def test_int_subclass_with_rigged_eq_is_judged_by_value(canary):
    assert score("class I(int):\n    def __eq__(s, o): return True\ndef add(a, b): return I(999)") == 0.0


@pytest.mark.parametrize("snooping", [
    "import inspect\ndef add(a, b):\n    for f in inspect.stack():\n        for v in f.frame.f_locals.values():\n"
    "            if isinstance(v, int) and v not in (a, b): return v\n    return -1",
    "import gc\ndef add(a, b):\n    ints = [o for o in gc.get_objects() if isinstance(o, list) and len(o) == 2]\n    return 42",
    "import glob\ndef add(a, b):\n    for p in glob.glob('/tmp/**', recursive=True) + glob.glob('/proc/1/cmdline'):\n"
    "        try: open(p, 'rb').read()\n        except OSError: pass\n    return 42",
])
def test_reading_expected_values_through_frames_gc_or_files(canary, snooping):
    assert score(snooping) == 0.0


@pytest.mark.parametrize("exit_early", [
    "import os\nos._exit(0)\n", "import sys\nsys.exit()\n", "raise SystemExit(0)\n",
    "import atexit, sys\natexit.register(lambda: print('all tests passed'))\nsys.exit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
])
def test_leaving_before_the_checks(canary, exit_early):
    assert score(exit_early + GOLD) == 0.0


def test_forging_result_lines_without_the_answers(canary):
    forged = """
import re, os
marker = re.search(r"@@r1lab-[0-9a-f]+@@", open(__file__).read()).group()
for _ in range(10):
    print(marker + '["ok", ["int", 7]]')
os._exit(0)
""" + GOLD
    assert score(forged) == 0.0


@pytest.mark.parametrize("escape", [
    "import os\nos.system('echo pwned > {canary}')",
    "import posix\nfd = posix.open('{canary}', posix.O_WRONLY | posix.O_TRUNC)\nposix.write(fd, b'pwned')",
    "import ctypes\nctypes.CDLL(None).system(b'echo pwned > {canary}')",
    "import importlib, sys\nsys.modules.pop('os', None)\nos2 = importlib.import_module('os')\nopen('{canary}', 'w').write('x')",
])
def test_reimported_os_posix_and_ctypes_cannot_touch_the_host(canary, escape):
    assert score(escape.format(canary=canary) + "\n" + "def add(a, b): return 0") == 0.0


def test_fork_bomb(canary):
    assert score("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n", Limits(wall=3, cpu=2)) == 0.0


def test_setsid_orphan_does_not_outlive_the_run(canary):
    orphan = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(2)
        open({str(canary)!r}, 'w').write('late write')
        open('/tmp/after', 'w').write('late')
    os._exit(0)
def add(a, b): return 0
"""
    assert score(orphan) == 0.0
    time.sleep(2.5)  # the orphan would have woken by now: the canary fixture checks it never wrote


@pytest.mark.parametrize("greedy", [
    "x = bytearray(10 ** 10)\n",
    "x = [0] * (10 ** 10)\n",
    "while True: pass\n",
    "import time\ntime.sleep(60)\n",
    "x = pow(10, 10 ** 9)\n",
    "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')\n",
    "import sys\nwhile True: sys.stdout.write('x' * 65536)\n",
    "f = open('/tmp/big', 'wb')\nfor _ in range(10 * 1024):\n    f.write(b'0' * (1 << 20))\n",
])
def test_resource_exhaustion_is_cut_off(canary, greedy):
    t0 = time.monotonic()
    assert score(greedy + GOLD) == 0.0
    assert time.monotonic() - t0 < FAST.wall + 10  # cut off at the deadline: uncut, each would run 60 s or more


@pytest.fixture
def listener():
    """A host port, and ``done()``: every connection it got, read once the test is over with it (after the run,
    so a connection the program made is complete and waiting in the backlog if it was not accepted already)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    hits, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                hits.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def done():
        stop.set()
        thread.join()
        server.setblocking(False)
        while True:
            try:
                hits.append(server.accept())
            except OSError:  # BlockingIOError: the backlog is empty
                return hits

    yield server.getsockname()[1], done
    done()
    server.close()


@pytest.mark.parametrize("host", ["1.1.1.1", "169.254.169.254", "127.0.0.1", "localhost"])
def test_no_network_outside_loopback_or_metadata(canary, listener, host):
    port, done = listener
    target_port = port if host in ("127.0.0.1", "localhost") else 80
    reach = f"""
import socket
def add(a, b):
    try:
        socket.create_connection(({host!r}, {target_port}), timeout=1).close()
        return a + b
    except OSError:
        return -1
"""
    assert score(reach) == 0.0
    assert done() == []


def test_secrets_in_the_environment_stay_outside(canary, monkeypatch):
    monkeypatch.setenv("R1LAB_TEST_SECRET", "s3cret-value")
    peek = """
import os
def add(a, b):
    seen = str(dict(os.environ))
    for path in ('/proc/1/environ', '/proc/self/environ', '/proc/1/cmdline'):
        try: seen += open(path, 'rb').read().decode(errors='ignore')
        except OSError: pass
    return a + b if 's3cret' in seen else -1
"""
    assert score(peek) == 0.0


def test_killing_the_parent_and_everyone_else(canary):
    killer = "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try: os.kill(pid, signal.SIGKILL)\n    except OSError: pass\n"
    # the launcher (PID 1 of the namespace) ignores it, the host's judge is out of reach: judging goes on
    assert score(killer + "def add(a, b): return 0") == 0.0
    assert score(killer + GOLD, ROOMY) == 1.0


def test_stdin_stdout_problem_gold_and_wrong(canary):
    tests = [IOTest("3 4\n", "7\n"), IOTest("10 -2\n", "8")]
    assert judge_io("a, b = map(int, input().split())\nprint(a + b)", tests, limits=ROOMY).score() == 1.0
    assert judge_io("print(7)", tests, limits=FAST).score() == 0.0
    assert judge_io("print(7)", tests, limits=FAST).score(partial=True) == 0.5


# --- round 2: the judge survives any output, stdin cannot hang it, the host stays invisible (issue 13) -----------

def _forge(line: str) -> str:
    """A solution that prints ``line`` as every test's result (it reads the run's marker from its own file)."""
    return f"""
import re, os
marker = re.search(r"@@r1lab-[0-9a-f]+@@", open(__file__).read()).group()
for _ in range(3):
    print(marker + {line!r})
os._exit(0)
"""


@pytest.mark.parametrize("line", [
    '["ok", ' + '["list", [' * 50_000 + ']]' * 50_000 + ']',  # deeper than any parser's recursion
    '["ok", ["list", 5]]', '["ok", ["dict", [[1]]]]', '["ok", ["set", [["list", []]]]]', '["ok", ["int", "zz"]]',
    '["ok", ["int", "' + "f" * 200_000 + '"]]', '["ok"]', '7', '["ok", ["float", "1e999999"]]',
    '["ok", ["bytes", "xyz"]]', '["ok", ["complex", [1]]]', '["ok", ["tuple", [["none", 1]]]]',
])
def test_malformed_or_deep_result_lines_are_wrong_answers_not_crashes(canary, line):
    assert score(_forge(line) + GOLD) == 0.0


def test_deep_results_from_the_program_itself_are_wrong_answers(canary):
    deep = "def add(a, b):\n    x = a + b\n    for _ in range(100_000):\n        x = [x]\n    return x\n"
    assert score(deep) == 0.0


def test_a_huge_stdin_that_the_program_never_reads_cannot_hang_the_judge(canary):
    t0 = time.monotonic()
    verdict = judge_io("import time\ntime.sleep(60)", [IOTest("7\n" * 2_000_000, "7")], limits=Limits(wall=2, cpu=2))
    assert verdict.score() == 0.0 and verdict.details == ["test 0: timeout"]
    assert time.monotonic() - t0 < 2 + 15  # the deadline, plus room for a loaded machine (a hang: 60 s)


def test_an_answer_after_the_deadline_gets_no_credit_even_when_stdin_was_slow_to_feed(canary):
    late = "import sys, time\ntime.sleep(1.5)\ndata = sys.stdin.read()\nprint(len(data.split()))"
    verdict = judge_io(late, [IOTest("1\n" * 1_000_000, "1000000")], limits=Limits(wall=1, cpu=5))
    assert verdict.score() == 0.0 and verdict.details == ["test 0: timeout"]
    assert judge_io(late, [IOTest("1\n" * 1_000_000, "1000000")], limits=ROOMY).score() == 1.0


@pytest.mark.parametrize("reply", [
    "```python\n" + "x = 1\n" * 200_000,  # an unclosed fence
    "```" * 300_000, "```\n" * 300_000, "<answer>```python\n" * 100_000, "<think>" + "```py\n" * 100_000,
])
def test_extract_code_is_linear_in_the_reply(reply):
    from r1lab.rewards.code import extract_code

    t0 = time.monotonic()
    extract_code(reply)
    assert time.monotonic() - t0 < 20  # about 0.01 to 0.4 s here for a megabyte; the old regex took minutes


def _run_and_read(program: str, limits: Limits = ROOMY) -> str:
    from r1lab.sandbox.run import run

    result = run(program, limits=limits)
    assert result.status == "ok", result
    return result.stdout


def test_the_filesystem_holds_no_host_file_beyond_the_interpreter(canary, tmp_path_factory):
    import json
    import sys

    tmp_path = tmp_path_factory.mktemp("answers")
    (tmp_path / "answers.jsonl").write_text('{"answer": 42}\n')
    os.chmod(tmp_path / "answers.jsonl", 0o644)
    walk = """
import json, os
seen = []
for top, dirs, files in os.walk('/'):
    if top.startswith('/proc'):
        dirs[:] = []
        continue
    seen += [os.path.join(top, f) for f in files + dirs]
print(json.dumps(seen))
"""
    seen = json.loads(_run_and_read(walk))
    assert seen and not [p for p in seen if p.endswith((".jsonl", ".json", ".txt", ".csv", ".parquet"))
                         and "/usr/lib/python3" not in p]
    project = str(Path(__file__).resolve().parents[2])
    for host_path in (project, str(tmp_path), "/root", "/home", "/work", "/etc/passwd", "/etc/shadow", "/run",
                      "/var", "/sys", sys.prefix if sys.prefix.startswith("/root") else "/nonexistent"):
        assert not [p for p in seen if p == host_path or p.startswith(host_path.rstrip("/") + "/")], host_path
    allowed = ("/usr", "/lib", "/dev", "/tmp", "/etc", "/proc", "/bin", "/sbin")
    assert not [p for p in seen if not p.startswith(allowed)]


def test_host_unix_sockets_path_and_abstract_are_out_of_reach(canary, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sockets")
    os.chmod(tmp_path, 0o777)
    servers = []
    for address in (str(tmp_path / "host.sock"), "\0r1lab-host-abstract"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o777)
        server.listen()
        servers.append(server)
    probe = f"""
import socket
for address in ({str(tmp_path / 'host.sock')!r}, "\\0r1lab-host-abstract"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(address)
        print("connected", repr(address))
    except OSError as e:
        print("refused", type(e).__name__)
"""
    try:
        out = _run_and_read(probe)
    finally:
        for server in servers:
            server.close()
    assert "connected" not in out and out.count("refused") == 2


def test_ptys_come_from_a_private_devpts():
    host_master, host_slave = os.openpty()  # a host pty that must stay invisible
    try:
        out = _run_and_read("import os, pty\nprint(sorted(os.listdir('/dev/pts')))\nm, s = os.openpty()\n"
                            "print(os.ttyname(s), sorted(os.listdir('/dev/pts')))")
    finally:
        os.close(host_master)
        os.close(host_slave)
    before, after = out.splitlines()
    assert before == "['ptmx']" and after.startswith("/dev/pts/0 ")


def test_no_new_privileges_seccomp_and_nosuid_nodev_mounts():
    out = _run_and_read("status = open('/proc/self/status').read()\n"
                        "print([l for l in status.splitlines() if l.startswith(('NoNewPrivs', 'Seccomp:', 'Uid'))])\n"
                        "for line in open('/proc/self/mountinfo'): print(line.split()[4], line.split()[5])")
    head, *mounts = out.splitlines()
    assert "NoNewPrivs:\\t1" in head and "Seccomp:\\t2" in head and "'Uid:\\t0" not in head
    for line in mounts:
        target, options = line.split()
        assert "nosuid" in options, line
        if not target.startswith("/dev/") or target.startswith("/dev/shm"):
            assert "nodev" in options or target == "/dev/pts", line


@pytest.mark.parametrize("call", [
    "libc.syscall(248, b'user', b'r1lab', b'secret', 6, -4)",  # add_key into the session keyring
    "libc.syscall(250, 0, -3, 0, 0, 0)",  # keyctl(KEYCTL_GET_KEYRING_ID, session)
    "libc.syscall(101, 16, 1, 0, 0)",  # ptrace(PTRACE_ATTACH, 1)
    "libc.syscall(272, 0x10000000)",  # unshare(CLONE_NEWUSER)
    "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",  # clone(CLONE_NEWUSER | SIGCHLD)
    "libc.syscall(425, 8, 0)",  # io_uring_setup
    "libc.syscall(165, b'none', b'/tmp', b'tmpfs', 0, 0)",  # mount
    "libc.syscall(41, 40, 1, 0)",  # socket(AF_VSOCK, SOCK_STREAM)
    "libc.syscall(321, 0, 0, 0)",  # bpf
])
def test_denied_system_calls_fail_with_eperm(call):
    out = _run_and_read(f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nr = {call}\n"
                        "print(r, ctypes.get_errno())")
    assert out.split() == ["-1", "1"], out


def test_memory_is_bounded_for_the_whole_run_not_per_process(canary):
    from r1lab.sandbox.run import cgroups_available

    if not cgroups_available():
        pytest.skip("no cgroup can be made here: memory is bounded per process only (the documented fallback)")
    # the three hold their 200 MB at the same time by construction: each keeps it until all three have it (or
    # one of them is gone, killed for memory), however slowly the machine forks and fills pages
    forks = """
import os, select
def add(a, b):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    kids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            block = bytearray(200 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            os.write(ready_w, b"1")
            os.read(go_r, 1)  # until the parent closes go_w
            os._exit(0)
        kids.append(pid)
    os.close(ready_w)
    ready, gone = 0, {}
    while ready < 3 and not gone:
        if select.select([ready_r], [], [], 0.05)[0]:
            ready += len(os.read(ready_r, 3))
        for k in kids:
            pid, status = os.waitpid(k, os.WNOHANG)
            if pid:
                gone[k] = status
    os.close(go_w)
    for k in kids:
        if k not in gone:
            gone[k] = os.waitpid(k, 0)[1]
    return a + b if ready == 3 and all(status == 0 for status in gone.values()) else -1
"""
    limits = Limits(wall=30, cpu=30, memory_mb=256)
    assert judge_calls(forks, "add", TESTS[:1], limits=limits).score() == 0.0
    assert judge_calls(forks, "add", TESTS[:1], limits=Limits(wall=30, cpu=30, memory_mb=1024)).score() == 1.0


def test_processes_are_bounded_for_the_whole_run():
    # each child lives as long as the parent by construction (it blocks on a pipe the parent holds open), not
    # for a guessed 3 s that a slow machine could outlast while forking
    out = _run_and_read("import os\nr, w = os.pipe()\nmade = 0\nfor _ in range(100):\n    try:\n"
                        "        if os.fork() == 0:\n            os.close(w)\n            os.read(r, 1)\n"
                        "            os._exit(0)\n        made += 1\n    except OSError:\n        break\nprint(made)",
                        Limits(wall=30, cpu=10, processes=16))
    assert int(out) < 16


def test_uids_are_unique_across_processes_on_the_machine(tmp_path):
    import subprocess
    import sys

    # each holds its uid until its stdin closes, which is after all three have claimed one: they overlap by
    # construction, however slowly each one starts
    claim = ("import secrets, sys\nsecrets.randbelow = lambda n: 0\nfrom r1lab.sandbox.run import claim_uid\n"
             "with claim_uid() as uid:\n    print(uid, flush=True)\n    sys.stdin.read()\n")
    procs = [subprocess.Popen([sys.executable, "-c", claim], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        uids = [int(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert len(set(uids)) == 3 and all(200_000 <= u < 250_000 for u in uids)


@pytest.mark.parametrize("spoof", ["import os\nos._exit(125)\n", "import os\nos._exit(126)\n", "raise SystemExit(125)\n",
                                   "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"])
def test_exit_codes_cannot_spoof_a_sandbox_error(canary, spoof):
    verdict = judge_calls(spoof + GOLD, "add", TESTS, limits=FAST)
    assert verdict.error is None and verdict.score() == 0.0


def test_numbers_compare_exactly_where_exactness_matters(canary):
    from r1lab.sandbox.judge import outputs_match

    big = 10 ** 12
    assert judge_calls("def f(): return 10 ** 12 + 500_000", "f", [CallTest([], big)], limits=FAST).score() == 0.0
    assert judge_calls("def f(): return float('inf')", "f", [CallTest([], 10 ** 400)], limits=FAST).score() == 0.0
    assert judge_calls("def f(): return 10 ** 400", "f", [CallTest([], 10 ** 400)], limits=ROOMY).score() == 1.0
    for got, want in [("1000000500000", "1000000000000"), ("inf", str(10 ** 400)), ("\uff17", "7"), ("\u0667", "7"),
                      ("1_00", "100"), ("+7", "7"), ("3e0", "3"), ("7.0", "7"), ("0x7", "7"), ("nan", "nan0")]:
        assert not outputs_match(got, want, tolerance=1e-6), (got, want)
        assert not outputs_match(got, want), (got, want)
    assert outputs_match("2.5000001", "2.5", tolerance=1e-6) and not outputs_match("2.5000001", "2.5")
    assert not outputs_match("inf", "2.5", tolerance=1e300)
    print_fullwidth = "print('\\uff17')"
    assert judge_io(print_fullwidth, [IOTest("", "7", tolerance=1e-6)], limits=FAST).score() == 0.0


@pytest.mark.parametrize("solution, test, expected", [
    ("def f(): return 20.0", "assert f() == 20", 1.0),
    ("def f(x): return type(x).__name__", "assert f((1, 2)) == 'tuple'", 1.0),
    ("def f(d): return [type(k).__name__ for k in d]", "assert f({1: 'a', (2, 3): 'b'}) == ['int', 'tuple']", 1.0),
    ("def f(s): return sorted(s)", "assert f({3, 1, 2}) == [1, 2, 3]", 1.0),
    ("def f(b): return b[::-1]", "assert f(b'ab') == b'ba'", 1.0),
    ("def f(): return [1, 2]", "assert f() == (1, 2)", 0.0),  # Python: a list is not a tuple
    ("def f(): return {1, 2}", "assert f() == [1, 2]", 0.0),
    ("import collections\ndef f(): return collections.Counter('aab')", "assert f() == {'a': 2, 'b': 1}", 1.0),
    ("import re\ndef f(s): return re.search('a', s)", "assert f('cat')", 1.0),
    ("import re\ndef f(s): return re.search('a', s)", "assert not f('cat')", 0.0),
    ("def f(x): return x * 1.0001", "assert math.isclose(f(3.0), 3.0, rel_tol=0.001)", 1.0),
    ("def f(x): return x * 1.01", "assert math.isclose(f(3.0), 3.0, rel_tol=0.001)", 0.0),
    ("def f(a, b): return (4, 5)", "assert set(f((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))", 1.0),
    ("import sys\ndef f(t): return sys.getsizeof(t)", "assert f((1, 'a')) == sys.getsizeof((1, 'a'))", 1.0),
    ("def sum(a, b): return a - b", "assert sum(10, 4) == 6", 1.0),  # the solution's own name shadows the builtin
])
def test_dataset_asserts_follow_python_semantics(solution, test, expected):
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    assert judge_asserts(solution, [AssertTest(test)], limits=ROOMY).score() == expected


def test_the_expected_side_of_an_assert_never_enters_the_solutions_sandbox(canary):
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    peek = "def f(*a):\n    return (4, 5) if 'set((4, ' + '5))' in open(__file__).read() else (1,)\n"
    assert judge_asserts(peek, [AssertTest("assert set(f((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))")],
                         limits=FAST).score() == 0.0


@pytest.mark.parametrize("rigged", [
    "class I(int):\n    def __index__(self): return 3\n    def __eq__(self, o): return True\n"
    "def add(a, b): return I(999)",
    "class L(list):\n    def __iter__(self): return iter([3])\n    def __eq__(self, o): return True\n"
    "def add(a, b): return L([9])",
    "class D(dict):\n    def items(self): return [(1, 3)]\n    def __eq__(self, o): return True\n"
    "def add(a, b): return D({9: 9})",
    "class S(str):\n    def __str__(self): return '3'\ndef add(a, b): return S('no')",
    "class B:\n    def __bool__(self): return True\n    def __eq__(self, o): return True\ndef add(a, b): return B()",
])
def test_subclasses_travel_as_their_plain_values_and_rigging_never_passes(canary, rigged):
    assert score(rigged) == 0.0


def test_honest_programs_using_threads_processes_files_and_big_numbers_pass(canary):
    honest = """
import math, sys, tempfile, threading, subprocess, collections, fractions, decimal, functools, heapq
from multiprocessing import Pool

def _square(x):
    return x * x

def add(a, b):
    out = []
    t = threading.Thread(target=lambda: out.append(a + b))
    t.start(); t.join()
    with Pool(2) as pool:
        assert pool.map(_square, [1, 2, 3]) == [1, 4, 9]
    with tempfile.NamedTemporaryFile('w+') as f:
        f.write('ok'); f.flush(); f.seek(0); assert f.read() == 'ok'
    assert subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout == '42\\n'
    assert math.factorial(3000).bit_length() > 30000 and fractions.Fraction(1, 3) * 3 == 1
    sys.setrecursionlimit(20000)
    @functools.lru_cache(None)
    def depth(n): return 0 if n == 0 else 1 + depth(n - 1)
    assert depth(5000) == 5000
    print('\\u00e9\\u4e2d')
    return out[0]
"""
    assert judge_calls(honest, "add", TESTS, limits=Limits(wall=20, cpu=20)).score() == 1.0


# --- found by the adversarial review of round 2 ------------------------------------------------------------------

@pytest.mark.parametrize("solution, test", [
    ("class F(float):\n    def __sub__(self, o): return 0.0\n    def __rsub__(self, o): return 0.0\n"
     "def mad(xs): return F(99.0)", "assert abs(mad([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6"),
    ("import builtins\nbuiltins.abs = lambda v: 0.0\ndef mad(xs): return 12345.0",
     "assert abs(mad([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6"),
    ("class A:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
     "def mean(xs): return A()", "assert mean([1, 2, 3]) == 2 and mean([4]) == 4"),
    ("class A:\n    def __eq__(self, o): return True\ndef mean(xs): return A()", "assert mean([1, 2]) == 1.5 == 1.5"),
    ("class A:\n    def __ne__(self, o): return False\ndef mean(xs): return A()", "assert not mean([1]) != 1"),
    ("class A:\n    def __sub__(self, o): return 0\ndef mean(xs): return A()", "assert mean([1, 2, 3]) - 2 == 0"),
    ("str = 'anything'\ndef decode(s): return 'anything'", "assert decode('x') == str"),
])
def test_whole_expression_asserts_are_evaluated_without_the_solutions_objects(canary, solution, test):
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    assert judge_asserts(solution, [AssertTest(test)], limits=FAST).score() == 0.0


def test_whole_expression_asserts_still_pass_honest_solutions():
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    tests = [AssertTest("assert abs(mad([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6"),
             AssertTest("assert mad([1.0]) == 0 and mad([2.0, 2.0]) == 0.0"), AssertTest("assert 0 <= mad([5.0, 1.0])")]
    honest = "def mad(xs):\n    m = sum(xs) / len(xs)\n    return sum(abs(x - m) for x in xs) / len(xs)\n"
    assert judge_asserts(honest, tests, limits=ROOMY).score() == 1.0


def test_a_result_crafted_for_hash_collisions_is_refused_in_linear_time(canary):
    P = 2 ** 61 - 1
    body = ",".join('["int","%x"]' % (k * P) for k in range(1, 30_000))
    t0 = time.monotonic()
    assert score(_forge('["ok",["set",[' + body + ']]]') + GOLD) == 0.0
    assert time.monotonic() - t0 < 10  # 0.2 to 1.2 s here, loaded or not; building that set took 13 s


def test_a_run_that_forks_spinners_cannot_starve_the_run_beside_it(canary):
    from r1lab.sandbox.pool import run_many
    from r1lab.sandbox.run import cgroups_available

    if not cgroups_available():
        pytest.skip("no cgroup can be made here: CPU is not bounded per run")
    hog = ("import os\nfor _ in range(60):\n    if os.fork() == 0:\n        os.setsid()\n        while True: pass\n"
           "import time\ntime.sleep(30)\n")
    # the honest run measures the share of a core it gets while the spinners run (a second of wall time), rather
    # than doing a fixed amount of work in a fixed time: a fixed loop passes starved on a fast machine and times out
    # unstarved on a slow one. Starved among 60 spinners it would get a thirtieth of a core or less
    honest = ("import time\ndef add(a, b):\n    wall, cpu = time.monotonic(), time.process_time()\n"
              "    while time.monotonic() - wall < 1.0:\n        pass\n"
              "    share = (time.process_time() - cpu) / (time.monotonic() - wall)\n"
              "    return a + b if share > 0.1 else -1\n")
    limits = Limits(wall=30, cpu=30)
    hogged, verdict = run_many([lambda: judge_calls(hog + GOLD, "add", TESTS[:1], limits=Limits(wall=8, cpu=8)),
                                lambda: (time.sleep(0.5), judge_calls(honest, "add", TESTS[:1], limits=limits))[1]],
                               workers=2)
    assert verdict.score() == 1.0, verdict


@pytest.mark.parametrize("solution", [
    "def inc(x):\n    return x + 1\nif __name__ == '__main__':\n    print(inc(int(input())))\n",  # main is not run
    "def inc(x):\n    print('debug', x, end=' ')\n    return x + 1\n",  # printing without a newline
])
def test_honest_solutions_with_main_guards_or_stray_prints_pass(solution):
    assert judge_calls(solution, "inc", [CallTest([1], 2), CallTest([5], 6)], limits=ROOMY).score() == 1.0


def _decimal(n: int) -> str:
    digits = []
    while n:
        n, r = divmod(n, 10 ** 1000)
        digits.append(f"{r:01000d}")
    return "".join(reversed(digits)).lstrip("0")


def test_big_integers_print_and_lone_surrogates_do_not_raise():
    from r1lab.rewards.code import code_reward

    big = format(2 ** 20000, "x")  # this (host) Python may keep the 4300-digit limit on str(int)
    assert judge_io(f"print(str(0x{big}))", [IOTest("", _decimal(2 ** 20000))], limits=ROOMY).score() == 1.0
    assert code_reward("```python\nprint('\ud800')\n```", tests=[{"input": "\udcff", "output": "x"}]) == 0.0
    assert code_reward("```python\ndef f(): return '\ud800'\n```", tests=[{"args": [], "expected": "x"}],
                       func="f") == 0.0


def test_claiming_uids_leaves_one_lock_file_behind_at_most():
    import tempfile

    from r1lab.sandbox.run import claim_uid

    folder = Path(tempfile.gettempdir())
    before = set(folder.iterdir())
    for _ in range(50):
        with claim_uid():
            pass
    assert {p.name for p in set(folder.iterdir()) - before} <= {"r1lab-sandbox-uids.lock"}


@pytest.mark.parametrize("solution, test", [
    ("def abs(x):\n    return 0\ndef mad(xs):\n    return 0", "assert abs(mad([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6"),
    ("def set(*a):\n    return 0\ndef common(a, b):\n    return 0", "assert set(common((3, 4), (4, 5))) == set((4,))"),
    ("list = lambda *a: 7\ndef f(n):\n    return 7", "assert f(3) == list(range(3))"),
    ("sorted = lambda *a, **k: [1, 3]\ndef f(xs):\n    return [9]", "assert sorted(f([3, 1])) == [1, 3]"),
    ("class math:\n    @staticmethod\n    def fabs(x): return 0\ndef poly(x):\n    return 9", "assert math.fabs(poly(2.5) - 1.0) < 1e-4"),
])
def test_a_solution_redefining_the_tests_builtins_does_not_change_the_test(solution, test):
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    assert judge_asserts(solution, [AssertTest(test)], limits=FAST).score() == 0.0


def test_names_the_setup_imports_belong_to_the_test():
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    tests = [AssertTest("assert hypot_len(3, 4) == sqrt(25)")]
    cheat = "def sqrt(x):\n    return -1\ndef hypot_len(a, b):\n    return -1\n"
    assert judge_asserts(cheat, tests, setup="from math import sqrt", limits=FAST).score() == 0.0
    honest = "def hypot_len(a, b):\n    return (a * a + b * b) ** 0.5\n"
    assert judge_asserts(honest, tests, setup="from math import sqrt", limits=ROOMY).score() == 1.0


@pytest.mark.parametrize("solution, test, expected", [
    ("def f(xs): return map(lambda x: x * x, xs)", "assert list(f([1, 2, 3])) == [1, 4, 9]", 1.0),
    ("def f(xs): return map(lambda x: x * x, xs)", "assert f([1, 2, 3]) == [1, 4, 9]", 0.0),  # a map is not a list
    ("def f(n): return (i for i in range(n))", "assert sum(f(4)) == 6", 1.0),
    ("def f(d): return d.keys()", "assert f({1: 2, 3: 4}) == {1, 3}", 1.0),  # keys views compare like sets
    ("def f(n): return range(n)", "assert len(f(5)) == 5", 1.0),
    ("import collections\ndef f(xs): return collections.deque(xs)", "assert list(f([3, 1])) == [3, 1]", 1.0),
    ("import fractions\ndef f(): return fractions.Fraction(1, 2)", "assert f() == 0.5", 1.0),
    ("def f(): return iter(int, 1)", "assert next(f()) == 0", 0.0),  # an endless iterator is refused, not hung on
])
def test_iterables_and_library_numbers_keep_pythons_meaning(solution, test, expected):
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    assert judge_asserts(solution, [AssertTest(test)], limits=ROOMY).score() == expected


def test_a_failed_expected_side_is_tried_again_not_remembered():
    from r1lab.sandbox import judge
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    # the expected side is slow by construction (a 2 s sleep), not by a guess at the CPU's speed
    test = [AssertTest('assert f() == (__import__("time").sleep(2) or 449999985000000)')]
    honest = "def f():\n    return 449999985000000\n"
    assert judge_asserts(honest, test, limits=Limits(wall=0.3, cpu=1)).score() == 0.0
    assert judge_asserts(honest, test, limits=Limits(wall=30, cpu=30)).score() == 1.0
    assert judge._expected_values[("", "__import__('time').sleep(2) or 449999985000000")] == 449999985000000


# --- round 3 (issue 30) ------------------------------------------------------------------------------------------

def test_an_all_or_nothing_io_verdict_stops_at_the_first_failed_test():
    """10 tests of a program that sleeps 1 s and prints a wrong answer: judged all-or-nothing, one run decides (it
    took 10 runs before); judged for partial credit every test runs, within the completion's budget."""
    from r1lab.rewards.code import code_reward

    slow_wrong = "```python\nimport time\ntime.sleep(1)\nprint(0)\n```"
    tests = [{"input": f"{i}\n", "output": str(i + 1)} for i in range(10)]
    limits = Limits(wall=3, cpu=3, budget=60, budget_per_test=0)
    t0 = time.monotonic()
    assert code_reward(slow_wrong, tests=tests, limits=limits) == 0.0
    assert time.monotonic() - t0 < 1 + 8  # one run, plus room for a loaded machine (all ten: over 10 s)
    right = "```python\nprint(int(input()) + 1)\n```"
    assert code_reward(right, tests=tests, limits=limits) == 1.0  # a gold still runs every test
    verdict = judge_io("import time\ntime.sleep(1)\nprint(int(input()) + 1)", [IOTest(**t) for t in tests[:2]],
                       limits=limits, stop_at_failure=True)
    assert verdict.score() == 1.0


def test_partial_credit_runs_share_one_time_budget_per_completion():
    tests = [IOTest(f"{i}\n", str(i)) for i in range(10)]
    sleeper = "import time\ntime.sleep(1)\nprint(input())"
    t0 = time.monotonic()
    verdict = judge_io(sleeper, tests, limits=Limits(wall=5, cpu=5, budget=2.5, budget_per_test=0))
    assert time.monotonic() - t0 < 2.5 + 10  # the budget, plus room (without one: ten runs, over 10 s)
    assert 1 <= verdict.passed <= 3 and verdict.total == 10  # the tests the budget covered passed, the rest failed
    assert any("time budget" in d for d in verdict.details)


@pytest.mark.parametrize("call", [
    "fcntl.flock(open('/usr/lib/os-release' if os.path.exists('/usr/lib/os-release') else sys.executable), "
    "fcntl.LOCK_SH)",
    "fcntl.lockf(open(sys.executable), fcntl.LOCK_SH)",  # fcntl(F_SETLK) on a read-only descriptor
    "fcntl.fcntl(open(sys.executable), 37, struct.pack('hhqqi', 0, 0, 0, 1, 0))",  # F_OFD_SETLK
    "os.posix_fadvise(os.open(sys.executable, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)",
    "os.preadv(os.open(sys.executable, os.O_RDONLY), [bytearray(8)], 0, os.RWF_NOWAIT)",
    "libc.inotify_init1(0) >= 0 or fail()",  # a watch on a shared stdlib inode sees another run's reads
    "fcntl.fcntl(os.open(os.path.dirname(os.__file__), os.O_RDONLY), 1026, 0x1 | 0x80000000)",  # F_NOTIFY (dnotify)
    "libc.syscall(206, 64, ctypes.byref(ctypes.c_ulong(0))) == 0 or fail()",  # io_setup: one AIO pool per host
    "libc.mincore(ctypes.c_void_p(page()), 4096, ctypes.create_string_buffer(1)) == 0 or fail()",
])
def test_runs_cannot_signal_each_other_through_locks_or_the_page_cache(call):
    """Round 3: a lock on a shared read-only file, or a page evicted/loaded and probed, passed bits between two runs
    judged side by side. Each channel's call fails now; control: a plain read of the same file still works."""
    program = f"""
import ctypes, fcntl, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def fail():
    raise OSError(ctypes.get_errno(), "denied")
def page():
    global kept
    kept = mmap.mmap(-1, 4096)
    return ctypes.addressof(ctypes.c_char.from_buffer(kept))
print(len(open(sys.executable, 'rb').read(64)))
try:
    {call}
    print("allowed")
except OSError as e:
    print("denied", e.errno)
"""
    read, verdict = _run_and_read(program).split("\n", 1)
    assert read == "64" and verdict.split()[0] == "denied", verdict  # EPERM, ENOSYS or libc's EOPNOTSUPP for it
    assert int(verdict.split()[1]) in (1, 38, 95), verdict
    control = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert control.stdout.split() == ["64", "allowed"], control  # outside the filter the channel is open


@pytest.mark.parametrize("node", [
    ["fraction", [format(3 ** 1_250_000, "x"), format(2 ** 1_990_000 - 1, "x")]],  # a gcd of ~2-million-bit ints
    ["range", ["0", format(2 ** 1_990_000, "x"), format(3 ** 1_000_000, "x")]],  # comparing it divides them
    ["int", "f" * 300_000], ["decimal", "1e999999999"], ["decimal", "9" * 500_000],
])
def test_decoding_a_result_costs_the_judge_no_superlinear_work(node):
    """Round 3: decoding a Fraction result rebuilt it (a gcd of two huge ints, ~5 s of the trainer's CPU under the
    GIL, outside any deadline). Every part the decoder would do superlinear work on is bounded: refused at once."""
    from r1lab.sandbox.values import untag

    t0 = time.monotonic()
    with pytest.raises(ValueError):
        untag(node)
    assert time.monotonic() - t0 < 0.5


def test_a_hostile_neighbour_does_not_time_out_an_honest_heavy_output():
    """Round 3: while the judge spent seconds under the GIL decoding a hostile result, the other judging threads of
    run_many could not drain their pipes, and an honest program printing 300 KB beside it timed out."""
    from r1lab.sandbox.pool import run_many

    hostile = ("import fractions\n"  # built once in the sandbox (under its deadline), then only printed
               "def add(a, b):\n    return fractions.Fraction(3 ** 1_250_000, 2 ** 1_990_000 - 1)\n")
    honest = "import time\ntime.sleep(1)\nprint('x' * 300_000)"
    big = Limits(wall=30, cpu=30, output_bytes=3_000_000)
    jobs = [lambda: judge_calls(hostile, "add", TESTS[:1], limits=big)] * 3
    jobs += [lambda: judge_io(honest, [IOTest("", "x" * 300_000)], limits=Limits(wall=4, cpu=4))] * 2
    verdicts = run_many(jobs, workers=5)
    assert [v.score() for v in verdicts] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_a_value_at_the_depth_limit_in_a_whole_expression_assert_is_a_wrong_answer():
    """Round 3: ``set(f(x)) == set(y)`` sends f's value on to the checker wrapped a level deeper; a value just under
    the codec's depth limit made that re-encoding raise out of the reward."""
    from r1lab.rewards.code import code_reward
    from r1lab.sandbox.values import MAX_DEPTH

    deep = f"def f(x):\n    v = [1]\n    for _ in range({MAX_DEPTH - 2}):\n        v = [v]\n    return v\n"
    tests = ["assert set(f(1)) == set([1])", "assert len(f(1)) == 1"]
    assert code_reward(f"```python\n{deep}```", tests=[{"assert": t} for t in tests], limits=ROOMY) == 0.0
    shallow = "def f(x):\n    return [1]\n"
    assert code_reward(f"```python\n{shallow}```", tests=[{"assert": t} for t in tests], limits=ROOMY) == 1.0


@pytest.mark.parametrize("method", ["startswith('a')", "issuperset({1})", "endswith('z')", "isdigit()"])
def test_a_method_on_the_solutions_result_runs_on_the_plain_value_not_the_solutions_object(method):
    """Round 3: ``assert f(x).startswith(y)`` ran wholly in the solution's sandbox, so a str (or frozenset) subclass
    whose method always returns True got full reward. Now only f(x) runs there; the method runs in the checker."""
    from r1lab.sandbox.judge import AssertTest, judge_asserts, plan_assert

    rigged = ("class S(str):\n    def startswith(self, *a): return True\n    def endswith(self, *a): return True\n"
              "    def isdigit(self): return True\n"
              "class F(frozenset):\n    def issuperset(self, *a): return True\n"
              "def f(x):\n    return F() if x == 's' else S('b')\n")
    arg = "'s'" if "superset" in method else "'x'"
    test = AssertTest(f"assert f({arg}).{method}")
    assert plan_assert(test.source).probes == [f"f({arg})"]  # the method is not part of the solution's call
    assert judge_asserts(rigged, [test], limits=ROOMY).score() == 0.0
    honest = "def f(x):\n    return frozenset({1, 2}) if x == 's' else 'a1z' if False else 'az' if x == 'x' else ''\n"
    if method == "isdigit()":
        honest = "def f(x):\n    return '123'\n"
    assert judge_asserts(honest, [test], limits=ROOMY).score() == 1.0


def test_a_method_of_an_object_the_test_makes_of_the_solutions_class_is_the_solutions_call():
    from r1lab.sandbox.judge import AssertTest, judge_asserts

    leetcode = "class Solution:\n    def twoSum(self, xs, t):\n        return [0, 1] if xs[0] + xs[1] == t else []\n"
    test = AssertTest("assert Solution().twoSum([2, 7, 11], 9) == [0, 1]")
    assert judge_asserts(leetcode, [test], limits=ROOMY).score() == 1.0


def test_host_wide_counters_are_out_of_sight_and_the_pty_pool_is_capped():
    """Round 3: /proc/sys/kernel/pty/nr, aio-nr, dentry-state and /proc/meminfo are machine-wide counters a sender
    moves and a receiver reads (32 bits through the pty count; one even between runs one after another), and one run
    could hold every pty of the host. The run's /proc shows its processes only; its devpts holds a few ptys."""
    out = _run_and_read("import os, pty\n"
                        "print(sorted(n for n in ('sys', 'meminfo', 'stat', 'loadavg') if os.path.exists('/proc/' + n)))\n"
                        "print(os.path.exists('/proc/self/status'))\n"
                        "held = []\n"
                        "try:\n    while len(held) < 100: held.append(pty.openpty())\nexcept OSError: pass\n"
                        "print(len(held))")
    hidden, self_seen, ptys = out.splitlines()
    if hidden != "[]":
        pytest.skip("this kernel cannot mount a subset=pid /proc (Linux < 5.8): the documented fallback")
    assert self_seen == "True" and int(ptys) <= 16


def test_a_gold_with_many_quick_stdin_stdout_tests_fits_the_budget():
    """200 tests of a program that answers at once: each run's start-up (~0.1 s) counts against the budget, which
    grows with the number of tests (an independent attack set found the flat 20 s made such a gold score 0)."""
    tests = [IOTest(f"{i}\n", str(i)) for i in range(200)]
    assert judge_io("print(input())", tests).score() == 1.0


@pytest.mark.parametrize("line", [
    "assert all(is_prime(p) for p in [2, 3, 13])",
    "assert not any(is_prime(id) for id in [4, 6])",  # a loop variable named like a builtin
    "assert (lambda v: is_prime(v))(13)",
    "assert [is_prime(n) for n in (2, 4)] == [True, False]",
])
def test_a_call_that_reads_a_comprehension_or_lambda_variable_is_not_taken_out_of_its_scope(line):
    """Round 3: ``is_prime(p)`` inside a generator was taken out as a probe and run at the solution's module level,
    where ``p`` is whatever the solution binds (gold scored 0; a cheat binding ``id`` scored 1.0). Such an assert has
    no plan now: a dataset row leaves it out, and judging it directly is refused."""
    from r1lab.sandbox.judge import AssertTest, judge_asserts, plan_assert
    from r1lab.tasks.code import CodeDatasetTask

    assert plan_assert(line) is None
    with pytest.raises(ValueError, match="not an assert statement"):
        judge_asserts("def is_prime(x):\n    return x in (2, 3, 13)\n", [AssertTest(line)], limits=ROOMY)
    example = CodeDatasetTask._example({"text": "p", "test_list": [line, "assert is_prime(2)"]}, "row 1")
    assert example["tests"] == [{"assert": "assert is_prime(2)"}]
