"""The report's statistics: the Student-t interval of a mean and the paired tests (scipy.stats)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
TESTS = {"ttest": "paired t-test", "bootstrap": "paired bootstrap"}


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n) (`scipy.stats.t.interval`); NaNs for fewer than 2
    values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean, std = statistics.fmean(values), statistics.stdev(values)
    if std == 0:  # identical values: the interval is the point (scipy.stats refuses a scale of 0)
        return mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return float(low), float(high)


def paired_test(values: Sequence[float], baseline: Sequence[float], test: str = "ttest") -> tuple[float, float, float]:
    """(ci_low, ci_high, p_value) of the mean of `values - baseline` (pairs in order), two-sided. `ttest`:
    the Student-t CI and scipy.stats.ttest_rel; `bootstrap`: the percentile CI and p-value of 10,000
    paired resamples (`scipy.stats.bootstrap`, numpy Generator(BOOTSTRAP_SEED)). NaNs for fewer than 2
    pairs."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if a.size < 2:
        return math.nan, math.nan, math.nan
    if test == "bootstrap":
        return paired_bootstrap(a, b)
    low, high = mean_ci((a - b).tolist())
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: scipy says NaN
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return low, high, p_value


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def paired_bootstrap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """The paired bootstrap of the mean difference: `scipy.stats.bootstrap(paired=True)`'s percentile CI,
    and p = 2 min(P(d <= 0), P(d >= 0)) (at most 1) over its bootstrap distribution of the mean."""
    result = stats.bootstrap(
        (a, b),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    means = result.bootstrap_distribution
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), p_value
