"""Retries with exponential backoff (bench/retry.py)."""

from __future__ import annotations

import pytest

from robopt_compile.bench.retry import TransientError, backoff_delays, with_retries


class Flaky(TransientError):
    pass


def _failing(n: int, exc: Exception):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= n:
            raise exc
        return "ok"

    return fn, calls


def test_backoff_doubles_caps_and_jitters() -> None:
    assert backoff_delays(5, base_s=1, factor=2, max_s=5, rng=lambda: 1.0) == [1, 2, 4, 5, 5]
    assert backoff_delays(3, base_s=1, factor=2, max_s=5, rng=lambda: 0.0) == [0.5, 1, 2]
    assert backoff_delays(0) == []


def test_transient_errors_are_retried_with_the_backoff() -> None:
    fn, calls = _failing(2, Flaky("busy"))
    slept, seen = [], []
    got = with_retries(fn, attempts=4, base_s=0.5, rng=lambda: 1.0, sleep=slept.append,
                       on_retry=lambda n, d, e: seen.append((n, d, str(e))))  # fmt: skip
    assert got == "ok" and len(calls) == 3
    assert slept == [0.5, 1.0] and seen == [(1, 0.5, "busy"), (2, 1.0, "busy")]


def test_other_errors_raise_at_once_and_the_last_attempt_raises() -> None:
    fn, calls = _failing(5, ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        with_retries(fn, attempts=4, sleep=lambda s: None)
    assert len(calls) == 1
    fn, calls = _failing(5, Flaky("still busy"))
    with pytest.raises(Flaky, match="still busy"):
        with_retries(fn, attempts=3, sleep=lambda s: None)
    assert len(calls) == 3
    fn, calls = _failing(1, KeyError("k"))  # a custom predicate decides what is transient
    assert with_retries(fn, transient=lambda e: isinstance(e, KeyError), sleep=lambda s: 0) == "ok"
    with pytest.raises(ValueError, match="attempts"):
        with_retries(lambda: 1, attempts=0)
