"""One test per way untrusted code has beaten local graders: each must earn no reward and leave the host clean
(the canary file outside the sandbox untouched, no sandbox process left behind). The gold solution passes."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from r1lab.sandbox.judge import CallTest, IOTest, judge_calls, judge_io
from r1lab.sandbox.run import Limits, isolation_level

pytestmark = pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and unshare for namespaces")

TESTS = [CallTest([1, 2], 3), CallTest([10, -4], 6), CallTest([0, 0], 0)]
GOLD = "def add(a, b):\n    return a + b\n"
FAST = Limits(wall=3, cpu=2)


def sandbox_processes() -> list[int]:
    """Processes of the sandbox users (uid 200000-249999) still alive on the host."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = int((entry / "status").read_text().split("\nUid:")[1].split()[0])
            except (OSError, IndexError, ValueError):
                continue
            if 200_000 <= uid < 250_000:
                found.append(int(entry.name))
    return found


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("untouched")
    os.chmod(tmp_path, 0o777)  # even a world-writable folder outside the sandbox must stay untouched
    yield path
    assert path.read_text() == "untouched" and sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    deadline = time.monotonic() + 3
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


def score(solution: str, limits: Limits = FAST) -> float | None:
    return judge_calls(solution, "add", TESTS, limits=limits).score()


def test_gold_solution_passes(canary):
    assert score(GOLD) == 1.0


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
    assert time.monotonic() - t0 < FAST.wall + 3


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    hits = []

    def accept():
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                hits.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    thread.join()
    server.close()


@pytest.mark.parametrize("host", ["1.1.1.1", "169.254.169.254", "127.0.0.1", "localhost"])
def test_no_network_outside_loopback_or_metadata(canary, listener, host):
    port, hits = listener
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
    time.sleep(0.3)
    assert hits == []


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
    assert score(killer + GOLD) == 1.0


def test_stdin_stdout_problem_gold_and_wrong(canary):
    tests = [IOTest("3 4\n", "7\n"), IOTest("10 -2\n", "8")]
    assert judge_io("a, b = map(int, input().split())\nprint(a + b)", tests, limits=FAST).score() == 1.0
    assert judge_io("print(7)", tests, limits=FAST).score() == 0.0
    assert judge_io("print(7)", tests, limits=FAST).score(partial=True) == 0.5
