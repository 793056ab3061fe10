"""The job queue, persisted in the store's ``jobs`` table (docs/PLATFORM.md, "Jobs").

A job is one library call (a compile, a planner search, an analysis, a closed-loop evaluation,
a benchmark on a robot) asked for over the API.
Its row is the only authority on its state; every change is one ``BEGIN IMMEDIATE``
transaction, so two workers never claim the same job and a ``kill -9`` at any moment leaves
whole changes or none.

States::

    queued ──claim──▶ running ──▶ finished | failed | cancelled
       ▲                 │
       └── recover ◀─────┘ (its server died: queued again, to resume in the same session;
                            ``interrupted`` after MAX_ATTEMPTS runs)

A queued job is claimed highest ``priority`` first, then oldest. ``cancel`` of a queued job
ends it at once; of a running one it sets the ``cancel`` flag, which the worker turns into
SIGINT for the job's process (the compile stops and its session says cancelled).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.store.liveness import pid_alive, proc_start
from robopt_compile.store.records import dump_json, load_json, new_id, utc_now

JOB_KINDS = ("compile", "plan", "analyze", "evaluate", "bench")
JOB_STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ENDED = ("finished", "failed", "cancelled", "interrupted")
# Runs of one job. A job found running at start-up died with its server (its process dies with
# the server): it is queued again to resume, up to this many runs in all, so that a job that
# itself brings the server down (out of memory) does not loop for ever.
MAX_ATTEMPTS = 20


class JobStateError(InputError):
    """The job's state does not allow this (cancel an ended job, resume a running one)."""

    http_status = 409


@dataclass(frozen=True)
class Job:
    """A job's row."""

    id: str
    kind: str
    state: str
    priority: int
    request: dict[str, Any]
    owner: str | None
    created: str
    updated: str
    started: str | None
    finished: str | None
    attempts: int
    worker_pid: int | None
    session_id: str | None
    cancel: bool
    timeout_s: float | None
    progress: float
    stage: str | None
    result: dict[str, Any]
    error: str | None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("worker_pid")
        return d


def _job(r: sqlite3.Row) -> Job:
    return Job(
        r["id"], r["kind"], r["state"], r["priority"], load_json(r["request"], {}), r["owner"],
        r["created"], r["updated"], r["started"], r["finished"], r["attempts"], r["worker_pid"],
        r["session_id"], bool(r["cancel"]), r["timeout_s"], r["progress"], r["stage"],
        load_json(r["result"], {}), r["error"],
    )  # fmt: skip


def submit(
    store: Any, kind: str, request: dict[str, Any], *, priority: int = 0,
    owner: str | None = None, timeout_s: float | None = None,
) -> Job:  # fmt: skip
    """Queue a job; returns its row."""
    if kind not in JOB_KINDS:
        raise InputError(f"unknown job kind {kind!r}: one of {', '.join(JOB_KINDS)}.")
    jid, now, body = new_id(), utc_now(), dump_json(request)
    store.write(lambda c: c.execute(
        "INSERT INTO jobs(id, kind, state, priority, request, owner, created, updated, "
        "timeout_s) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
        (jid, kind, int(priority), body, owner, now, now, timeout_s)))  # fmt: skip
    return get_job(store, jid)


def get_job(store: Any, job_id: str) -> Job:
    """A job by id or unambiguous prefix (``UnknownIdError`` otherwise)."""
    return _job(store.row_by_prefix("jobs", "id", job_id, "job"))


def list_jobs(store: Any, state: str | None = None, limit: int = 100) -> list[Job]:
    """Jobs, newest first."""
    if state is None:
        rows = store.query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
    else:
        rows = store.query("SELECT * FROM jobs WHERE state=? ORDER BY created DESC LIMIT ?",
                           (state, limit))  # fmt: skip
    return [_job(r) for r in rows]


def claim(store: Any, pid: int | None = None) -> Job | None:
    """Take the next queued job for the process ``pid`` (default: this one), or None."""
    pid = pid or os.getpid()

    def run(c: sqlite3.Connection) -> str | None:
        r = c.execute("SELECT id FROM jobs WHERE state='queued' AND cancel=0 "
                      "ORDER BY priority DESC, created LIMIT 1").fetchone()  # fmt: skip
        if r is None:
            return None
        now = utc_now()
        c.execute(
            "UPDATE jobs SET state='running', worker_pid=?, proc_start=?, host=?, "
            "attempts=attempts+1, started=COALESCE(started, ?), updated=? WHERE id=?",
            (pid, proc_start(pid), store.host, now, now, r["id"]),
        )
        return str(r["id"])

    jid = store.write(run)
    return None if jid is None else get_job(store, jid)


def set_worker(store: Any, job_id: str, pid: int) -> None:
    """Record the process that now runs the job (the worker's child)."""
    store.write(lambda c: c.execute(
        "UPDATE jobs SET worker_pid=?, proc_start=?, updated=? WHERE id=?",
        (pid, proc_start(pid), utc_now(), job_id)))  # fmt: skip


def update(store: Any, job_id: str, **cols: Any) -> None:
    """Set ``progress``, ``stage``, ``session_id`` of a running job."""
    allowed = {"progress", "stage", "session_id"}
    bad = set(cols) - allowed
    assert not bad, bad
    sets = ", ".join(f"{k}=?" for k in cols)
    store.write(lambda c: c.execute(f"UPDATE jobs SET {sets}, updated=? WHERE id=?",
                                    (*cols.values(), utc_now(), job_id)))  # fmt: skip


def end(store: Any, job_id: str, state: str, *, result: dict[str, Any] | None = None,
        error: str | None = None) -> bool:  # fmt: skip
    """Move a running job to an ended state; False if it was not running (someone else
    ended or requeued it)."""
    assert state in ENDED, state
    body = dump_json(result or {})
    now = utc_now()
    return bool(store.write(lambda c: c.execute(
        "UPDATE jobs SET state=?, result=?, error=?, finished=?, updated=?, "
        "progress=CASE WHEN ?='finished' THEN 1 ELSE progress END "
        "WHERE id=? AND state='running'",
        (state, body, error, now, now, state, job_id)).rowcount))  # fmt: skip


def cancel(store: Any, job_id: str) -> Job:
    """Cancel a job: a queued one ends now, a running one is flagged for its worker.

    Raises:
        InputError: the job has ended already.
    """
    job = get_job(store, job_id)
    if job.state in ENDED:
        raise JobStateError(f"job {job.id[:12]} is {job.state}; only a queued or running job "
                         "can be cancelled.")  # fmt: skip
    now = utc_now()
    store.write(lambda c: c.execute(
        "UPDATE jobs SET cancel=1, updated=?, "
        "state=CASE WHEN state='queued' THEN 'cancelled' ELSE state END, "
        "finished=CASE WHEN state='queued' THEN ? ELSE finished END WHERE id=?",
        (now, now, job.id)))  # fmt: skip
    return get_job(store, job.id)


def resume(store: Any, job_id: str) -> Job:
    """Queue a failed, cancelled or interrupted job again; it goes on in its session.

    Raises:
        InputError: the job is queued, running or finished.
    """
    job = get_job(store, job_id)
    if job.state not in ("failed", "cancelled", "interrupted"):
        raise JobStateError(f"job {job.id[:12]} is {job.state}; only a failed, cancelled or "
                         "interrupted job can be resumed.")  # fmt: skip
    store.write(lambda c: c.execute(
        "UPDATE jobs SET state='queued', cancel=0, error=NULL, finished=NULL, attempts=0, "
        "updated=? WHERE id=?", (utc_now(), job.id)))  # fmt: skip
    return get_job(store, job.id)


def recover(store: Any) -> list[tuple[str, str]]:
    """Jobs left ``running`` by a process that died (a ``kill -9`` of the server): queued
    again to resume in their session, or ``interrupted`` after ``MAX_ATTEMPTS`` runs.

    Returns (job id, new state) for each. Jobs of other hosts are left alone.
    """
    rows = store.query("SELECT * FROM jobs WHERE state='running' AND host=?", (store.host,))
    out = []
    for r in rows:
        if pid_alive(r["worker_pid"], r["proc_start"]):
            continue
        new = "queued" if r["attempts"] < MAX_ATTEMPTS and not r["cancel"] else "interrupted"
        if r["cancel"]:
            new = "cancelled"

        def run(c: sqlite3.Connection, r: sqlite3.Row = r, new: str = new) -> int:
            return c.execute(
                "UPDATE jobs SET state=?, updated=?, worker_pid=NULL, "
                "finished=CASE WHEN ?='queued' THEN NULL ELSE ? END, "
                "error=CASE WHEN ?='interrupted' THEN ? ELSE error END "
                "WHERE id=? AND state='running' AND worker_pid IS ?",
                (new, utc_now(), new, utc_now(), new,
                 f"its process died {r['attempts']} times", r["id"], r["worker_pid"]),
            ).rowcount  # fmt: skip

        if store.write(run):
            out.append((str(r["id"]), new))
    return out
