"""Latency and deadline statistics on arrays whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robopt_compile.bench.stats import control_loop_stats, latency_stats
from robopt_compile.errors import InputError

MS = 1_000_000  # ns per ms


def test_percentiles_and_spread_are_exact() -> None:
    samples_ns = [i * MS for i in range(1, 101)]  # 1..100 ms
    s = latency_stats(samples_ns, "ns", batch=4)
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["stdev_ms"] == pytest.approx(29.011491975882016)  # ddof=1
    assert s["jitter_p99_p50_ms"] == pytest.approx(99.01 - 50.5)
    assert s["throughput_per_s"] == pytest.approx(4 / 0.0505)
    assert s["batch"] == 4


def test_units_agree_and_one_sample_has_no_spread() -> None:
    a = latency_stats([0.002, 0.004], "s")
    b = latency_stats(np.array([2_000_000, 4_000_000]), "ns")
    assert a == pytest.approx(b)
    one = latency_stats([3 * MS])
    assert one["stdev_ms"] == 0.0 and one["p99_ms"] == pytest.approx(3.0)


def test_bad_samples_raise() -> None:
    with pytest.raises(ValueError, match="no latency samples"):
        latency_stats([])
    with pytest.raises(ValueError, match="unit"):
        latency_stats([1.0], "minutes")


def test_deadline_misses_count_strictly_over_the_period() -> None:
    samples_ns = [5 * MS, 10 * MS, int(10.5 * MS), 20 * MS]
    c = control_loop_stats(samples_ns, rate_hz=100)
    assert c["deadline_ms"] == pytest.approx(10.0)
    assert c["runs"] == 4
    assert c["misses"] == 2  # exactly on the deadline is not a miss
    assert c["miss_fraction"] == pytest.approx(0.5)
    assert c["worst_overrun_ms"] == pytest.approx(10.0)
    # p99 of [5, 10, 10.5, 20] by linear interpolation: 10.5 + 0.97 * 9.5
    assert c["p99_headroom_ms"] == pytest.approx(10.0 - (10.5 + 0.97 * 9.5))


def test_no_misses_when_fast() -> None:
    c = control_loop_stats([1.0, 2.0], rate_hz=50, unit="ms")
    assert c["misses"] == 0 and c["miss_fraction"] == 0.0 and c["worst_overrun_ms"] == 0.0
    assert c["p99_headroom_ms"] == pytest.approx(20.0 - 1.99)


@pytest.mark.parametrize("rate", [0, -10, math.nan, math.inf])
def test_bad_control_rate_is_input_error(rate: float) -> None:
    with pytest.raises(InputError, match="control rate"):
        control_loop_stats([1 * MS], rate_hz=rate)
