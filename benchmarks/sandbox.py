"""Sandbox throughput and latency: trivial programs through r1lab.sandbox, one at a time and in parallel, and how
far past its deadline a runaway program is stopped.

Prints the isolation level, jobs per second, p50/p99/max latency of a trivial program (``print(1)``), the max
overshoot of the wall-clock deadline over busy loops, sleeps and a C-level hang, and what judging one solution
costs: a function test (one sandbox), an MBPP-style assert (one), and a whole-expression assert (two: the
solution's calls, then the expression without the solution).

Usage: ``python benchmarks/sandbox.py [--jobs 200] [--workers 8]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from r1lab.sandbox.pool import run_many
from r1lab.sandbox.run import Limits, isolation_level, run


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    print(f"isolation: {isolation_level()}, limits: {run('print(1)').limits}")
    for workers in (1, args.workers):
        latencies = []

        def job(latencies=latencies):
            t = time.perf_counter()
            result = run("print(1)")
            latencies.append(time.perf_counter() - t)
            return result.ok and result.stdout == "1\n"

        t0 = time.perf_counter()
        ok = run_many([job] * args.jobs, workers=workers)
        wall = time.perf_counter() - t0
        print(f"{workers:>2} worker(s): {args.jobs} trivial jobs, {sum(ok)} ok, {args.jobs / wall:.1f} jobs/s; latency "
              f"p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, p99 {percentile(latencies, 0.99) * 1e3:.0f} ms, "
              f"max {max(latencies) * 1e3:.0f} ms")
    overshoots = []
    limits = Limits(wall=1.0, cpu=30)
    for program in ["while True: pass", "import time\ntime.sleep(60)", "x = pow(10, 10 ** 9)",
                    "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')"] * 3:
        result = run(program, limits=limits)
        assert result.status == "timeout", result
        overshoots.append(result.seconds - limits.wall)
    print(f"deadline {limits.wall} s over {len(overshoots)} runaway programs: overshoot mean "
          f"{statistics.mean(overshoots) * 1e3:.0f} ms, max {max(overshoots) * 1e3:.0f} ms")

    from r1lab.sandbox.judge import AssertTest, CallTest, judge_asserts, judge_calls

    solution = "def f(x):\n    return (x, x + 1)\n"
    for name, judge in [("function call", lambda: judge_calls(solution, "f", [CallTest([1], (1, 2))])),
                        ("assert f(1) == (1, 2)",
                         lambda: judge_asserts(solution, [AssertTest("assert f(1) == (1, 2)")])),
                        ("assert set(f(1)) == {1, 2}", lambda: judge_asserts(solution, [AssertTest(
                            "assert set(f(1)) == {1, 2}")]))]:
        seconds = []
        for _ in range(20):
            t = time.perf_counter()
            assert judge().score() == 1.0
            seconds.append(time.perf_counter() - t)
        print(f"judging one solution, {name}: p50 {percentile(seconds, 0.5) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
