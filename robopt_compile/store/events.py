"""Session events: the ``events`` table and each session's ``.jsonl`` log (docs/STORE.md).

Every event is written twice: as a row of the store's ``events`` table (in the same transaction
as the state change it reports, so the table never disagrees with ``sessions``/``steps``) and,
once that transaction committed, as one line of ``<store>/sessions/<session_id>.jsonl``
(appended and flushed per event, so a crash loses at most the line being written). The web UI,
notifications and progress bars read either; the table is the authority.

One event, in both places::

    {"session": "<32 hex>", "seq": 7, "time": "2026-11-26T14:44:42.123456Z",
     "type": "step_finished", "payload": {...}}

``seq`` counts from 1 per session without gaps (allocated inside the write transaction, so two
processes writing to one session never collide). Types and their payload keys:

    started        source, target, criteria, plan, pid, host, resumed (bool)
    step_started   step (index), name, input (sha256 or null), config
    step_finished  step, name, state (finished | failed | skipped), output (sha256 or null),
                   results (list of result kinds), seconds, error (when failed)
    metric         name, value, unit, step (optional), any other keys
    warning        message, step (optional)
    rolled_back    step, name, reason: a finished step's output was discarded
    retry          step, name, attempt, reason
    finished       summary, seconds
    failed         error, step (the running step, if any)
    cancelled      reason
    interrupted    pid, host: recorded by whoever found the owner process dead

Payload values are JSON (numpy values are converted; NaN and infinity become null).

This module needs only the store's database (:class:`~robopt_compile.store.database.Database`):
the catalogue records ``interrupted`` events through it, and
:class:`~robopt_compile.store.sessions.Session` every other event.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.store.database import Database
from robopt_compile.store.records import EventRecord, dump_json, event_from_row, utc_now

EVENT_TYPES = (
    "started",
    "step_started",
    "step_finished",
    "metric",
    "warning",
    "rolled_back",
    "retry",
    "finished",
    "failed",
    "cancelled",
    "interrupted",
)


class EventSink:
    """Writes a session's events to the store's ``events`` table and its ``.jsonl`` log."""

    def __init__(self, store: Database, session_id: str, log_path: Path | None = None) -> None:
        self.store = store
        self.session_id = session_id
        self.log_path = log_path or store.event_log_path(session_id)
        self.listeners: list[Callable[[EventRecord], None]] = []

    def emit(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        before: Callable[[sqlite3.Connection], Any] | None = None,
        log: bool = True,
    ) -> EventRecord | None:
        """Record one event; return it (None when ``before`` returned False: nothing written).

        Args:
            type: one of :data:`EVENT_TYPES`.
            payload: a JSON object.
            before: run in the same transaction first (the state change the event reports);
                returning ``False`` writes no event, returning a dict adds it to the payload.
            log: append it to the ``.jsonl`` log now (``sync_log`` appends it later otherwise).
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; known: {', '.join(EVENT_TYPES)}")
        base = dict(payload or {})
        dump_json(base)  # fail on a payload that is not JSON before taking the lock

        def run(c: sqlite3.Connection) -> EventRecord | None:
            extra = before(c) if before is not None else None
            if extra is False:
                return None
            text = dump_json({**base, **extra} if isinstance(extra, dict) else base)
            seq = c.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE session_id=?",
                (self.session_id,),
            ).fetchone()[0]
            now = utc_now()
            c.execute(
                "INSERT INTO events(session_id, seq, time, type, payload) VALUES (?, ?, ?, ?, ?)",
                (self.session_id, seq, now, type, text),
            )
            c.execute("UPDATE sessions SET updated=? WHERE id=?", (now, self.session_id))
            return EventRecord(self.session_id, seq, now, type, json.loads(text))

        ev = self.store.write(run)
        if ev is not None:
            if log:
                self._append(ev)
            for listener in list(self.listeners):
                # A listener is any caller's code (a progress bar): it must not fail a compile.
                with contextlib.suppress(Exception):
                    listener(ev)
        return ev

    def sync_log(self) -> int:
        """Append to the log every event of the table it lacks (a writer killed between its
        commit and its append loses that line); return how many. The table is the authority.
        """
        have = {
            e["seq"] for e in read_event_log(self.log_path) if e.get("session") == self.session_id
        }
        added = 0
        for ev in read_events(self.store, self.session_id):
            if ev.seq not in have:
                self._append(ev)
                added += 1
        return added

    def _append(self, ev: EventRecord) -> None:
        line = json.dumps(ev.to_dict(), sort_keys=False, separators=(",", ":")) + "\n"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:  # a crashed writer may have left half a line: start a fresh one
                with open(self.log_path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = "\n" + line
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read_event_log(path: Path | str) -> list[dict[str, Any]]:
    """The events of a ``.jsonl`` log; lines that are not complete JSON objects are skipped."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and "seq" in ev and "type" in ev:
            out.append(ev)
    return out


def read_events(db: Database, session_id: str, after_seq: int = 0) -> list[EventRecord]:
    """A session's events with ``seq > after_seq`` from the table, in order (for tailing)."""
    rows = db.query(
        "SELECT * FROM events WHERE session_id=? AND seq>? ORDER BY seq",
        (session_id, after_seq),
    )
    return [event_from_row(r) for r in rows]
