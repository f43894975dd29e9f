"""The judge's own side is total (issue 30): whatever a sandboxed program prints, the parent decodes, re-encodes and
compares it within a time bound and gives a verdict, never an exception and never "cannot judge".

Property-based (hypothesis): the sandbox is replaced by a stream of arbitrary output lines, most of them after the run's
marker and shaped like the codec's tagged values (any kind, any payload, nesting around the depth limit, huge ints,
fractions, ranges and decimals), so the judge's decode / re-encode / compare path sees what a hostile program could
print. The real sandbox is exercised by test_attacks.py; this test is about the code that runs outside it."""

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from r1lab.sandbox import judge
from r1lab.sandbox.judge import AssertTest, CallTest, judge_asserts, judge_calls
from r1lab.sandbox.run import Result
from r1lab.sandbox.values import MAX_DEPTH

KINDS = ["none", "bool", "int", "float", "complex", "str", "bytes", "list", "tuple", "set", "frozenset", "dict",
         "fraction", "range", "decimal", "iter", "keys", "values", "deque", "items", "nope"]
HUGE = ["f" * 70_000, "1" + "0" * 20_000, "7" * 5_000]  # ints past the bounds, and just within them
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                   st.sampled_from(HUGE + ["inf", "nan", "1e999999999", "-0", "zz", "ff" * 16]))


def tagged(children):
    return st.one_of(st.lists(children, max_size=4),
                     st.tuples(st.sampled_from(KINDS), children).map(list),
                     st.tuples(st.sampled_from(["fraction", "range"]),
                               st.lists(st.sampled_from(HUGE + ["0", "1", "-3"]), min_size=2, max_size=3)).map(list))


NODES = st.recursive(LEAVES, tagged, max_leaves=30)


@st.composite
def deep(draw):
    """A list nested right around the codec's depth limit, as a value the judge may be asked to wrap once more."""
    node = ["int", "1"]
    for _ in range(draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 2))):
        node = ["list", [node]]
    return node


LINES = st.one_of(
    st.tuples(st.just("ok"), st.one_of(NODES, deep())).map(json.dumps),
    st.tuples(st.just("raised"), NODES).map(json.dumps),
    st.text(max_size=40),
    NODES.map(json.dumps),
)

GOLD = "def add(a, b):\n    return a + b\n"
CALLS = [CallTest([1, 2], 3), CallTest([[1], [2]], [1, 2]), CallTest(["a", "b"], "ab")]
ASSERTS = [AssertTest(s) for s in (
    "assert add(1, 2) == 3",
    "assert set(add([1], [2])) == {1, 2}",  # judged as a whole expression: values wrapped and re-encoded
    "assert len(add([1], [2])) == 2",
    "assert abs(add(0.1, 0.2) - 0.3) < 1e-9",
    "assert add('a', 'b').startswith('a')",
    "assert not add(0, 0)",
)]


def fake_sandbox(data):
    def run(program, stdin="", limits=None):
        marker = re.search(r"@@r1lab-[0-9a-f]+@@", program).group()
        lines = data.draw(st.lists(st.tuples(st.booleans(), LINES), max_size=8))
        out = "\n".join((marker if marked else "") + line for marked, line in lines)
        return Result("ok", 0, out, "", 0.01, "fake")
    return run


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_the_judge_gives_a_verdict_for_any_output_within_a_time_bound(data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(judge, "run", fake_sandbox(data))
        mp.setattr(judge, "_expected_values", {})  # the fake checker's values must not stay cached for other tests
        for check in (lambda: judge_calls(GOLD, "add", CALLS), lambda: judge_asserts(GOLD, ASSERTS)):
            t0 = time.monotonic()
            verdict = check()
            assert time.monotonic() - t0 < 2.0  # a hostile result once cost the judge ~5 s of CPU after the run
            assert verdict.error is None and 0 <= verdict.passed <= verdict.total
