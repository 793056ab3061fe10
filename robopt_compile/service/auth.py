"""Who may call what: bearer tokens checked per request, roles, a rate limit per token, and
the JSON error every refusal and library error becomes (``{"error": one line}``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from robopt_compile.errors import InputError, RoboptError
from robopt_compile.service.tokens import Token, check_token, touch_many
from robopt_compile.store.records import UnknownIdError


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RateLimiter:
    """A token bucket per API token: ``rate`` requests per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                return False
            self._buckets[key] = (level - 1.0, now)
            return True


class Toucher:
    """Records when each token was last used, off the request path: requests only note the
    token id; a thread with its own store connection writes them all in one transaction every
    ``interval_s`` (a write per request would hold the store's lock through an fsync while
    other requests wait to read)."""

    def __init__(self, store_factory: Callable[[], Any], interval_s: float = 2.0) -> None:
        self._factory, self._interval = store_factory, interval_s
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def seen(self, token_id: str) -> None:
        from robopt_compile.store.records import utc_now

        with self._lock:
            self._seen[token_id] = utc_now()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="robopt-token-touch")  # fmt: skip
                self._thread.start()

    def flush(self, store: Any) -> None:
        with self._lock:
            batch, self._seen = self._seen, {}
        if batch:
            touch_many(store, batch)

    def _run(self) -> None:
        store = self._factory()
        try:
            while not self._stop.wait(self._interval):
                self.flush(store)
        finally:
            self.flush(store)
            store.close()

    def stop(self) -> None:
        self._stop.set()


def status_of(exc: RoboptError) -> int:
    """The HTTP status of a library error."""
    if getattr(exc, "http_status", None):
        return int(exc.http_status)  # type: ignore[attr-defined]
    if isinstance(exc, UnknownIdError):
        return 404
    if isinstance(exc, InputError):
        return 422
    return 500 if type(exc) is RoboptError else 422


def require(role: str) -> Callable[..., Token]:
    """A dependency: the request's bearer token, which must have at least ``role``."""

    async def dep(request: Request) -> Token:
        # In the event loop, not a thread: the check is one indexed read of the store (WAL
        # reads never wait for a writer); "last used" is written later by the Toucher.
        header = request.headers.get("authorization", "")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text.strip():
            raise ApiError(401, "no API token: send the header 'Authorization: Bearer TOKEN' "
                           "(robopt-compile token create makes one).")  # fmt: skip
        store = request.app.state.store
        token = check_token(store, text.strip())
        if token is None:
            raise ApiError(401, "unknown or revoked API token: ask an admin for a new one.")
        if not request.app.state.limiter.allow(token.id):
            raise ApiError(429, "too many requests for this token: slow down and retry.")
        if not token.allows(role):
            raise ApiError(403, f"this needs the {role} role; token {token.name!r} is "
                           f"{token.role}.")  # fmt: skip
        request.app.state.toucher.seen(token.id)
        return token

    return Depends(dep)


VIEWER, OPERATOR, ADMIN = require("viewer"), require("operator"), require("admin")
