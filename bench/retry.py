"""Retries with exponential backoff for transient failures (a busy or restarting robot).

Only errors that say they are transient are retried (:class:`TransientError`, or what the
caller's ``transient`` predicate accepts); anything else, and the last attempt's error, is
raised as it is. Standard library only: this runs on the robot side too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_ATTEMPTS = 4  # the first try and three retries
DEFAULT_BASE_S = 1.0
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_S = 15.0


class TransientError(Exception):
    """Mixin for errors that may go away if the same request is made again later."""


def backoff_delays(
    retries: int,
    base_s: float = DEFAULT_BASE_S,
    factor: float = DEFAULT_FACTOR,
    max_s: float = DEFAULT_MAX_S,
    rng: Callable[[], float] = random.random,
) -> list[float]:
    """The waits before retry 1..``retries``: ``base_s * factor**i`` capped at ``max_s``, each
    scaled by a random factor in [0.5, 1) so that clients retrying together spread out."""
    return [min(max_s, base_s * factor**i) * (0.5 + rng() / 2) for i in range(retries)]


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_s: float = DEFAULT_BASE_S,
    factor: float = DEFAULT_FACTOR,
    max_s: float = DEFAULT_MAX_S,
    transient: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """``fn()``, tried up to ``attempts`` times while it raises a transient error.

    Args:
        fn: the operation; it must be safe to repeat (nothing half-done on the other side).
        attempts: total tries, >= 1 (1: no retry).
        base_s, factor, max_s: the backoff (see :func:`backoff_delays`).
        transient: which exceptions to retry (default: :class:`TransientError` instances).
        on_retry: called with (retry number from 1, seconds it will wait, the error) before
            each wait, e.g. to print a warning or record a session event.
        sleep, rng: injectable for tests.

    Raises:
        ValueError: ``attempts`` < 1.
        Whatever ``fn`` raised: at once for a non-transient error, or on the last attempt.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1 (got {attempts})")
    is_transient = transient or (lambda exc: isinstance(exc, TransientError))
    delays = backoff_delays(attempts - 1, base_s, factor, max_s, rng)
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # ``transient`` decides; everything else re-raises at once
            if i == attempts - 1 or not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(i + 1, delays[i], exc)
            sleep(delays[i])
    raise AssertionError("unreachable")  # pragma: no cover
