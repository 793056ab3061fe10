"""The model store: an embedded SQLite database plus content-addressed artifacts (docs/STORE.md).

Layout of a store folder (``$ROBOPT_STORE``, else ``$XDG_CACHE_HOME/robopt/store``, else
``~/.cache/robopt/store``)::

    <root>/store.db                 SQLite, WAL mode: models, sessions, steps, results, events,
                                    artifacts (catalogue), schema_version
    <root>/objects/ab/<sha256>      one file per artifact, named by the sha256 of its bytes
    <root>/objects/tmp/             objects being written (never read as objects)
    <root>/sessions/<id>.jsonl      each session's events, one JSON object per line

Guarantees (each has a test in ``tests/test_store.py``):

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

This module imports only the standard library (the robot may keep a store too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from robopt_compile.errors import InputError, RoboptError
from robopt_compile.jsonutil import sha256_file

if TYPE_CHECKING:
    from robopt_compile.store.events import Session

T = TypeVar("T")

SCHEMA_VERSION = 2
DB_NAME = "store.db"
TREE_FORMAT = "robopt-tree/1"
SESSION_STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
STEP_STATES = ("running", "finished", "failed", "skipped", "rolled_back", "interrupted")
DEFAULT_GC_GRACE_S = 3600.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

# Migration N brings a store from schema version N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE artifacts (
        sha256     TEXT PRIMARY KEY,
        size       INTEGER NOT NULL,
        kind       TEXT NOT NULL,          -- file | bytes | tree (a manifest of files)
        created    TEXT NOT NULL,
        session_id TEXT                    -- the session that stored it (gc protection)
    );
    CREATE TABLE models (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        source      TEXT,
        source_kind TEXT,                  -- zoo | onnx | pt2 | factory | hf | derived
        family      TEXT,                  -- architecture family: cnn, mlp, act, diffusion, vla
        inputs      TEXT NOT NULL DEFAULT '[]',   -- JSON [{name, shape, dtype}]
        outputs     TEXT NOT NULL DEFAULT '[]',
        artifact    TEXT,                  -- sha256 of the model file or tree
        created     TEXT NOT NULL,
        parent_id   TEXT REFERENCES models(id),
        derived_by  TEXT,                  -- JSON {session_id, step_index, step, pass, config}
        session_id  TEXT
    );
    CREATE INDEX models_parent ON models(parent_id);
    CREATE TABLE sessions (
        id         TEXT PRIMARY KEY,
        created    TEXT NOT NULL,
        updated    TEXT NOT NULL,
        state      TEXT NOT NULL,
        source     TEXT,
        target     TEXT,
        criteria   TEXT NOT NULL DEFAULT '{}',
        plan       TEXT NOT NULL DEFAULT '[]',
        pid        INTEGER,
        proc_start TEXT,                   -- the process's start time, against pid reuse
        host       TEXT,
        summary    TEXT NOT NULL DEFAULT '{}',
        error      TEXT
    );
    CREATE INDEX sessions_created ON sessions(created);
    CREATE TABLE steps (
        session_id  TEXT NOT NULL REFERENCES sessions(id),
        idx         INTEGER NOT NULL,
        name        TEXT NOT NULL,
        state       TEXT NOT NULL,
        started     TEXT NOT NULL,
        finished    TEXT,
        input_hash  TEXT,
        output_hash TEXT,
        config      TEXT NOT NULL DEFAULT '{}',
        error       TEXT,
        PRIMARY KEY (session_id, idx)
    );
    CREATE TABLE results (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        step_index INTEGER,
        kind       TEXT NOT NULL,
        data       TEXT NOT NULL,
        created    TEXT NOT NULL
    );
    CREATE INDEX results_session ON results(session_id, step_index);
    CREATE TABLE events (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        seq        INTEGER NOT NULL,
        time       TEXT NOT NULL,
        type       TEXT NOT NULL,
        payload    TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    """,
    # 2: the build cache (robopt_compile/store/cache.py): a stage's output objects by key.
    """
    CREATE TABLE cache (
        key     TEXT PRIMARY KEY,          -- sha256 of stage, input hash, config, tool versions
        stage   TEXT NOT NULL,             -- export | transform | build
        objects TEXT NOT NULL DEFAULT '{}',  -- JSON {name: sha256} (files and trees)
        meta    TEXT NOT NULL DEFAULT '{}',  -- JSON: what the stage returns besides files
        created TEXT NOT NULL,
        used    TEXT NOT NULL,
        hits    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX cache_stage ON cache(stage);
    """,
)


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


def _dumps(data: Any) -> str:
    from robopt_compile.bench.results import _finite
    from robopt_compile.jsonutil import json_default

    return json.dumps(_finite(data), default=json_default, allow_nan=False, sort_keys=True)


def _loads(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def default_store_root() -> Path:
    """``$ROBOPT_STORE``, else ``$XDG_CACHE_HOME/robopt/store``, else ``~/.cache/robopt/store``."""
    env = os.environ.get("ROBOPT_STORE")
    if env:
        return _spec_paths(env)[0]
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "robopt" / "store"


def _spec_paths(spec: str) -> tuple[Path, Path]:
    """(root folder, database file) for a folder, a ``.db`` file or a ``sqlite:///`` URL."""
    if "://" in spec:
        scheme, rest = spec.split("://", 1)
        if scheme != "sqlite":
            raise StoreError(
                f"store URL {spec!r}: only sqlite:///ABSOLUTE/PATH/store.db is supported "
                "(server databases are not implemented yet)."
            )
        if not rest.startswith("/"):
            raise StoreError(f"store URL {spec!r} must be sqlite:///ABSOLUTE/PATH (three slashes).")
        db = Path(rest).expanduser()
        return db.parent, db
    p = Path(spec).expanduser()
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return p.parent, p
    return p, p / DB_NAME


def store_location(spec: str | None = None) -> tuple[Path, Path]:
    """(root folder, database file) that ``open_store(spec)`` would use."""
    if spec:
        return _spec_paths(spec)
    root = default_store_root()
    env = os.environ.get("ROBOPT_STORE")
    return _spec_paths(env) if env else (root, root / DB_NAME)


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


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int | None, proc_start: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, or a reused pid, counts as dead)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):
        return False
    return not (proc_start and len(fields) > 19 and fields[19] != proc_start)


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


def _model(r: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        id=r["id"],
        name=r["name"],
        source=r["source"],
        source_kind=r["source_kind"],
        family=r["family"],
        inputs=_loads(r["inputs"], []),
        outputs=_loads(r["outputs"], []),
        artifact=r["artifact"],
        created=r["created"],
        parent_id=r["parent_id"],
        derived_by=_loads(r["derived_by"]),
        session_id=r["session_id"],
    )


def _step(r: sqlite3.Row) -> StepRecord:
    return StepRecord(
        session_id=r["session_id"],
        index=r["idx"],
        name=r["name"],
        state=r["state"],
        started=r["started"],
        finished=r["finished"],
        input_hash=r["input_hash"],
        output_hash=r["output_hash"],
        config=_loads(r["config"], {}),
        error=r["error"],
    )


def _session(r: sqlite3.Row) -> SessionRecord:
    keys = r.keys()
    return SessionRecord(
        id=r["id"],
        created=r["created"],
        updated=r["updated"],
        state=r["state"],
        source=r["source"],
        target=r["target"],
        criteria=_loads(r["criteria"], {}),
        plan=_loads(r["plan"], []),
        pid=r["pid"],
        host=r["host"],
        summary=_loads(r["summary"], {}),
        error=r["error"],
        steps_done=r["steps_done"] if "steps_done" in keys else 0,
        steps_total=r["steps_total"] if "steps_total" in keys else 0,
    )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class Store:
    """A store folder: the database and the objects. Use :func:`open_store` to get one.

    One ``Store`` holds one SQLite connection, guarded by a lock, so threads of one process may
    share it; each process opens its own. Every write is a short ``BEGIN IMMEDIATE``
    transaction, retried for up to ``lock_timeout_s`` while another process holds the lock.
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
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path} is not a usable robopt store: {exc}") from exc

    # ---------------------------------------------------------------- transactions

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
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
                if not _is_busy(exc) or time.monotonic() > deadline:
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
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
                return out

        return self._retry(attempt)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (a consistent snapshot)."""
        with self._lock:
            return self._retry(lambda: self._conn.execute(sql, args).fetchall())

    def _migrate(self) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            have = row[0] or 0
            if have > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.db_path} has schema version {have}; this robopt reads up to "
                    f"{SCHEMA_VERSION}. Upgrade robopt or use another --store."
                )
            for version in range(have + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version - 1].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))

        self.write(run)

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self.query("SELECT MAX(version) FROM schema_version")[0][0])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` or SQLite's first problem."""
        return str(self.query("PRAGMA integrity_check")[0][0])

    # ---------------------------------------------------------------- objects

    def object_path(self, sha: str) -> Path:
        """Where object ``sha`` lives (whether or not it exists)."""
        if not _HEX64.match(sha):
            raise StoreError(f"{sha!r} is not a sha256 (64 lowercase hex digits).")
        return self.objects / sha[:2] / sha

    def _commit_object(
        self, tmp: Path, sha: str, size: int, kind: str, session_id: str | None
    ) -> str:
        """Move a complete, fsynced temp file into place and record it, under the write lock."""
        dest = self.object_path(sha)

        def run(c: sqlite3.Connection) -> None:
            if self._claim(c, sha, size, kind, session_id):
                tmp.unlink(missing_ok=True)  # content-addressed: the same bytes are there
                return
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)  # atomic: the name appears with all its bytes, or not at all
            with contextlib.suppress(OSError):  # make the rename itself durable
                fd = os.open(dest.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            c.execute(
                "INSERT OR IGNORE INTO artifacts(sha256, size, kind, created, session_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (sha, size, kind, utc_now(), session_id),
            )

        try:
            self.write(run)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def _claim(
        self, c: sqlite3.Connection, sha: str, size: int, kind: str, session_id: str | None
    ) -> bool:
        """Inside a write transaction: if object ``sha`` exists, make sure it is catalogued,
        touch it (gc's grace period starts again) and give it to ``session_id``; True if so.

        Holding the write lock, this cannot interleave with ``gc`` deleting the object.
        """
        dest = self.object_path(sha)
        try:
            os.utime(dest)
        except FileNotFoundError:
            return False
        c.execute(
            "INSERT OR IGNORE INTO artifacts(sha256, size, kind, created, session_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (sha, size, kind, utc_now(), session_id),
        )
        if session_id is not None:
            c.execute("UPDATE artifacts SET session_id=? WHERE sha256=?", (session_id, sha))
        return True

    def _tmp_file(self) -> tuple[int, Path]:
        import tempfile

        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".tmp", dir=self.tmp)
        return fd, Path(name)

    def put_bytes(self, data: bytes, kind: str = "bytes", session_id: str | None = None) -> str:
        """Store ``data``; return its sha256. Storing the same bytes twice stores them once."""
        sha = hashlib.sha256(data).hexdigest()
        if self.object_path(sha).is_file() and self.write(
            lambda c: self._claim(c, sha, len(data), kind, session_id)
        ):
            return sha
        fd, tmp = self._tmp_file()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit_object(tmp, sha, len(data), kind, session_id)

    def put_file(self, path: Path | str, kind: str = "file", session_id: str | None = None) -> str:
        """Copy a file into the store (hashing while copying); return its sha256."""
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot store {src}: not a file.")
        fd, tmp = self._tmp_file()
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit_object(tmp, h.hexdigest(), size, kind, session_id)

    def put_tree(self, root: Path | str, session_id: str | None = None) -> str:
        """Store every file under a folder and a manifest object listing them; return its sha.

        The manifest is JSON ``{"format": "robopt-tree/1", "files": [{"path", "sha256",
        "size", "mode"}]}`` with POSIX paths relative to ``root``, sorted; symlinks are refused.
        """
        base = Path(root)
        if not base.is_dir():
            raise StoreError(f"cannot store {base}: not a folder.")
        files = []
        for p in sorted(base.rglob("*")):
            if p.is_symlink():
                raise StoreError(f"cannot store {base}: {p} is a symbolic link.")
            if p.is_file():
                sha = self.put_file(p, session_id=session_id)
                files.append(
                    {
                        "path": p.relative_to(base).as_posix(),
                        "sha256": sha,
                        "size": p.stat().st_size,
                        "mode": p.stat().st_mode & 0o777,
                    }
                )
        manifest = json.dumps({"format": TREE_FORMAT, "files": files}, sort_keys=True, indent=1)
        return self.put_bytes(manifest.encode(), kind="tree", session_id=session_id)

    def has_artifact(self, sha: str) -> bool:
        """Whether the catalogue lists ``sha``."""
        return bool(self.query("SELECT 1 FROM artifacts WHERE sha256=?", (sha,)))

    def get_path(self, sha: str) -> Path:
        """The file of object ``sha``; raises :class:`UnknownIdError` if it is not there."""
        p = self.object_path(sha)
        if not p.is_file():
            raise UnknownIdError(f"artifact {sha} is not in the store at {self.root}.")
        return p

    def get_bytes(self, sha: str) -> bytes:
        """The bytes of object ``sha``."""
        return self.get_path(sha).read_bytes()

    def tree_manifest(self, sha: str) -> dict[str, Any]:
        """The parsed manifest of a tree object."""
        data = _loads(self.get_bytes(sha).decode("utf-8", "replace"))
        if not isinstance(data, dict) or data.get("format") != TREE_FORMAT:
            raise StoreError(f"artifact {sha[:12]} is not a tree manifest.")
        return data

    def materialize_tree(self, sha: str, dest: Path | str) -> Path:
        """Write the files of tree ``sha`` under ``dest`` (created; existing files replaced)."""
        out = Path(dest)
        manifest = self.tree_manifest(sha)
        for entry in manifest["files"]:
            rel = Path(entry["path"])
            if rel.is_absolute() or ".." in rel.parts:
                raise StoreError(f"tree {sha[:12]} holds an unsafe path {entry['path']!r}.")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.get_path(entry["sha256"]), target)
            with contextlib.suppress(OSError):
                target.chmod(int(entry.get("mode", 0o644)))
        out.mkdir(parents=True, exist_ok=True)
        return out

    def artifacts(self, limit: int | None = None) -> list[ArtifactRecord]:
        """Catalogued artifacts, newest first."""
        sql = "SELECT * FROM artifacts ORDER BY created DESC"
        rows = self.query(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [ArtifactRecord(**dict(r)) for r in rows]

    def resolve_artifact(self, prefix: str) -> ArtifactRecord:
        """The artifact whose sha256 is ``prefix`` or starts with it (unambiguously)."""
        rows = self._by_prefix("artifacts", "sha256", prefix, "artifact")
        return ArtifactRecord(**dict(rows))

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
                    _dumps(rec.inputs),
                    _dumps(rec.outputs),
                    rec.artifact,
                    rec.created,
                    rec.parent_id,
                    None if derived_by is None else _dumps(derived_by),
                    rec.session_id,
                ),
            )
        )
        return rec

    def get_model(self, model_id: str) -> ModelRecord:
        """The model with this id or unambiguous id prefix."""
        return _model(self._by_prefix("models", "id", model_id, "model"))

    def models(self, limit: int | None = None) -> list[ModelRecord]:
        """Models, newest first."""
        sql = "SELECT * FROM models ORDER BY created DESC, id DESC"
        return [_model(r) for r in self.query(sql + (f" LIMIT {int(limit)}" if limit else ""))]

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
            m = _model(rows[0]) if rows else None
        return [{"model": x.to_dict(), "derived_by": x.derived_by} for x in reversed(chain)]

    def children(self, model_id: str) -> list[ModelRecord]:
        """Models derived directly from ``model_id``."""
        rows = self.query("SELECT * FROM models WHERE parent_id=? ORDER BY created", (model_id,))
        return [_model(r) for r in rows]

    # ---------------------------------------------------------------- sessions

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
        from robopt_compile.store.events import Session

        sid = new_id()
        now = utc_now()
        self.write(
            lambda c: c.execute(
                "INSERT INTO sessions(id, created, updated, state, source, target, criteria, "
                "plan) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (sid, now, now, source, target, _dumps(criteria or {}), _dumps(plan or [])),
            )
        )
        session = Session(self, sid)
        if start:
            session.start()
        return session

    def open_session(self, session_id: str) -> Session:
        """A :class:`Session` handle on an existing session (id or unambiguous prefix)."""
        from robopt_compile.store.events import Session

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
            from robopt_compile.store.events import EventSink

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

    _SESSION_SQL = (
        "SELECT s.*, "
        "(SELECT COUNT(*) FROM steps t WHERE t.session_id=s.id AND t.state='finished') "
        "AS steps_done, "
        "(SELECT COUNT(*) FROM steps t WHERE t.session_id=s.id) AS steps_total "
        "FROM sessions s"
    )

    def sessions(self, limit: int | None = None, state: str | None = None) -> list[SessionRecord]:
        """Sessions, newest first (dead owners are first recorded as ``interrupted``).

        ``steps_total`` is the number of planned steps when the plan is a list longer than the
        steps started so far.
        """
        self.mark_interrupted()
        sql = self._SESSION_SQL
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE s.state=?"
            args = (state,)
        sql += " ORDER BY s.created DESC, s.id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._with_plan_total(_session(r)) for r in self.query(sql, args)]

    @staticmethod
    def _with_plan_total(rec: SessionRecord) -> SessionRecord:
        if isinstance(rec.plan, list):
            rec.steps_total = max(rec.steps_total, len(rec.plan))
        return rec

    def get_session(self, session_id: str) -> SessionRecord:
        """The session with this id or unambiguous id prefix."""
        self.mark_interrupted()
        row = self._by_prefix("sessions", "id", session_id, "session")
        rows = self.query(self._SESSION_SQL + " WHERE s.id=?", (row["id"],))
        return self._with_plan_total(_session(rows[0]))

    def steps(self, session_id: str) -> list[StepRecord]:
        """A session's steps in order."""
        rows = self.query("SELECT * FROM steps WHERE session_id=? ORDER BY idx", (session_id,))
        return [_step(r) for r in rows]

    def results(self, session_id: str, step_index: int | None = None) -> list[ResultRecord]:
        """A session's results (of one step when ``step_index`` is given), oldest first."""
        sql = "SELECT * FROM results WHERE session_id=?"
        args: tuple[Any, ...] = (session_id,)
        if step_index is not None:
            sql += " AND step_index=?"
            args += (step_index,)
        rows = self.query(sql + " ORDER BY id", args)
        return [
            ResultRecord(
                id=r["id"],
                session_id=r["session_id"],
                step_index=r["step_index"],
                kind=r["kind"],
                data=_loads(r["data"]),
                created=r["created"],
            )
            for r in rows
        ]

    def events(self, session_id: str, after_seq: int = 0) -> list[EventRecord]:
        """A session's events with ``seq > after_seq``, in order (for tailing)."""
        rows = self.query(
            "SELECT * FROM events WHERE session_id=? AND seq>? ORDER BY seq",
            (session_id, after_seq),
        )
        return [
            EventRecord(
                session=r["session_id"],
                seq=r["seq"],
                time=r["time"],
                type=r["type"],
                payload=_loads(r["payload"], {}),
            )
            for r in rows
        ]

    def event_log_path(self, session_id: str) -> Path:
        """The JSON-lines event log of a session."""
        return self.sessions_dir / f"{session_id}.jsonl"

    def _by_prefix(self, table: str, column: str, key: str, what: str) -> sqlite3.Row:
        key = key.strip().lower() if table != "models" else key.strip()
        if not key or not re.match(r"^[0-9A-Za-z]+$", key):
            raise UnknownIdError(f"{what} id {key!r} is not an id (hex digits).")
        rows = self.query(
            f"SELECT * FROM {table} WHERE {column} >= ? AND {column} < ? ORDER BY {column} LIMIT 6",
            (key, key + "\U0010ffff"),
        )
        exact = [r for r in rows if r[column] == key]
        if exact:
            return exact[0]
        if not rows:
            hint = {"session": "sessions", "model": "store ls", "artifact": "store ls --artifacts"}
            raise UnknownIdError(
                f"no {what} {key!r} in the store at {self.root}; "
                f"`robopt-compile {hint[what]}` lists them."
            )
        if len(rows) > 1:
            shown = ", ".join(r[column][:16] for r in rows[:5])
            raise UnknownIdError(
                f"{what} id prefix {key!r} is ambiguous ({shown}, ...); give more."
            )
        return rows[0]

    # ---------------------------------------------------------------- verify / gc

    def _references(self) -> list[tuple[str, str, str]]:
        """(sha, table, row description) for every artifact a row points at."""
        refs: list[tuple[str, str, str]] = []
        for r in self.query("SELECT id, artifact FROM models WHERE artifact IS NOT NULL"):
            refs.append((r["artifact"], "models", f"model {r['id']}"))
        for r in self.query(
            "SELECT session_id, idx, input_hash, output_hash FROM steps "
            "WHERE input_hash IS NOT NULL OR output_hash IS NOT NULL"
        ):
            for col in ("input_hash", "output_hash"):
                if r[col]:
                    refs.append(
                        (r[col], "steps", f"session {r['session_id']} step {r['idx']} {col}")
                    )
        for r in self.query("SELECT key, stage, objects FROM cache"):
            for name, sha in sorted((_loads(r["objects"], {}) or {}).items()):
                refs.append((sha, "cache", f"cache {r['stage']} {r['key'][:12]} {name}"))
        return refs

    def cache_clear(self, stage: str | None = None) -> int:
        """Forget build-cache rows (all, or one stage's); their objects go at the next ``gc``.

        Returns the number of rows removed.
        """
        if stage is None:
            return self.write(lambda c: c.execute("DELETE FROM cache").rowcount)
        return self.write(lambda c: c.execute("DELETE FROM cache WHERE stage=?", (stage,)).rowcount)

    def cache_trim(self, max_bytes: int, dry_run: bool = False) -> dict[str, Any]:
        """Forget the least recently used build-cache rows until the objects the rest
        reference fit in ``max_bytes`` (each object counted once, tree members included).

        The objects of forgotten rows go at the next ``gc`` unless something else (a model,
        a session step, another cache row) still references them. Returns ``{"removed":
        [key...], "kept": n, "kept_bytes", "dry_run"}``.
        """
        rows = self.query("SELECT key, objects FROM cache ORDER BY used DESC, created DESC")
        sizes = dict(self.query("SELECT sha256, size FROM artifacts"))
        counted: set[str] = set()
        total, keep, drop = 0, [], []
        for r in rows:
            try:
                shas = list(json.loads(r["objects"]).values())
            except (ValueError, AttributeError):
                shas = []
            new = set()
            for sha in shas:
                new |= {sha, *self._tree_children(sha)}
            grown = total + sum(int(sizes.get(x, 0)) for x in new - counted)
            if drop or grown > max_bytes:
                drop.append(r["key"])
                continue
            keep.append(r["key"])
            counted |= new
            total = grown
        if drop and not dry_run:

            def run(c: sqlite3.Connection) -> None:
                c.executemany("DELETE FROM cache WHERE key=?", [(k,) for k in drop])

            self.write(run)
        return {"removed": drop, "kept": len(keep), "kept_bytes": total, "dry_run": dry_run}

    def _tree_children(self, sha: str) -> list[str]:
        try:
            return [f["sha256"] for f in self.tree_manifest(sha)["files"]]
        except (RoboptError, KeyError, TypeError, OSError):
            return []

    def _live(self) -> set[str]:
        """Every object a row references, objects of queued/running sessions, tree members."""
        live = {sha for sha, _, _ in self._references()}
        for r in self.query(
            "SELECT a.sha256 FROM artifacts a JOIN sessions s ON a.session_id=s.id "
            "WHERE s.state IN ('queued', 'running')"
        ):
            live.add(r["sha256"])
        trees = {r["sha256"] for r in self.query("SELECT sha256 FROM artifacts WHERE kind='tree'")}
        todo = [s for s in live if s in trees]
        while todo:
            for child in self._tree_children(todo.pop()):
                if child not in live:
                    live.add(child)
                    if child in trees:
                        todo.append(child)
        return live

    def _object_files(self) -> Iterator[Path]:
        for d in sorted(self.objects.iterdir()) if self.objects.is_dir() else []:
            if d.is_dir() and len(d.name) == 2 and d.name != "tmp":
                yield from sorted(p for p in d.iterdir() if p.is_file())

    def verify(self) -> dict[str, Any]:
        """Re-hash every object and check every reference; a JSON-able report.

        Keys: ``ok`` (bool), ``integrity`` (SQLite's integrity_check), ``checked`` and ``bytes``
        (objects re-hashed), ``mismatched`` ([{sha256, actual}]: the bytes do not hash to the
        name), ``missing`` (catalogued but no file), ``dangling`` ([{sha256, where}]: a row or
        a tree points at an artifact the store lacks), ``orphans`` (files the catalogue does not
        list: left by a crash, removed by gc; not an error), ``tmp`` (temporary files).
        """
        integrity = self.integrity_check()
        catalogue = {
            r["sha256"]: r["size"] for r in self.query("SELECT sha256, size FROM artifacts")
        }
        mismatched, missing, orphans = [], [], []
        checked = nbytes = 0
        on_disk = set()
        for p in self._object_files():
            on_disk.add(p.name)
            actual = sha256_file(p)
            checked += 1
            nbytes += p.stat().st_size
            if actual != p.name:
                mismatched.append({"sha256": p.name, "actual": actual, "path": str(p)})
            elif p.name not in catalogue:
                orphans.append(p.name)
        for sha in catalogue:
            if sha not in on_disk:
                missing.append(sha)
        dangling = [
            {"sha256": sha, "where": where}
            for sha, _, where in self._references()
            if sha not in catalogue or sha not in on_disk
        ]
        for r in self.query("SELECT id, parent_id FROM models WHERE parent_id IS NOT NULL"):
            if not self.query("SELECT 1 FROM models WHERE id=?", (r["parent_id"],)):
                dangling.append(
                    {"sha256": None, "where": f"model {r['id']} parent {r['parent_id']}"}
                )
        for r in self.query("SELECT sha256 FROM artifacts WHERE kind='tree'"):
            if r["sha256"] in on_disk:
                for child in self._tree_children(r["sha256"]):
                    if child not in on_disk:
                        dangling.append({"sha256": child, "where": f"tree {r['sha256']}"})
        tmp = sorted(p.name for p in self.tmp.iterdir()) if self.tmp.is_dir() else []
        return {
            "ok": integrity == "ok" and not (mismatched or missing or dangling),
            "store": str(self.root),
            "integrity": integrity,
            "checked": checked,
            "bytes": nbytes,
            "mismatched": mismatched,
            "missing": missing,
            "dangling": dangling,
            "orphans": orphans,
            "tmp": tmp,
        }

    def gc(self, dry_run: bool = False, grace_s: float = DEFAULT_GC_GRACE_S) -> dict[str, Any]:
        """Remove objects no row references, and stale temporary files.

        Kept: objects referenced by models, steps or build-cache rows, members of a kept tree,
        objects stored by a queued or running session, and anything younger than ``grace_s``
        seconds (an object a running compile has just stored and is about to reference).
        Returns ``{"removed": [sha...], "bytes", "tmp_removed": [...], "kept", "dry_run"}``.
        """
        self.mark_interrupted()
        cutoff = time.time() - grace_s

        def old(p: Path) -> bool:
            try:
                return p.stat().st_mtime <= cutoff
            except OSError:
                return False

        def run(c: sqlite3.Connection) -> dict[str, Any]:
            live = self._live_in(c)
            removed, freed = [], 0
            for p in list(self._object_files()):
                if p.name in live or not old(p):
                    continue
                removed.append(p.name)
                freed += p.stat().st_size
                if not dry_run:
                    c.execute("DELETE FROM artifacts WHERE sha256=?", (p.name,))
                    p.unlink(missing_ok=True)
            if not dry_run:  # catalogue rows whose file is gone and nothing references
                rows = c.execute("SELECT sha256 FROM artifacts").fetchall()
                for r in rows:
                    if r[0] not in live and not self.object_path(r[0]).exists():
                        c.execute("DELETE FROM artifacts WHERE sha256=?", (r[0],))
            return {"removed": removed, "bytes": freed, "kept": len(live)}

        with self._lock:
            out = self.write(run)
        tmp_removed = []
        for p in sorted(self.tmp.iterdir()) if self.tmp.is_dir() else []:
            if old(p):
                tmp_removed.append(p.name)
                if not dry_run:
                    p.unlink(missing_ok=True)
        out.update({"tmp_removed": tmp_removed, "dry_run": dry_run})
        return out

    def _live_in(self, c: sqlite3.Connection) -> set[str]:
        """``_live`` computed inside an open transaction (same connection)."""
        return self._live()
