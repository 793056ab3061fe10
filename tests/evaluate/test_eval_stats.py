"""The statistics of closed-loop evaluation (robopt_compile.evaluate.stats): known values, and
agreement to 1e-12 with the closed forms robopt computed by hand before it used scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robopt_compile.evaluate import stats as st

scipy_stats = pytest.importorskip("scipy.stats")


def test_mean_ci_matches_scipy_t_interval() -> None:
    x = [1.0, 2.0, 4.0, 7.0, 11.0]
    got = st.mean_ci(x)
    lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert got["mean"] == pytest.approx(5.0)
    assert got["ci95"] == pytest.approx([lo, hi])


def test_mean_ci_degenerate_cases_stay_finite_or_infinite_never_nan() -> None:
    assert st.mean_ci([3.0, 3.0, 3.0])["ci95"] == [3.0, 3.0]
    one = st.mean_ci([2.0])
    assert one["std"] == 0.0 and one["ci95"] == [-math.inf, math.inf]


def test_wilson_interval_known_values() -> None:
    lo, hi = st.wilson(48, 50)
    assert lo == pytest.approx(0.8654, abs=1e-3) and hi == pytest.approx(0.9890, abs=1e-3)
    assert st.wilson(0, 20)[0] == 0.0 and st.wilson(20, 20)[1] == 1.0
    assert st.wilson(0, 0) == [0.0, 1.0]


def test_mcnemar_exact() -> None:
    assert st.mcnemar_p(0, 0) == 1.0
    # 10 discordant pairs all one way: p = 2 * 0.5**10
    assert st.mcnemar_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert st.mcnemar_p(5, 5) == 1.0


def test_paired_t_without_spread() -> None:
    r = np.array([1.0, 2.0, 3.0])
    assert st.paired_t_p(r, r) == 1.0
    assert st.paired_t_p(r + 2.0, r) == 0.0
    assert st.paired_t_p(np.array([1.0]), np.array([0.0])) == 0.0


# --- the closed forms scipy replaced, as oracles ------------------------------------------------


def _wilson_closed_form(k: int, n: int) -> list[float]:
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _mcnemar_exact_sum(b: int, c: int) -> float:
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _paired_t_closed_form(diff: np.ndarray) -> float:
    n = diff.size
    t = float(diff.mean()) / (float(diff.std(ddof=1)) / math.sqrt(n))
    return float(2 * scipy_stats.t.sf(abs(t), n - 1))


def test_wilson_agrees_with_the_closed_form() -> None:
    for n in [*range(1, 41), 50, 100, 200]:
        for k in range(n + 1):
            assert st.wilson(k, n) == pytest.approx(_wilson_closed_form(k, n), rel=0, abs=1e-12)


def test_mcnemar_agrees_with_the_exact_binomial_sum() -> None:
    pairs = [(b, c) for b in range(31) for c in range(31) if b + c]
    for b, c in [*pairs, (0, 100), (40, 60), (120, 150), (7, 300)]:
        got, want = st.mcnemar_p(b, c), _mcnemar_exact_sum(b, c)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (b, c)


def test_paired_t_agrees_with_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        n = int(rng.integers(2, 120))
        ref = rng.normal(100, 20, n)
        cand = ref + rng.normal(rng.normal(0, 3), rng.uniform(0.1, 10), n)
        if i % 3 == 0:  # success columns: differences of -1, 0, +1
            cand = ref + rng.integers(-1, 2, n)
        if np.std(cand - ref) == 0:
            continue
        want = _paired_t_closed_form(cand - ref)
        assert st.paired_t_p(cand, ref) == pytest.approx(want, rel=0, abs=1e-12)


def test_importing_evaluate_loads_no_scipy_simulator_or_runtime() -> None:
    """Open-loop evaluation runs without the ``sim`` extra: scipy is loaded only by a figure."""
    import subprocess
    import sys

    heavy = ("scipy", "pybullet", "gymnasium", "mujoco", "onnxruntime", "torch")
    code = f"import sys, robopt_compile.evaluate; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
