"""The model store: an embedded SQLite database plus content-addressed artifacts (docs/STORE.md).

:func:`open_store` gives a :class:`Store`, built up by job, one module each:

    database.py   the folder layout, the SQLite connection, retried transactions, schema
    objects.py    content-addressed objects (files, bytes, trees)
    catalog.py    models and their lineage; sessions, steps, results and events as records
    sessions.py   the Session recorder that ``create_session`` / ``resume_session`` return
    events.py     the events table and each session's .jsonl log
    maintenance.py  verify, gc and the build cache's size

Guarantees (each has a test in ``tests/store/``):

- Objects are written to ``objects/tmp``, fsynced, then renamed into place while the writer
  holds SQLite's write lock, so a path under ``objects/ab/`` only ever holds complete bytes
  whose sha256 is its name, and an existing object is never rewritten.
- Every change to the tables is one short ``BEGIN IMMEDIATE`` transaction (retried when another
  process holds the lock), so several robopt processes can share a store and a ``kill -9`` at
  any moment leaves it consistent: a transaction is either wholly there or not at all.
- A session whose process died (its pid no longer runs on this host) is reported, and
  recorded, as ``interrupted``; its finished steps and results stay for ``resume``.
- ``gc`` removes only objects nothing references and never those of a queued or running
  session; ``verify`` re-hashes every object and checks that every reference resolves.

The store imports only the standard library (the robot may keep a store too).
"""

from __future__ import annotations

from typing import Any

from robopt_compile.store.catalog import Catalog
from robopt_compile.store.locate import store_location
from robopt_compile.store.maintenance import (
    DEFAULT_GC_GRACE_S,
    clear_cache,
    collect_garbage,
    trim_cache,
    verify,
)
from robopt_compile.store.records import StoreError, dump_json, new_id, utc_now
from robopt_compile.store.sessions import Session


class Store(Catalog):
    """A store folder: the database and the objects. Use :func:`open_store` to get one.

    One ``Store`` holds one SQLite connection, guarded by a lock, so threads of one process may
    share it; each process opens its own. Every write is a short ``BEGIN IMMEDIATE``
    transaction, retried for up to ``lock_timeout_s`` while another process holds the lock.
    """

    # ---------------------------------------------------------------- session handles

    def create_session(
        self,
        source: str | None = None,
        target: str | None = None,
        criteria: dict[str, Any] | None = None,
        plan: Any = None,
        *,
        start: bool = True,
    ) -> Session:
        """A new session, owned by this process, with a ``started`` event (``start=True``).

        With ``start=False`` it is ``queued`` (no owner) until :meth:`Session.start`.
        """
        sid = new_id()
        now = utc_now()
        self.write(
            lambda c: c.execute(
                "INSERT INTO sessions(id, created, updated, state, source, target, criteria, "
                "plan) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (sid, now, now, source, target, dump_json(criteria or {}), dump_json(plan or [])),
            )
        )
        session = Session(self, sid)
        if start:
            session.start()
        return session

    def open_session(self, session_id: str) -> Session:
        """A :class:`Session` handle on an existing session (id or unambiguous prefix)."""
        return Session(self, self.get_session(session_id).id)

    def resume_session(self, session_id: str) -> Session:
        """Claim an interrupted or failed session for this process; emits ``started``.

        Its finished steps and their outputs stay; ``Session.last_finished_step()`` says where
        to go on from.
        """
        rec = self.get_session(session_id)
        if rec.state in ("running", "finished", "cancelled"):
            raise StoreError(f"session {rec.id[:12]} is {rec.state}; it cannot be resumed.")
        session = self.open_session(rec.id)
        session.start(resumed=True)
        return session

    # ---------------------------------------------------------------- upkeep

    def verify(self) -> dict[str, Any]:
        """Re-hash every object and check every reference; a JSON-able report.

        Its keys are described at :func:`robopt_compile.store.maintenance.verify`.
        """
        return verify(self)

    def gc(self, dry_run: bool = False, grace_s: float = DEFAULT_GC_GRACE_S) -> dict[str, Any]:
        """Remove objects no row references, and stale temporary files.

        Kept: objects referenced by models, steps or build-cache rows, members of a kept tree,
        objects stored by a queued or running session, and anything younger than ``grace_s``
        seconds (an object a running compile has just stored and is about to reference).
        Returns ``{"removed": [sha...], "bytes", "tmp_removed": [...], "kept", "dry_run"}``.
        """
        self.mark_interrupted()
        return collect_garbage(self, dry_run, grace_s)

    def cache_clear(self, stage: str | None = None) -> int:
        """Forget build-cache rows (all, or one stage's); their objects go at the next ``gc``.

        Returns the number of rows removed.
        """
        return clear_cache(self, stage)

    def cache_trim(self, max_bytes: int, dry_run: bool = False) -> dict[str, Any]:
        """Forget the least recently used build-cache rows until the objects the rest
        reference fit in ``max_bytes`` (each object counted once, tree members included).

        The objects of forgotten rows go at the next ``gc`` unless something else (a model,
        a session step, another cache row) still references them. Returns ``{"removed":
        [key...], "kept": n, "kept_bytes", "dry_run"}``.
        """
        return trim_cache(self, max_bytes, dry_run)


def open_store(spec: str | None = None, *, create: bool = True) -> Store:
    """Open (and with ``create``, make) the store named by ``spec``.

    Args:
        spec: a folder, a ``.db`` file, ``sqlite:///abs/path/store.db``, or None for the
            default location (``$ROBOPT_STORE`` / ``$XDG_CACHE_HOME`` / ``~/.cache``).
        create: make the store if it does not exist; without it a missing store raises.

    Raises:
        StoreError: no store there (``create=False``), a URL that is not sqlite, a store made
            by a newer robopt, or a file that is not a SQLite database.
    """
    root, db = store_location(spec)
    if not create and not db.is_file():
        raise StoreError(
            f"no robopt store at {db} (the first compile creates it); pass --store PATH or set "
            "ROBOPT_STORE."
        )
    return Store(root, db)
