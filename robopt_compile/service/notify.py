"""The notification queue: durable events, delivered to webhooks with a signature and retries.

``notify(store, kind, ...)`` records one row in ``notifications`` and, in the same
transaction, one ``pending`` row in ``deliveries`` per active webhook subscribed to ``kind``
(a webhook with no kinds gets every one). A :class:`Notifier` thread in the server delivers
the due ones: an HTTP POST of the JSON body with

    X-Robopt-Event: <kind>
    X-Robopt-Delivery: <delivery id>
    X-Robopt-Signature: sha256=<hex HMAC-SHA256 of the raw body with the webhook's secret>

A 2xx answer delivers it; anything else (an error, a timeout, a refused connection) tries
again after ``RETRY_BASE_S * 2**(attempt-1)`` seconds (1, 2, 4, 8; ``ROBOPT_WEBHOOK_RETRY_S``
sets the first), and after ``MAX_ATTEMPTS`` the delivery
is ``dead`` (the dead letter: kept, shown in the UI and ``GET /api/v1/notifications``).
Delivery runs in its own thread and never blocks or fails a job.

Kinds: ``job_queued``, ``job_started``, ``stage_finished``, ``rolled_back``,
``criteria_violated``, ``job_finished``, ``job_failed``, ``job_cancelled``,
``job_interrupted``, ``device_unreachable``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from robopt_compile.errors import InputError
from robopt_compile.store.records import dump_json, load_json, new_id, utc_now

KINDS = (
    "job_queued", "job_started", "stage_finished", "rolled_back", "criteria_violated",
    "job_finished", "job_failed", "job_cancelled", "job_interrupted", "device_unreachable",
)  # fmt: skip
MAX_ATTEMPTS = 5
# The first retry's wait; each next one doubles. ROBOPT_WEBHOOK_RETRY_S changes it (the tests
# use 0.1 s so that a dead letter takes 1.5 s, not 15).
RETRY_BASE_S = float(os.environ.get("ROBOPT_WEBHOOK_RETRY_S", "1.0"))
TIMEOUT_S = 5.0


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def add_webhook(store: Any, url: str, events: list[str] | None = None,
                owner: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Subscribe ``url`` to ``events`` (all when empty); returns the row with its secret
    (shown once: the receiver checks signatures with it).

    Raises:
        InputError: not an http(s) URL, or an unknown event kind.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"a webhook URL is http:// or https:// with a host, not {url!r}.")
    unknown = sorted(set(events or ()) - set(KINDS))
    if unknown:
        raise InputError(f"unknown event kind(s) {unknown}: choose from {', '.join(KINDS)}.")
    wid, secret, now = new_id()[:16], secrets.token_hex(24), utc_now()
    store.write(lambda c: c.execute(
        "INSERT INTO webhooks(id, url, events, secret, owner, created) VALUES (?,?,?,?,?,?)",
        (wid, url, dump_json(sorted(set(events or ()))), secret, owner, now)))  # fmt: skip
    return {"id": wid, "url": url, "events": sorted(set(events or ())), "secret": secret,
            "created": now, "active": True}  # fmt: skip


def list_webhooks(store: Any) -> list[dict[str, Any]]:
    """Every webhook (without secrets), newest first."""
    rows = store.query("SELECT * FROM webhooks ORDER BY created DESC")
    return [{"id": r["id"], "url": r["url"], "events": load_json(r["events"], []),
             "created": r["created"], "active": bool(r["active"])} for r in rows]  # fmt: skip


def remove_webhook(store: Any, webhook_id: str) -> None:
    """Stop delivering to a webhook (its past deliveries stay on record).

    Raises:
        InputError: no such webhook.
    """
    n = store.write(lambda c: c.execute("UPDATE webhooks SET active=0 WHERE id=?",
                                        (webhook_id,)).rowcount)  # fmt: skip
    if not n:
        raise InputError(f"no webhook {webhook_id!r}; GET /api/v1/webhooks lists them.")


def notify(store: Any, event: str, *, job_id: str | None = None, session_id: str | None = None,
           **payload: Any) -> int:  # fmt: skip
    """Record a notification of kind ``event`` and queue its deliveries (one transaction);
    its id."""
    assert event in KINDS, event
    kind = event
    now, body = utc_now(), dump_json(payload)

    def run(c: sqlite3.Connection) -> int:
        cur = c.execute(
            "INSERT INTO notifications(time, kind, job_id, session_id, payload) "
            "VALUES (?, ?, ?, ?, ?)",
            (now, kind, job_id, session_id, body),
        )
        nid = int(cur.lastrowid or 0)
        for w in c.execute("SELECT id, events FROM webhooks WHERE active=1").fetchall():
            kinds = load_json(w["events"], [])
            if not kinds or kind in kinds:
                c.execute("INSERT INTO deliveries(notification_id, webhook_id, state, next_try, "
                          "updated) VALUES (?, ?, 'pending', ?, ?)",
                          (nid, w["id"], time.time(), now))  # fmt: skip
        return nid

    return int(store.write(run))


def notifications(store: Any, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Notifications after id ``after``, newest first, each with its deliveries' states."""
    rows = store.query("SELECT * FROM notifications WHERE id>? ORDER BY id DESC LIMIT ?",
                       (after, limit))  # fmt: skip
    out = []
    for r in rows:
        dl = store.query("SELECT d.*, w.url FROM deliveries d JOIN webhooks w ON "
                         "w.id=d.webhook_id WHERE notification_id=?", (r["id"],))  # fmt: skip
        out.append({
            "id": r["id"], "time": r["time"], "kind": r["kind"], "job_id": r["job_id"],
            "session_id": r["session_id"], "payload": load_json(r["payload"], {}),
            "deliveries": [{"id": d["id"], "webhook": d["webhook_id"], "url": d["url"],
                            "state": d["state"], "attempts": d["attempts"],
                            "last_status": d["last_status"], "last_error": d["last_error"]}
                           for d in dl],
        })  # fmt: skip
    return out


def _body(r: sqlite3.Row) -> bytes:
    return json.dumps({
        "delivery": r["id"], "notification": r["notification_id"], "kind": r["kind"],
        "time": r["time"], "job_id": r["job_id"], "session_id": r["session_id"],
        "payload": load_json(r["payload"], {}),
    }, sort_keys=True).encode()  # fmt: skip


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))[:200]


def deliver_due(store: Any, limit: int = 20) -> int:
    """Try every delivery that is due once; returns how many were tried."""
    rows = store.query(
        "SELECT d.id, d.notification_id, d.attempts, w.url, w.secret, n.kind, n.time, "
        "n.job_id, n.session_id, n.payload FROM deliveries d "
        "JOIN webhooks w ON w.id=d.webhook_id JOIN notifications n ON n.id=d.notification_id "
        "WHERE d.state='pending' AND d.next_try<=? ORDER BY d.next_try LIMIT ?",
        (time.time(), limit),
    )
    for r in rows:
        body = _body(r)
        status, err = _post(r["url"], body, {
            "X-Robopt-Event": r["kind"], "X-Robopt-Delivery": str(r["id"]),
            "X-Robopt-Signature": sign(r["secret"], body)})  # fmt: skip
        ok = status is not None and 200 <= status < 300
        tries = r["attempts"] + 1
        state = "delivered" if ok else ("dead" if tries >= MAX_ATTEMPTS else "pending")
        nxt = time.time() + RETRY_BASE_S * 2 ** (tries - 1)
        store.write(lambda c, r=r, state=state, tries=tries, nxt=nxt, status=status, err=err:
                    c.execute("UPDATE deliveries SET state=?, attempts=?, next_try=?, "
                              "last_status=?, last_error=?, updated=? WHERE id=?",
                              (state, tries, nxt, status, err, utc_now(), r["id"])))  # fmt: skip
    return len(rows)


class Notifier(threading.Thread):
    """Delivers due notifications every ``interval_s`` until :meth:`stop`."""

    def __init__(self, store_factory: Any, interval_s: float = 0.2) -> None:
        super().__init__(name="robopt-notifier", daemon=True)
        self._factory = store_factory
        self._interval = interval_s
        self._stop = threading.Event()

    def run(self) -> None:
        store = self._factory()
        try:
            while not self._stop.is_set():
                try:
                    busy = deliver_due(store)
                except Exception:
                    busy = 0
                if not busy:
                    self._stop.wait(self._interval)
        finally:
            store.close()

    def stop(self) -> None:
        self._stop.set()
