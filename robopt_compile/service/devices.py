"""Robots that run ``robopt-bench serve`` (docs/REMOTE.md), registered with the platform.

A device is a URL, the token its server was started with, and the board profile it is. Its
health is the robot's own ``GET /v1/health`` (versions, runtimes, queue); a ``bench`` job
uploads a finished compile job's bundle to it through ``robopt_compile.api.bench`` (the same
call as ``robopt-bench BUNDLE --device URL``). The robot's token is kept in the store as given
(robopt must present it), never returned by the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from robopt_compile.errors import InputError
from robopt_compile.store.records import UnknownIdError, new_id, utc_now

HEALTH_TIMEOUT_S = 5.0


def add_device(store: Any, name: str, url: str, token: str, board: str,
               owner: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Register a robot.

    Raises:
        InputError: not an http(s) URL, an empty token, or an unknown board.
    """
    from robopt_compile.hwprofiles import load_profile

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"a device URL is http:// or https:// with a host, not {url!r}.")
    if not token.strip():
        raise InputError("a device needs the token its robopt-bench serve was started with.")
    load_profile(board)  # an unknown board: the CLI's message
    did, now = new_id()[:16], utc_now()
    store.write(lambda c: c.execute(
        "INSERT INTO devices(id, name, url, token, board, owner, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (did, name.strip() or did, url.rstrip("/"), token.strip(), board, owner, now)))  # fmt: skip
    return get_device(store, did)


def _public(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "name": r["name"], "url": r["url"], "board": r["board"],
            "created": r["created"], "last_seen": r["last_seen"],
            "last_error": r["last_error"]}  # fmt: skip


def get_device(store: Any, device_id: str, with_token: bool = False) -> dict[str, Any]:
    """A device (the token only with ``with_token``).

    Raises:
        UnknownIdError: no such device.
    """
    rows = store.query("SELECT * FROM devices WHERE id=?", (device_id,))
    if not rows:
        raise UnknownIdError(f"no device {device_id!r}; GET /api/v1/devices lists them.")
    d = _public(rows[0])
    if with_token:
        d["token"] = rows[0]["token"]
    return d


def list_devices(store: Any) -> list[dict[str, Any]]:
    return [_public(r) for r in store.query("SELECT * FROM devices ORDER BY created DESC")]


def remove_device(store: Any, device_id: str) -> None:
    get_device(store, device_id)
    store.write(lambda c: c.execute("DELETE FROM devices WHERE id=?", (device_id,)))


def health(store: Any, device_id: str) -> dict[str, Any]:
    """Ask the robot's server for ``/v1/health``; records when it was last seen or why not.

    Returns ``{"reachable": bool, "health": {...} | None, "error": str | None}``.
    """
    from robopt_compile.bench.remote import robot_health
    from robopt_compile.errors import RoboptError

    d = get_device(store, device_id, with_token=True)
    body, err = None, None
    try:
        body = robot_health(d["url"], d["token"], HEALTH_TIMEOUT_S)
    except RoboptError as exc:
        err = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    now = utc_now()
    if err is None:
        store.write(
            lambda c: c.execute(
                "UPDATE devices SET last_seen=?, last_error=NULL WHERE id=?", (now, device_id)
            )
        )
    else:
        store.write(
            lambda c: c.execute(
                "UPDATE devices SET last_error=? WHERE id=?", (f"{now}: {err}", device_id)
            )
        )
    return {"reachable": err is None, "health": body, "error": err}
