"""A real control loop: run the engine once per period at a fixed rate and time the tail.

Back-to-back timing (the harness's latency table) says how fast the engine is; a robot needs
to know whether it keeps a *rate*. Here each tick is scheduled at ``t0 + k / rate``; the loop
sleeps until shortly before the tick and spins the rest (``time.sleep`` alone oversleeps by
50-100 µs on Linux), runs the policy, and records:

- **release jitter**: how late the tick started against its schedule (the OS and Python),
- **latency**: the inference time of that tick,
- **deadline miss**: the tick's inference ended after the next tick's start. A late tick does
  not pile up: the next one starts at its own schedule, or immediately if that has passed
  (an overrun tick skips no work, as a real controller would not),
- steady-state memory (RSS at the first and last tick).

Pure stdlib + numpy: this runs on the robot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robopt_compile.errors import InputError

Progress = Callable[[int], None]

_SPIN_NS = 200_000  # wake this early, then spin: sleep() overshoots by ~50-100 µs


def _pcts(ms: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return {
        "p50": float(p50),
        "p99": float(p99),
        "p99.9": float(p999),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def paced_loop(
    fn: Callable[[], Any],
    rate_hz: float,
    ticks: int,
    rss: Callable[[], int | None] = lambda: None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``fn`` at ``rate_hz`` for ``ticks`` periods; deadline, jitter and latency figures.

    Raises:
        InputError: a rate that is not a positive finite number, or fewer than 2 ticks.
    """
    if not np.isfinite(rate_hz) or rate_hz <= 0:
        raise InputError(f"control rate must be a positive number of Hz, not {rate_hz!r}.")
    if ticks < 2:
        raise InputError(f"a control loop needs at least 2 ticks, not {ticks}.")
    period = round(1e9 / rate_hz)
    release = np.empty(ticks, np.int64)
    latency = np.empty(ticks, np.int64)
    missed = np.zeros(ticks, bool)
    rss_start = rss()
    clock, sleep = time.perf_counter_ns, time.sleep
    step = max(1, ticks // 50)
    t0 = clock() + period  # first tick one period from now
    for k in range(ticks):
        due = t0 + k * period
        now = clock()
        if due - now > _SPIN_NS:
            sleep((due - now - _SPIN_NS) / 1e9)
        while clock() < due:
            pass
        start = clock()
        fn()
        end = clock()
        release[k] = start - due
        latency[k] = end - start
        missed[k] = end > due + period
        if progress and (k + 1) % step == 0:
            progress(step)
    if progress and ticks % step:
        progress(ticks % step)
    rss_end = rss()
    misses = int(missed.sum())
    lat_ms = latency / 1e6
    # Longest run of consecutive misses: what a controller feels as a stall.
    longest = run = 0
    for m in missed:
        run = run + 1 if m else 0
        longest = max(longest, run)
    return {
        "kind": "control_loop",
        "rate_hz": float(rate_hz),
        "deadline_ms": period / 1e6,
        "ticks": int(ticks),
        "misses": misses,
        "miss_fraction": misses / ticks,
        "longest_miss_streak": int(longest),
        "jitter_ms": _pcts(release / 1e6),
        "latency_ms": _pcts(lat_ms),
        "utilisation": float(lat_ms.mean() / (period / 1e6)),
        "rss_mib": {
            "start": None if rss_start is None else rss_start / 2**20,
            "end": None if rss_end is None else rss_end / 2**20,
            "growth": None
            if rss_start is None or rss_end is None
            else (rss_end - rss_start) / 2**20,
        },
    }
