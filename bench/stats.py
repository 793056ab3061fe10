"""Latency statistics and control-loop deadline figures, pure numpy.

A robot policy is judged by its tail, not its mean: a 50 Hz controller that misses one
deadline in a hundred stutters. So besides the usual percentiles this module reports jitter and,
for a given control rate, how many runs overshot the period. Percentiles use numpy's default
linear interpolation (the same figure as ``np.percentile``), so they are exact and reproducible
for a given list of samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from robopt_compile.errors import InputError

_TO_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def to_seconds(samples: Sequence[float] | np.ndarray, unit: str = "ns") -> np.ndarray:
    """Samples as a float64 array in seconds.

    Raises:
        ValueError: an unknown unit or no samples (a programming error, not user input).
    """
    if unit not in _TO_SECONDS:
        raise ValueError(f"unit must be one of {list(_TO_SECONDS)}, not {unit!r}")
    arr = np.asarray(samples, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("no latency samples")
    return arr * _TO_SECONDS[unit]


def latency_stats(
    samples: Sequence[float] | np.ndarray, unit: str = "ns", batch: int = 1
) -> dict[str, Any]:
    """Percentiles, spread and throughput of per-run latencies, in milliseconds.

    ``stdev_ms`` is the sample standard deviation (ddof=1; 0 for one run). Jitter is given two
    ways: ``stdev_ms`` for the spread and ``jitter_p99_p50_ms`` for how far the tail sits above
    the median, which is what eats a control loop's slack. ``throughput_per_s`` counts items
    (``batch`` per run) per second of mean latency.
    """
    s = to_seconds(samples, unit)
    ms = s * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return {
        "n": int(ms.size),
        "mean_ms": mean,
        "stdev_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "jitter_p99_p50_ms": p99 - p50,
        "batch": int(batch),
        "throughput_per_s": batch / (mean * 1e-3) if mean > 0 else float("inf"),
    }


def control_loop_stats(
    samples: Sequence[float] | np.ndarray, rate_hz: float, unit: str = "ns"
) -> dict[str, Any]:
    """Deadline figures for running the policy once per control period of ``1/rate_hz``.

    A run misses its deadline when its latency is strictly greater than the period. The
    headroom says how much of the period is left at the 99th percentile (negative: the loop
    cannot keep the rate one run in a hundred).

    Raises:
        InputError: ``rate_hz`` is not a positive finite number.
    """
    if not np.isfinite(rate_hz) or rate_hz <= 0:
        raise InputError(f"control rate must be a positive number of Hz, not {rate_hz!r}.")
    s = to_seconds(samples, unit)
    deadline = 1.0 / rate_hz
    over = s > deadline
    misses = int(over.sum())
    return {
        "rate_hz": float(rate_hz),
        "deadline_ms": deadline * 1e3,
        "runs": int(s.size),
        "misses": misses,
        "miss_fraction": misses / s.size,
        "worst_overrun_ms": float(max(s.max() - deadline, 0.0) * 1e3),
        "p99_headroom_ms": float((deadline - np.percentile(s, 99)) * 1e3),
    }
