"""The store's SQL schema: the migrations that build it, and applying them on open.

``MIGRATIONS[n-1]`` brings a store from schema version n-1 to n; :func:`migrate` applies the
missing ones inside the caller's write transaction, so a store is upgraded whole or not at
all, and a store newer than this robopt is refused, never modified (docs/STORE.md, "Schema").
The tables are described in docs/STORE.md; the build cache's table (migration 2) in
``robopt_compile/store/cache.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from robopt_compile.store.records import StoreError

SCHEMA_VERSION = 2

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


def migrate(c: sqlite3.Connection, db_path: Path) -> None:
    """Bring the database on ``c`` to :data:`SCHEMA_VERSION`, inside an open transaction.

    Raises:
        StoreError: the database has a newer schema version than this robopt knows.
    """
    c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
    have = row[0] or 0
    if have > SCHEMA_VERSION:
        raise StoreError(
            f"store {db_path} has schema version {have}; this robopt reads up to "
            f"{SCHEMA_VERSION}. Upgrade robopt or use another --store."
        )
    for version in range(have + 1, SCHEMA_VERSION + 1):
        for stmt in MIGRATIONS[version - 1].split(";"):
            if stmt.strip():
                c.execute(stmt)
        c.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
