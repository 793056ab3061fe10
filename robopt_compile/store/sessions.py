"""The session recorder: one optimization or compile run, step by step, in the store.

A :class:`Session` claims its session for this process (pid, host, start time), opens and
closes steps, records results and models, and closes the session as finished, failed or
cancelled. Each state change and the event that reports it are one transaction (a crash
leaves both or neither); the events go through :class:`~robopt_compile.store.events.EventSink`.
``Store.create_session``, ``open_session`` and ``resume_session`` hand them out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from robopt_compile.store.catalog import Catalog
from robopt_compile.store.events import EventSink
from robopt_compile.store.liveness import proc_start
from robopt_compile.store.records import (
    EventRecord,
    ModelRecord,
    SessionRecord,
    StepRecord,
    StoreError,
    dump_json,
    utc_now,
)


class Session:
    """One optimization session: its steps, results and events (made by ``Store``).

    ``store.create_session(source, target, criteria, plan)`` returns one, running and owned by
    this process. Used as a context manager it finishes on success, records ``failed`` on an
    exception and ``cancelled`` on Ctrl-C::

        with store.create_session("zoo:act-policy", "host", {"max_latency_ms": 20}) as s:
            s.start_step("quantize", input_hash=src, config={"precision": "int8"})
            s.finish_step(out_sha, {"fidelity": {"cosine": 0.9995}})
            s.finish({"latency_ms": 3.1})
    """

    def __init__(self, store: Catalog, session_id: str) -> None:
        self.store = store
        self.id = session_id
        self.sink = EventSink(store, session_id)
        self.current_step: int | None = None
        self._step_t0 = 0.0
        self._t0 = time.monotonic()

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        state = self.record().state
        if state not in ("running", "queued"):
            return
        if et is None:
            self.finish({})
        elif issubclass(et, KeyboardInterrupt):
            self.cancel("interrupted by the user (Ctrl-C)")
        else:
            self.fail(f"{et.__name__}: {ev}")

    # ------------------------------------------------------------ reading

    def record(self) -> SessionRecord:
        """The session's row as it is now."""
        return self.store.get_session(self.id)

    def steps(self) -> list[StepRecord]:
        """Its steps in order."""
        return self.store.steps(self.id)

    def events(self, after_seq: int = 0) -> list[EventRecord]:
        """Its events after ``after_seq``."""
        return self.store.events(self.id, after_seq)

    def last_finished_step(self) -> StepRecord | None:
        """The last step of the unbroken run of done steps from the start: where to resume.

        Steps that were skipped or rolled back do not break the run (their input goes on);
        the first failed, interrupted or running step does.
        """
        last = None
        for st in self.steps():
            if st.state == "finished":
                last = st
            elif st.state not in ("skipped", "rolled_back"):
                break
        return last

    # ------------------------------------------------------------ lifecycle

    def emit(self, type: str, **payload: Any) -> EventRecord | None:
        """Record an event (``metric``, ``warning``, ``retry``, ...) with this payload."""
        if self.current_step is not None and type in ("metric", "warning", "retry"):
            payload.setdefault("step", self.current_step)
        return self.sink.emit(type, payload)

    def start(self, resumed: bool = False) -> None:
        """Claim the session for this process (pid, host) and mark it running."""
        pid = os.getpid()
        rec = self.store.query("SELECT * FROM sessions WHERE id=?", (self.id,))[0]

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE sessions SET state='running', pid=?, proc_start=?, host=?, error=NULL "
                "WHERE id=?",
                (pid, proc_start(pid), self.store.host, self.id),
            )

        self.sink.emit(
            "started",
            {
                "source": rec["source"],
                "target": rec["target"],
                "criteria": json.loads(rec["criteria"]),
                "plan": json.loads(rec["plan"]),
                "pid": pid,
                "host": self.store.host,
                "resumed": resumed,
            },
            before=run,
        )

    def set_plan(self, plan: Any) -> None:
        """Replace the recorded plan (the planner may refine it as it measures)."""
        text = dump_json(plan)
        self.store.write(
            lambda c: c.execute(
                "UPDATE sessions SET plan=?, updated=? WHERE id=?", (text, utc_now(), self.id)
            )
        )

    def start_step(
        self, name: str, input_hash: str | None = None, config: dict[str, Any] | None = None
    ) -> int:
        """Begin the next step; return its index (0, 1, ...). Emits ``step_started``."""
        if self.current_step is not None:
            raise StoreError(f"step {self.current_step} of session {self.id[:12]} is still open.")
        cfg = config or {}
        cfg_text = dump_json(cfg)

        def run(c: sqlite3.Connection) -> dict[str, Any]:
            idx = c.execute(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM steps WHERE session_id=?", (self.id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO steps(session_id, idx, name, state, started, input_hash, config) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (self.id, idx, name, utc_now(), input_hash, cfg_text),
            )
            return {"step": idx}

        ev = self.sink.emit(
            "step_started", {"name": name, "input": input_hash, "config": cfg}, before=run
        )
        assert ev is not None
        idx = int(ev.payload["step"])
        self.current_step = idx
        self._step_t0 = time.monotonic()
        return idx

    def _close_step(
        self,
        state: str,
        output_hash: str | None,
        results: dict[str, Any] | None,
        error: str | None,
    ) -> int:
        if self.current_step is None:
            raise StoreError(f"session {self.id[:12]} has no open step.")
        idx = self.current_step
        name = self.store.query(
            "SELECT name FROM steps WHERE session_id=? AND idx=?", (self.id, idx)
        )[0][0]
        results = results or {}
        encoded = {k: dump_json(v) for k, v in results.items()}

        def run(c: sqlite3.Connection) -> None:
            now = utc_now()
            c.execute(
                "UPDATE steps SET state=?, finished=?, output_hash=?, error=? "
                "WHERE session_id=? AND idx=?",
                (state, now, output_hash, error, self.id, idx),
            )
            for kind, data in encoded.items():
                c.execute(
                    "INSERT INTO results(session_id, step_index, kind, data, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (self.id, idx, kind, data, now),
                )

        payload: dict[str, Any] = {
            "step": idx,
            "name": name,
            "state": state,
            "output": output_hash,
            "results": sorted(results),
            "seconds": round(time.monotonic() - self._step_t0, 6),
        }
        if error is not None:
            payload["error"] = error
        self.sink.emit("step_finished", payload, before=run)
        self.current_step = None
        return idx

    def finish_step(
        self, output_hash: str | None = None, results: dict[str, Any] | None = None
    ) -> int:
        """Close the open step as finished with its output and results ({kind: JSON data}).

        The step row, its results and the ``step_finished`` event are one transaction: a crash
        leaves either all of them or none.
        """
        return self._close_step("finished", output_hash, results, None)

    def fail_step(self, error: str, results: dict[str, Any] | None = None) -> int:
        """Close the open step as failed (the session goes on: the planner may fall back)."""
        return self._close_step("failed", None, results, str(error))

    def skip_step(self, reason: str) -> int:
        """Close the open step as skipped (it did not apply); its input goes on unchanged."""
        return self._close_step("skipped", None, None, str(reason))

    def rollback_step(self, index: int, reason: str) -> None:
        """Mark finished step ``index`` rolled back (e.g. it broke the accuracy bound)."""
        row = self.store.query(
            "SELECT name FROM steps WHERE session_id=? AND idx=?", (self.id, index)
        )
        if not row:
            raise StoreError(f"session {self.id[:12]} has no step {index}.")

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE steps SET state='rolled_back', error=? WHERE session_id=? AND idx=?",
                (reason, self.id, index),
            )

        self.sink.emit(
            "rolled_back", {"step": index, "name": row[0][0], "reason": reason}, before=run
        )

    def add_result(self, kind: str, data: Any, step_index: int | None = None) -> None:
        """Record a result of the session (or of step ``step_index``) outside ``finish_step``."""
        text = dump_json(data)
        self.store.write(
            lambda c: c.execute(
                "INSERT INTO results(session_id, step_index, kind, data, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.id, step_index, kind, text, utc_now()),
            )
        )

    def put_file(self, path: Path | str, kind: str = "file") -> str:
        """Store a file as this session's (``gc`` keeps it while the session runs)."""
        return self.store.put_file(path, kind=kind, session_id=self.id)

    def put_bytes(self, data: bytes, kind: str = "bytes") -> str:
        """Store bytes as this session's."""
        return self.store.put_bytes(data, kind=kind, session_id=self.id)

    def put_tree(self, root: Path | str) -> str:
        """Store a folder as this session's; returns the tree manifest's sha256."""
        return self.store.put_tree(root, session_id=self.id)

    def record_model(
        self,
        name: str,
        artifact: str | None,
        parent_id: str | None,
        pass_name: str | None = None,
        config: dict[str, Any] | None = None,
        **fields: Any,
    ) -> ModelRecord:
        """Register a model this session made; ``derived_by`` names this session and step."""
        derived = None
        if parent_id is not None:
            idx = self.current_step
            if idx is None:
                done = self.store.query(
                    "SELECT MAX(idx) FROM steps WHERE session_id=?", (self.id,)
                )[0][0]
                idx = done
            step_name = None
            if idx is not None:
                rows = self.store.query(
                    "SELECT name FROM steps WHERE session_id=? AND idx=?", (self.id, idx)
                )
                step_name = rows[0][0] if rows else None
            derived = {
                "session_id": self.id,
                "step_index": idx,
                "step": step_name,
                "pass": pass_name or step_name,
                "config": config or {},
            }
        fields.setdefault("source_kind", "derived" if parent_id else None)
        return self.store.register_model(
            name,
            artifact=artifact,
            parent_id=parent_id,
            derived_by=derived,
            session_id=self.id,
            **fields,
        )

    def _close(self, state: str, event: str, payload: dict[str, Any], **cols: Any) -> None:
        def run(c: sqlite3.Connection) -> None:
            if self.current_step is not None:
                c.execute(
                    "UPDATE steps SET state=?, finished=? WHERE session_id=? AND idx=? "
                    "AND state='running'",
                    ("failed" if state == "failed" else "interrupted", utc_now(), self.id,
                     self.current_step),
                )  # fmt: skip
            c.execute(
                "UPDATE sessions SET state=?, summary=COALESCE(?, summary), error=? WHERE id=?",
                (state, cols.get("summary"), cols.get("error"), self.id),
            )

        self.sink.emit(event, payload, before=run)
        self.current_step = None

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """The session succeeded; ``summary`` (JSON) is what ``sessions`` shows."""
        summary = summary or {}
        self._close(
            "finished",
            "finished",
            {"summary": summary, "seconds": round(time.monotonic() - self._t0, 3)},
            summary=dump_json(summary),
        )

    def fail(self, error: str) -> None:
        """The session failed with this (one line) error."""
        self._close(
            "failed", "failed", {"error": str(error), "step": self.current_step}, error=str(error)
        )

    def cancel(self, reason: str = "cancelled") -> None:
        """The session was cancelled (by the user or the runner)."""
        self._close("cancelled", "cancelled", {"reason": reason}, error=reason)
