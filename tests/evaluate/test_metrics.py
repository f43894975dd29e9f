"""Metrics against brute force, voting by equivalence, and interval coverage on simulated data."""

import itertools

import numpy as np
import pytest

from r1lab.evaluate.metrics import (
    bootstrap_ci,
    cons_at_k,
    estimate,
    majority_answer,
    normal_ci,
    pass_at_k,
    per_problem_pass_at_k,
    summarize,
)
from r1lab.rewards.math import verify_math


def brute_force_pass_at_k(n, c, k):
    """Share of all k-subsets of n samples (c of them correct) holding at least one correct sample."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_exhaustive_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_stays_finite_for_large_n():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0 < pass_at_k(1000, 3, 64) < 1


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_1_is_the_mean_correctness_over_samples():
    correct = [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert per_problem_pass_at_k(correct, 1).tolist() == [0.25, 0.75, 0.0]
    assert summarize(correct)["metrics"]["pass@1"]["value"] == pytest.approx(1 / 3)


def test_cons_at_k_counts_equivalent_answers_as_one_vote():
    # three ways to write one half beat two identical strings "3"
    answers = ["3", "1/2", "0.5", "\\frac{1}{2}", "3"]
    correct = [0, 1, 1, 1, 0]
    assert cons_at_k(answers, correct, verify_math) == 1.0
    assert cons_at_k(answers, correct, lambda a, b: a == b) == 0.0  # string equality would pick "3"


def test_majority_vote_ties_go_to_the_earliest_answer_and_blanks_do_not_vote():
    same = lambda a, b: a == b  # noqa: E731
    assert majority_answer(["7", "8", "8", "7"], same) == 0
    assert majority_answer([None, "", "5"], same) == 2
    assert majority_answer([None, None], same) is None
    assert cons_at_k([None, None], [0, 0], same) == 0.0


def test_summary_reports_every_metric_with_interval_and_sample_spread():
    rng = np.random.default_rng(0)
    correct = [list(rng.integers(0, 2, size=8).astype(float)) for _ in range(30)]
    answers = [[str(int(c)) for c in row] for row in correct]
    s = summarize(correct, answers, lambda a, b: a == b)
    assert set(s["metrics"]) == {"pass@1", "pass@2", "pass@4", "pass@8", "cons@8"}
    for m in s["metrics"].values():
        assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["sample_sd"] > 0 and m["n"] == 30
    values = [s["metrics"][f"pass@{k}"]["value"] for k in (1, 2, 4, 8)]
    assert values == sorted(values)  # more tries never lower pass@k
    assert 0.4 < s["per_problem_sd"] < 0.6


def test_sample_spread_is_zero_when_samples_agree():
    e = estimate(lambda c: per_problem_pass_at_k(c, 1), [[1, 1], [0, 0], [1, 1]])
    assert e.sample_sd == pytest.approx(0, abs=1e-12) and e.value == pytest.approx(2 / 3)


@pytest.mark.parametrize("ci", [lambda s: bootstrap_ci(s, resamples=1000, seed=1), normal_ci])
def test_interval_covers_the_true_mean_about_95_percent_of_the_time(ci):
    """Problems with success rates from Beta(2, 3) (population mean 0.4), k = 4 samples each, n = 80."""
    rng = np.random.default_rng(123)
    hits, reps = 0, 300
    for _ in range(reps):
        p = rng.beta(2, 3, size=80)
        scores = rng.binomial(4, p) / 4
        low, high = ci(scores)
        hits += low <= 0.4 <= high
    assert 0.91 <= hits / reps <= 0.985, hits / reps


def test_interval_shrinks_with_more_problems():
    rng = np.random.default_rng(0)
    small, large = rng.integers(0, 2, 50), rng.integers(0, 2, 2000)
    (a, b), (c, d) = bootstrap_ci(small), bootstrap_ci(large)
    assert d - c < (b - a) / 4
