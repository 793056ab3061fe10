"""The statistics of closed-loop evaluation, from scipy.stats: a t-interval for a mean, the
Wilson interval for a success rate, and the paired tests (paired t-test on returns, exact
McNemar test on successes).

scipy comes with the ``sim`` extra, which closed-loop evaluation needs anyway; it is imported
when a figure is computed, so open-loop evaluation (no simulator) never needs it. Degenerate
cases that scipy answers with NaN or refuses (one sample, zero spread, no episodes, no
discordant pairs) have their limits here, so a report never holds a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and 95% Student-t interval of the mean (infinite for one value)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        from scipy import stats

        # The quantile times the standard error: unlike stats.t.interval, this stays finite
        # (a zero-width interval) when every value is the same, which a success column often is.
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)  # two-sided 95%
    else:
        half = float("inf")
    return {"mean": mean, "std": std, "n": int(n), "ci95": [mean - half, mean + half]}


def wilson(successes: int, n: int) -> list[float]:
    """Wilson score 95% interval for a success rate (sound at 0% and 100%)."""
    if n == 0:
        return [0.0, 1.0]
    from scipy import stats

    ci = stats.binomtest(successes, n).proportion_ci(CONFIDENCE, method="wilson")
    return [float(ci.low), float(ci.high)]


def paired_t_p(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of per-seed values (scipy's ttest_rel).

    With no spread in the differences the test is undefined (scipy gives NaN): the answer is
    then 1 when they are all zero and 0 when they are all the same non-zero value.
    """
    diff = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    n = diff.size
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        return 1.0 if float(diff.mean()) == 0.0 else 0.0
    from scipy import stats

    return float(stats.ttest_rel(candidate, reference).pvalue)


def mcnemar_p(lost: int, gained: int) -> float:
    """Exact two-sided McNemar test: a binomial test (p = 1/2) on the discordant pairs."""
    n = lost + gained
    if n == 0:
        return 1.0
    from scipy import stats

    return float(stats.binomtest(lost, n, 0.5).pvalue)
