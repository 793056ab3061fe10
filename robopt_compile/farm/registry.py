"""The registry of robots that run ``robopt-bench serve`` (docs/REMOTE.md, "Device farm").

A device is a name, the URL of its server, the token that server was started with, and the
board profile it is. Its health is the robot's own ``GET /v1/health`` (versions, runtimes,
queue). The token is kept in the store as given (robopt must present it to the robot) and is
never returned by :func:`get_device` unless asked for, never printed and never logged.
``robopt-bench devices add/ls/rm`` and ``/api/v1/devices`` are thin layers over this module.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from robopt_compile.errors import InputError
from robopt_compile.store.records import UnknownIdError, new_id, utc_now

HEALTH_TIMEOUT_S = 5.0
DOWN_S = 30.0  # a robot that dropped a job is skipped by the queue this long, then re-checked


def add_device(store: Any, name: str, url: str, token: str, board: str,
               owner: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Register a robot.

    Raises:
        InputError: not an http(s) URL, an empty token, a name in use, or an unknown board.
    """
    from robopt_compile.farm.queue import canonical_board

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"a device URL is http:// or https:// with a host, not {url!r}.")
    if not token.strip():
        raise InputError("a device needs the token its robopt-bench serve was started with.")
    name = name.strip()
    if not name or name.startswith("any:") or "://" in name:
        raise InputError(f"device name {name!r}: use a short name such as orin-1.")
    board = canonical_board(board)
    did, now = new_id()[:16], utc_now()

    def insert(c: Any) -> None:
        if c.execute("SELECT 1 FROM devices WHERE name=?", (name,)).fetchone():
            raise InputError(f"a device named {name!r} exists: remove it first or pick another.")
        c.execute("INSERT INTO devices(id, name, url, token, board, owner, created) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (did, name, url.rstrip("/"), token.strip(), board, owner, now))  # fmt: skip

    store.write(insert)
    return get_device(store, did)


def _public(r: Any) -> dict[str, Any]:
    down = r["down_until"]
    return {"id": r["id"], "name": r["name"], "url": r["url"], "board": r["board"],
            "created": r["created"], "last_seen": r["last_seen"],
            "last_error": r["last_error"],
            "down": bool(down and down > time.time())}  # fmt: skip


def get_device(store: Any, device: str, with_token: bool = False) -> dict[str, Any]:
    """A device by id or name (the token only with ``with_token``).

    Raises:
        UnknownIdError: no such device.
    """
    rows = store.query("SELECT * FROM devices WHERE id=? OR name=?", (device, device))
    if not rows:
        raise UnknownIdError(
            f"no device {device!r}; `robopt-bench devices ls` (or GET /api/v1/devices) lists them."
        )
    d = _public(rows[0])
    if with_token:
        d["token"] = rows[0]["token"]
    return d


def list_devices(store: Any, board: str | None = None) -> list[dict[str, Any]]:
    """Every device (of ``board``), oldest first: the order the queue offers them in."""
    if board is None:
        rows = store.query("SELECT * FROM devices ORDER BY created, name")
    else:
        rows = store.query("SELECT * FROM devices WHERE board=? ORDER BY created, name", (board,))
    return [_public(r) for r in rows]


def remove_device(store: Any, device: str) -> dict[str, Any]:
    """Unregister a device (a benchmark running on it goes on; nothing new is sent to it)."""
    d = get_device(store, device)

    def delete(c: Any) -> None:
        c.execute("DELETE FROM device_leases WHERE device_id=?", (d["id"],))
        c.execute("DELETE FROM devices WHERE id=?", (d["id"],))

    store.write(delete)
    return d


def mark_down(store: Any, device_id: str, error: str, for_s: float = DOWN_S) -> None:
    """Record that a robot did not answer: the queue skips it for ``for_s`` seconds."""
    store.write(lambda c: c.execute(
        "UPDATE devices SET last_error=?, down_until=? WHERE id=?",
        (f"{utc_now()}: {error[:300]}", time.time() + for_s, device_id)))  # fmt: skip


def health(store: Any, device: str) -> dict[str, Any]:
    """Ask the robot's server for ``/v1/health``; records when it was last seen or why not.

    Returns ``{"reachable": bool, "health": {...} | None, "error": str | None, "ms": float}``.
    """
    from robopt_compile.bench.remote import robot_health
    from robopt_compile.errors import RoboptError

    d = get_device(store, device, with_token=True)
    body, err = None, None
    t0 = time.perf_counter()
    try:
        body = robot_health(d["url"], d["token"], HEALTH_TIMEOUT_S)
    except RoboptError as exc:
        err = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    ms = (time.perf_counter() - t0) * 1e3
    if err is None:
        store.write(lambda c: c.execute(
            "UPDATE devices SET last_seen=?, last_error=NULL, down_until=NULL WHERE id=?",
            (utc_now(), d["id"])))  # fmt: skip
    else:
        mark_down(store, d["id"], err)
    return {"reachable": err is None, "health": body, "error": err, "ms": ms}


def check_all(store: Any, board: str | None = None) -> list[dict[str, Any]]:
    """Every device (of ``board``) with its health, asked of all robots at once."""
    devs = list_devices(store, board)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(devs)))) as pool:
        checks = list(pool.map(lambda d: health(store, d["id"]), devs))
    return [{**get_device(store, d["id"]), "health": h} for d, h in zip(devs, checks, strict=True)]
