"""A store folder's layout and its SQLite connection: WAL, short transactions retried while busy.

The base of :class:`~robopt_compile.store.store.Store`: the classes above it (objects, catalogue,
store) only ever change the database through :meth:`Database.write`, one ``BEGIN IMMEDIATE``
transaction retried with jittered backoff while another process holds the write lock, so
several robopt processes can share a store and a ``kill -9`` at any moment leaves whole
transactions or none (docs/STORE.md, "Guarantees").

Layout of a store folder::

    <root>/store.db                 SQLite, WAL mode (store.db-wal, store.db-shm beside it)
    <root>/objects/ab/<sha256>      one file per artifact, named by the sha256 of its bytes
    <root>/objects/tmp/             objects being written (never read as objects)
    <root>/sessions/<id>.jsonl      each session's events, one JSON object per line
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from robopt_compile.store.locate import DB_NAME
from robopt_compile.store.records import StoreError, UnknownIdError
from robopt_compile.store.schema import migrate

T = TypeVar("T")

_ID = re.compile(r"^[0-9A-Za-z]+$")
# What `robopt-compile` command lists the ids of each kind (for the unknown-id message).
_LISTED_BY = {
    "session": "`robopt-compile sessions`", "model": "`robopt-compile store ls`",
    "artifact": "`robopt-compile store ls --artifacts`", "job": "GET /api/v1/jobs",
}  # fmt: skip


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because another connection holds a lock (worth retrying)."""
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class Database:
    """A store folder and one SQLite connection to its database, guarded by a lock.

    Threads of one process may share it; each process opens its own. The folder's layout is
    made when it is opened (:class:`StoreError` if it cannot be), and the schema is migrated
    to this robopt's version.
    """

    def __init__(self, root: Path, db_path: Path | None = None, lock_timeout_s: float = 60.0):
        self.root = Path(root)
        self.db_path = Path(db_path) if db_path else self.root / DB_NAME
        self.objects = self.root / "objects"
        self.tmp = self.objects / "tmp"
        self.sessions_dir = self.root / "sessions"
        self.lock_timeout_s = lock_timeout_s
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        try:
            for d in (self.root, self.db_path.parent, self.objects, self.tmp, self.sessions_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc}") from exc
        try:
            self._conn = sqlite3.connect(
                self.db_path, timeout=lock_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}")
            self._retry(lambda: self._conn.execute("PRAGMA journal_mode=WAL").fetchone())
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.write(lambda c: migrate(c, self.db_path))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path} is not a usable robopt store: {exc}") from exc

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction; retried while locked.

        ``fn`` may run again after a lock timeout rolled it back, so what it does outside the
        database (renaming an object into place, deleting one) must be safe to repeat.
        """

        def attempt() -> T:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:  # any failure, Ctrl-C included, rolls back; re-raised
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
                return out

        return self._retry(attempt)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (a consistent snapshot)."""
        with self._lock:
            return self._retry(lambda: self._conn.execute(sql, args).fetchall())

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self.query("SELECT MAX(version) FROM schema_version")[0][0])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` or SQLite's first problem."""
        return str(self.query("PRAGMA integrity_check")[0][0])

    def event_log_path(self, session_id: str) -> Path:
        """The JSON-lines event log of a session."""
        return self.sessions_dir / f"{session_id}.jsonl"

    def row_by_prefix(self, table: str, column: str, key: str, what: str) -> sqlite3.Row:
        """The row of ``table`` whose ``column`` is ``key`` or starts with it, unambiguously.

        ``table`` and ``column`` are identifiers from robopt's code (never user input); ``what``
        (``session``, ``model``, ``artifact``) names the kind in the messages.

        Raises:
            UnknownIdError: ``key`` is not hex digits, matches nothing, or matches several rows.
        """
        key = key.strip().lower() if table != "models" else key.strip()
        if not key or not _ID.match(key):
            raise UnknownIdError(f"{what} id {key!r} is not an id (hex digits).")
        rows = self.query(
            f"SELECT * FROM {table} WHERE {column} >= ? AND {column} < ? ORDER BY {column} LIMIT 6",
            (key, key + "\U0010ffff"),
        )
        exact = [r for r in rows if r[column] == key]
        if exact:
            return exact[0]
        if not rows:
            raise UnknownIdError(
                f"no {what} {key!r} in the store at {self.root}; {_LISTED_BY[what]} lists them."
            )
        if len(rows) > 1:
            shown = ", ".join(r[column][:16] for r in rows[:5])
            raise UnknownIdError(
                f"{what} id prefix {key!r} is ambiguous ({shown}, ...); give more."
            )
        return rows[0]
