"""The store's catalogue: model versions with their lineage, and sessions as records.

Everything a :class:`~robopt_compile.store.sessions.Session` and the commands read: models
(``register_model``, ``lineage``), sessions, their steps, results and events, looked up by id
or unambiguous id prefix. Reading sessions first reaps dead owners: a ``running`` session of
this host whose process is gone is recorded ``interrupted`` (docs/STORE.md, "Guarantees").
"""

from __future__ import annotations

import sqlite3
from typing import Any

from robopt_compile.store.events import EventSink, read_events
from robopt_compile.store.liveness import pid_alive
from robopt_compile.store.objects import ObjectStore
from robopt_compile.store.records import (
    EventRecord,
    ModelRecord,
    ResultRecord,
    SessionRecord,
    StepRecord,
    UnknownIdError,
    dump_json,
    model_from_row,
    new_id,
    result_from_row,
    session_from_row,
    step_from_row,
    utc_now,
)

# A session with its finished and total step counts.
_SESSION_SQL = (
    "SELECT s.*, "
    "(SELECT COUNT(*) FROM steps t WHERE t.session_id=s.id AND t.state='finished') "
    "AS steps_done, "
    "(SELECT COUNT(*) FROM steps t WHERE t.session_id=s.id) AS steps_total "
    "FROM sessions s"
)


def _with_plan_total(rec: SessionRecord) -> SessionRecord:
    if isinstance(rec.plan, list):
        rec.steps_total = max(rec.steps_total, len(rec.plan))
    return rec


class Catalog(ObjectStore):
    """Models and session records, on top of the objects and the database."""

    # ---------------------------------------------------------------- models

    def register_model(
        self,
        name: str,
        *,
        source: str | None = None,
        source_kind: str | None = None,
        family: str | None = None,
        inputs: list[Any] | None = None,
        outputs: list[Any] | None = None,
        artifact: str | None = None,
        parent_id: str | None = None,
        derived_by: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> ModelRecord:
        """Record a model version; ``parent_id``/``derived_by`` say which step made it from what.

        ``derived_by`` is free JSON; the convention is ``{"session_id", "step_index", "step",
        "pass", "config"}`` (``Session.record_model`` fills it).
        """
        if parent_id is not None:
            self.get_model(parent_id)
        if artifact is not None and not self.has_artifact(artifact):
            raise UnknownIdError(f"artifact {artifact} is not in the store; put it first.")
        rec = ModelRecord(
            id=new_id(),
            name=name,
            source=source,
            source_kind=source_kind,
            family=family,
            inputs=list(inputs or []),
            outputs=list(outputs or []),
            artifact=artifact,
            created=utc_now(),
            parent_id=parent_id,
            derived_by=derived_by,
            session_id=session_id,
        )
        self.write(
            lambda c: c.execute(
                "INSERT INTO models(id, name, source, source_kind, family, inputs, outputs, "
                "artifact, created, parent_id, derived_by, session_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.name,
                    rec.source,
                    rec.source_kind,
                    rec.family,
                    dump_json(rec.inputs),
                    dump_json(rec.outputs),
                    rec.artifact,
                    rec.created,
                    rec.parent_id,
                    None if derived_by is None else dump_json(derived_by),
                    rec.session_id,
                ),
            )
        )
        return rec

    def get_model(self, model_id: str) -> ModelRecord:
        """The model with this id or unambiguous id prefix."""
        return model_from_row(self.row_by_prefix("models", "id", model_id, "model"))

    def models(self, limit: int | None = None) -> list[ModelRecord]:
        """Models, newest first."""
        sql = "SELECT * FROM models ORDER BY created DESC, id DESC"
        rows = self.query(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [model_from_row(r) for r in rows]

    def lineage(self, model_id: str) -> list[dict[str, Any]]:
        """The chain from the original source model to ``model_id``, oldest first.

        Each entry is ``{"model": ModelRecord.to_dict(), "derived_by": {...} | None}``, where
        ``derived_by`` is the edge from the previous entry (the step or pass that made it).
        """
        chain: list[ModelRecord] = []
        seen: set[str] = set()
        m: ModelRecord | None = self.get_model(model_id)
        while m is not None and m.id not in seen:
            seen.add(m.id)
            chain.append(m)
            if m.parent_id is None:
                break
            rows = self.query("SELECT * FROM models WHERE id=?", (m.parent_id,))
            m = model_from_row(rows[0]) if rows else None
        return [{"model": x.to_dict(), "derived_by": x.derived_by} for x in reversed(chain)]

    def children(self, model_id: str) -> list[ModelRecord]:
        """Models derived directly from ``model_id``."""
        rows = self.query("SELECT * FROM models WHERE parent_id=? ORDER BY created", (model_id,))
        return [model_from_row(r) for r in rows]

    # ---------------------------------------------------------------- sessions

    def mark_interrupted(self) -> list[str]:
        """Record as ``interrupted`` every running session whose process died on this host.

        Its running step becomes ``interrupted`` too, an ``interrupted`` event is recorded,
        and its ``.jsonl`` log gets any committed event the dead process had not appended.
        Returns the ids. Sessions of other hosts are left as they are (their pid means nothing
        here).
        """
        rows = self.query(
            "SELECT id, pid, proc_start FROM sessions WHERE state='running' AND host=?",
            (self.host,),
        )
        dead = [r for r in rows if not pid_alive(r["pid"], r["proc_start"])]
        done = []
        for r in dead:

            def run(c: sqlite3.Connection, r: sqlite3.Row = r) -> bool:
                cur = c.execute(
                    "UPDATE sessions SET state='interrupted', updated=? "
                    "WHERE id=? AND state='running' AND pid IS ?",
                    (utc_now(), r["id"], r["pid"]),
                )
                if not cur.rowcount:
                    return False
                c.execute(
                    "UPDATE steps SET state='interrupted', finished=? "
                    "WHERE session_id=? AND state='running'",
                    (utc_now(), r["id"]),
                )
                return True

            sink = EventSink(self, r["id"])
            ev = sink.emit(
                "interrupted", {"pid": r["pid"], "host": self.host}, before=run, log=False
            )
            if ev is not None:
                sink.sync_log()  # the dead writer's last line may be missing: the table has it
                done.append(r["id"])
        return done

    def sessions(self, limit: int | None = None, state: str | None = None) -> list[SessionRecord]:
        """Sessions, newest first (dead owners are first recorded as ``interrupted``).

        ``steps_total`` is the number of planned steps when the plan is a list longer than the
        steps started so far.
        """
        self.mark_interrupted()
        sql = _SESSION_SQL
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE s.state=?"
            args = (state,)
        sql += " ORDER BY s.created DESC, s.id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_with_plan_total(session_from_row(r)) for r in self.query(sql, args)]

    def get_session(self, session_id: str) -> SessionRecord:
        """The session with this id or unambiguous id prefix."""
        self.mark_interrupted()
        row = self.row_by_prefix("sessions", "id", session_id, "session")
        rows = self.query(_SESSION_SQL + " WHERE s.id=?", (row["id"],))
        return _with_plan_total(session_from_row(rows[0]))

    def steps(self, session_id: str) -> list[StepRecord]:
        """A session's steps in order."""
        rows = self.query("SELECT * FROM steps WHERE session_id=? ORDER BY idx", (session_id,))
        return [step_from_row(r) for r in rows]

    def results(self, session_id: str, step_index: int | None = None) -> list[ResultRecord]:
        """A session's results (of one step when ``step_index`` is given), oldest first."""
        sql = "SELECT * FROM results WHERE session_id=?"
        args: tuple[Any, ...] = (session_id,)
        if step_index is not None:
            sql += " AND step_index=?"
            args += (step_index,)
        return [result_from_row(r) for r in self.query(sql + " ORDER BY id", args)]

    def events(self, session_id: str, after_seq: int = 0) -> list[EventRecord]:
        """A session's events with ``seq > after_seq``, in order (for tailing)."""
        return read_events(self, session_id, after_seq)
