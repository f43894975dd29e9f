"""Evaluation metrics as pure functions over per-problem sample outcomes, with their uncertainty.

The input is one list per problem: ``correct[i][j]`` is 1.0 if sample ``j`` of problem ``i`` was right.

- **pass@1** (the R1 paper's headline): for each problem the mean correctness over its k samples, then the
  mean over problems. With k > 1 this is far less noisy than one greedy or one sampled answer.
- **pass@k** (Chen et al. 2021, the unbiased estimator): the chance that at least one of k samples drawn
  without replacement from a problem's n is right, ``1 - C(n-c, k) / C(n, k)``, averaged over problems.
- **cons@k**: majority vote over the final answers, where two answers are one vote when the verifier says
  they are equivalent (``1/2``, ``0.5`` and ``\\frac{1}{2}``), not when their strings are equal.

Uncertainty, reported with every metric:

- ``ci``: a 95% interval for the metric over the population of problems this set was drawn from. By default
  the percentile bootstrap over problems (10,000 resamples, seeded); ``method="normal"`` gives the analytic
  mean +- z * sd / sqrt(n) instead. The bootstrap needs no normality, so it is also right near 0% and 100%.
- ``sample_sd``: how much the number moves from sampling alone, with the problems fixed: the standard
  deviation of the metric when each problem's samples are redrawn with replacement (what another seed would
  give), scaled by sqrt(k / (k - 1)) so that it is not biased low at small k (for pass@1 this is the
  unbiased per-problem variance over k samples). None at k = 1, where one sample says nothing about the next.
  For pass@1 the mean per-problem standard deviation across samples is reported too.

Left out: intervals for a metric of several benchmarks pooled together, and stratified bootstraps.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
SAMPLE_RESAMPLES = 200


@dataclass
class Estimate:
    """A metric's value over a set, with a 95% interval and its spread from sampling."""

    value: float
    ci_low: float
    ci_high: float
    sample_sd: float | None  # None at one sample per problem: nothing to tell how another draw would move it
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` of ``n`` samples correct (Chen et al. 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2), round(pass_at_k(4, 2, 2), 4)
    (0.25, 1.0, 0.0, 0.8333)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) as a product, which stays exact-ish for large n (no huge binomials)
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def per_problem_pass_at_k(correct: Sequence[Sequence[float]], k: int) -> np.ndarray:
    """pass@k of each problem (pass@1 is the mean correctness of its samples).

    >>> per_problem_pass_at_k([[1, 0, 0, 0], [1, 1, 0, 0]], 1).tolist()
    [0.25, 0.5]
    """
    out = []
    for i, samples in enumerate(correct):
        if len(samples) < k:
            raise ValueError(f"problem {i} has {len(samples)} samples, fewer than k={k}")
        out.append(pass_at_k(len(samples), int(round(sum(samples))), k))
    return np.asarray(out, dtype=float)


def majority_answer(answers: Sequence[str | None], equivalent: Callable[[str, str], bool]) -> int | None:
    """Index of the sample whose answer wins the vote, or None when no sample gave an answer.

    Answers are grouped by ``equivalent`` (each joins the first group whose first answer it matches); the
    largest group wins; a tie goes to the group whose first answer came earliest.

    >>> same = lambda a, b: float(a) == float(b)
    >>> majority_answer(["2", "0.5", "3", ".5"], same), majority_answer([None, None], same)
    (1, None)
    """
    groups: list[list[int]] = []  # sample indices; groups[g][0] is the representative
    for i, answer in enumerate(answers):
        if answer is None or not str(answer).strip():
            continue
        for group in groups:
            if answer == answers[group[0]] or equivalent(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    return max(groups, key=lambda g: (len(g), -g[0]))[0]


def cons_at_k(answers: Sequence[str | None], correct: Sequence[float],
              equivalent: Callable[[str, str], bool]) -> float:
    """1.0 if the majority answer of one problem's samples is correct, else 0.0 (no answers: 0.0).

    >>> same = lambda a, b: a.replace(" ", "") == b.replace(" ", "")
    >>> cons_at_k(["x+1", "x + 1", "2"], [0, 0, 1], same), cons_at_k(["7", "8", "8"], [1, 0, 0], same)
    (0.0, 0.0)
    """
    winner = majority_answer(answers, equivalent)
    return float(correct[winner]) if winner is not None else 0.0


def memoized(equivalent: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    """``equivalent`` with a cache of the pairs already judged (math-verify calls cost milliseconds)."""
    return functools.cache(lambda a, b: bool(equivalent(a, b)))


def bootstrap_ci(scores: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem ``scores`` (resampling problems).

    >>> bootstrap_ci([1.0] * 10)
    (1.0, 1.0)
    """
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks, so memory stays at 1000 x n
        stop = min(resamples, start + 1000)
        means[start:stop] = x[rng.integers(0, len(x), size=(stop - start, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def normal_ci(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Analytic interval mean +- z * sd / sqrt(n) (central limit theorem over problems).

    >>> [round(v, 3) for v in normal_ci([0, 1] * 50)]
    [0.402, 0.598]
    """
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * (x.std(ddof=1) if len(x) > 1 else 0.0) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


CI_METHODS = {"bootstrap": bootstrap_ci, "normal": normal_ci}


def estimate(per_problem: Callable[[list], np.ndarray], samples: list, method: str = "bootstrap",
             seed: int = 0) -> Estimate:
    """The metric ``per_problem(samples).mean()``, its interval over problems and its spread over samples.

    ``samples[i]`` is problem i's list of samples (whatever ``per_problem`` reads); the sample spread redraws
    each problem's samples with replacement ``SAMPLE_RESAMPLES`` times.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; use one of {', '.join(CI_METHODS)}")
    scores = per_problem(samples)
    low, high = CI_METHODS[method](scores)
    k = min(len(s) for s in samples)
    if k < 2:
        return Estimate(float(scores.mean()), low, high, None, len(scores))
    rng = np.random.default_rng(seed + 1)
    redrawn = []
    for _ in range(SAMPLE_RESAMPLES):
        resampled = [[s[j] for j in rng.integers(0, len(s), size=len(s))] for s in samples]
        redrawn.append(float(per_problem(resampled).mean()))
    # redrawing k samples with replacement shrinks a mean's variance by (k - 1) / k: undo it (exact for pass@1)
    return Estimate(float(scores.mean()), low, high, float(np.std(redrawn, ddof=1)) * math.sqrt(k / (k - 1)),
                    len(scores))


def summarize(correct: list[list[float]], answers: list[list[str | None]] | None = None,
              equivalent: Callable[[str, str], bool] | None = None, ks: Sequence[int] | None = None,
              method: str = "bootstrap") -> dict:
    """Every metric of one benchmark run: pass@1, pass@k for ``ks`` (default: powers of two up to the
    sample count), cons@k (when answers and an equivalence are given) and the per-problem sd of pass@1 (None at
    k = 1)."""
    if not correct:
        raise ValueError("no problems to summarize")
    k = min(len(s) for s in correct)
    ks = sorted({1, *(ks or [2 ** i for i in range(1, 8) if 2 ** i <= k]), k})
    metrics = {}
    for kk in ks:
        metrics[f"pass@{kk}"] = estimate(lambda c, kk=kk: per_problem_pass_at_k(c, kk), correct, method).as_dict()
    if answers is not None and equivalent is not None and k > 1:
        equivalent = memoized(equivalent)  # the sample-spread redraws ask about the same pairs again
        votes = [list(zip(a, c)) for a, c in zip(answers, correct)]

        def vote(problems):
            return np.asarray([cons_at_k([a for a, _ in p], [c for _, c in p], equivalent) for p in problems])

        metrics[f"cons@{k}"] = estimate(vote, votes, method).as_dict()
    per_problem_sd = [float(np.std(s, ddof=1)) for s in correct] if k > 1 else None  # None: one sample says nothing
    return {"k": k, "n_problems": len(correct), "interval": f"95% {method}", "metrics": metrics,
            "per_problem_sd": float(np.mean(per_problem_sd)) if per_problem_sd else None}
