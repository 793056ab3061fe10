"""What the store holds, as Python values: records, states, ids, times, JSON columns, errors.

The vocabulary every other store module shares; it imports nothing else of the store. The
record dataclasses mirror the tables of docs/STORE.md ("Schema"), and the ``*_from_row``
functions read them back from ``sqlite3.Row`` objects. JSON columns are written with
:func:`dump_json` (strict JSON: NaN and infinity become null) and read with :func:`load_json`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import uuid
from typing import Any

from robopt_compile.errors import InputError

SESSION_STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
STEP_STATES = ("running", "finished", "failed", "skipped", "rolled_back", "interrupted")


class StoreError(InputError):
    """The store cannot be opened or used as asked (missing, newer schema, unknown id)."""


class UnknownIdError(StoreError):
    """No session, model or artifact has this id (or prefix); or the prefix is ambiguous."""


def utc_now() -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2026-11-26T14:44:42.123456Z`` (sorts as text)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def new_id() -> str:
    """A UUID4 as 32 hex digits: random from the first digit, so short prefixes are unique.

    (Ordering comes from the ``created`` columns, not from ids.)
    """
    return uuid.uuid4().hex


def dump_json(data: Any) -> str:
    """``data`` as the text of a JSON column: strict JSON, sorted keys, numpy values as lists.

    Raises ``ValueError``/``TypeError`` for data that is not JSON (callers encode before they
    take the write lock, so a bad payload never leaves half a change).
    """
    from robopt_compile.jsonutil import finite, json_default

    return json.dumps(finite(data), default=json_default, allow_nan=False, sort_keys=True)


def load_json(text: str | None, default: Any = None) -> Any:
    """A JSON column's value; ``default`` for NULL or text that is not JSON."""
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


@dataclasses.dataclass
class ArtifactRecord:
    """One object in ``objects/``: its hash, size, kind and the session that stored it."""

    sha256: str
    size: int
    kind: str
    created: str
    session_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelRecord:
    """ModelMetadata: a model version; ``parent_id`` + ``derived_by`` give its lineage."""

    id: str
    name: str
    source: str | None
    source_kind: str | None
    family: str | None
    inputs: list[Any]
    outputs: list[Any]
    artifact: str | None
    created: str
    parent_id: str | None
    derived_by: dict[str, Any] | None
    session_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StepRecord:
    """One step (a pass, a build, a measurement) of a session."""

    session_id: str
    index: int
    name: str
    state: str
    started: str
    finished: str | None
    input_hash: str | None
    output_hash: str | None
    config: dict[str, Any]
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ResultRecord:
    """A measurement or decision: of a step (``step_index``) or of the whole session (None)."""

    id: int
    session_id: str
    step_index: int | None
    kind: str
    data: Any
    created: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EventRecord:
    """One event of a session, as stored in the table and the .jsonl log (docs/STORE.md)."""

    session: str
    seq: int
    time: str
    type: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SessionRecord:
    """OptimizationSession: one run of the optimization manager on one source and target."""

    id: str
    created: str
    updated: str
    state: str
    source: str | None
    target: str | None
    criteria: dict[str, Any]
    plan: Any
    pid: int | None
    host: str | None
    summary: dict[str, Any]
    error: str | None
    steps_done: int = 0
    steps_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def artifact_from_row(r: sqlite3.Row) -> ArtifactRecord:
    """An ``artifacts`` row."""
    return ArtifactRecord(**dict(r))


def model_from_row(r: sqlite3.Row) -> ModelRecord:
    """A ``models`` row."""
    return ModelRecord(
        id=r["id"],
        name=r["name"],
        source=r["source"],
        source_kind=r["source_kind"],
        family=r["family"],
        inputs=load_json(r["inputs"], []),
        outputs=load_json(r["outputs"], []),
        artifact=r["artifact"],
        created=r["created"],
        parent_id=r["parent_id"],
        derived_by=load_json(r["derived_by"]),
        session_id=r["session_id"],
    )


def step_from_row(r: sqlite3.Row) -> StepRecord:
    """A ``steps`` row."""
    return StepRecord(
        session_id=r["session_id"],
        index=r["idx"],
        name=r["name"],
        state=r["state"],
        started=r["started"],
        finished=r["finished"],
        input_hash=r["input_hash"],
        output_hash=r["output_hash"],
        config=load_json(r["config"], {}),
        error=r["error"],
    )


def result_from_row(r: sqlite3.Row) -> ResultRecord:
    """A ``results`` row."""
    return ResultRecord(
        id=r["id"],
        session_id=r["session_id"],
        step_index=r["step_index"],
        kind=r["kind"],
        data=load_json(r["data"]),
        created=r["created"],
    )


def event_from_row(r: sqlite3.Row) -> EventRecord:
    """An ``events`` row."""
    return EventRecord(
        session=r["session_id"],
        seq=r["seq"],
        time=r["time"],
        type=r["type"],
        payload=load_json(r["payload"], {}),
    )


def session_from_row(r: sqlite3.Row) -> SessionRecord:
    """A ``sessions`` row, with ``steps_done``/``steps_total`` when the query counted them."""
    keys = r.keys()
    return SessionRecord(
        id=r["id"],
        created=r["created"],
        updated=r["updated"],
        state=r["state"],
        source=r["source"],
        target=r["target"],
        criteria=load_json(r["criteria"], {}),
        plan=load_json(r["plan"], []),
        pid=r["pid"],
        host=r["host"],
        summary=load_json(r["summary"], {}),
        error=r["error"],
        steps_done=r["steps_done"] if "steps_done" in keys else 0,
        steps_total=r["steps_total"] if "steps_total" in keys else 0,
    )
