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

SCHEMA_VERSION = 4

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
    # 3: the platform (robopt_compile/service): API tokens, the job queue, webhook
    # subscriptions, the notification queue with one delivery row per subscriber, robots
    # (devices) that run robopt-bench serve, model tags.
    """
    CREATE TABLE tokens (
        id        TEXT PRIMARY KEY,        -- public part of the token (rbt_<id>_<secret>)
        name      TEXT NOT NULL,
        role      TEXT NOT NULL,           -- viewer | operator | admin
        hash      TEXT NOT NULL,           -- sha256 of the secret part (the secret is not kept)
        created   TEXT NOT NULL,
        last_used TEXT,
        revoked   TEXT
    );
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,         -- compile | plan | evaluate | bench
        state       TEXT NOT NULL,         -- queued | running | finished | failed | cancelled
                                           -- | interrupted
        priority    INTEGER NOT NULL DEFAULT 0,   -- higher runs first
        request     TEXT NOT NULL,         -- JSON: what was asked (source, target, options)
        owner       TEXT,                  -- the token id that submitted it
        created     TEXT NOT NULL,
        updated     TEXT NOT NULL,
        started     TEXT,
        finished    TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,   -- runs started (a restart resumes: +1)
        worker_pid  INTEGER,               -- the process running it, against kill -9
        proc_start  TEXT,
        host        TEXT,
        session_id  TEXT,                  -- the store session recording its compile
        cancel      INTEGER NOT NULL DEFAULT 0,   -- 1: cancel requested
        timeout_s   REAL,
        progress    REAL NOT NULL DEFAULT 0,      -- 0..1
        stage       TEXT,
        result      TEXT NOT NULL DEFAULT '{}',
        error       TEXT
    );
    CREATE INDEX jobs_queue ON jobs(state, priority, created);
    CREATE TABLE webhooks (
        id       TEXT PRIMARY KEY,
        url      TEXT NOT NULL,
        events   TEXT NOT NULL DEFAULT '[]',  -- JSON list of notification kinds, [] = all
        secret   TEXT NOT NULL,            -- HMAC-SHA256 key of the signature header
        owner    TEXT,
        created  TEXT NOT NULL,
        active   INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE notifications (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        time       TEXT NOT NULL,
        kind       TEXT NOT NULL,          -- job_started | stage_finished | job_finished | ...
        job_id     TEXT,
        session_id TEXT,
        payload    TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        notification_id INTEGER NOT NULL REFERENCES notifications(id),
        webhook_id      TEXT NOT NULL REFERENCES webhooks(id),
        state           TEXT NOT NULL,     -- pending | delivered | dead
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_try        REAL NOT NULL,     -- unix time of the next attempt
        last_status     INTEGER,
        last_error      TEXT,
        updated         TEXT NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_try);
    CREATE TABLE devices (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        url        TEXT NOT NULL,          -- the robot's robopt-bench serve
        token      TEXT NOT NULL,          -- its token (kept: robopt calls the robot with it)
        board      TEXT NOT NULL,          -- the hardware profile it is
        owner      TEXT,
        created    TEXT NOT NULL,
        last_seen  TEXT,
        last_error TEXT
    );
    CREATE TABLE model_tags (
        model_id TEXT NOT NULL REFERENCES models(id),
        tag      TEXT NOT NULL,
        PRIMARY KEY (model_id, tag)
    );
    """,
    # 4: the device farm (robopt_compile/farm): who waits for a robot of a board (a queue
    # per board, first come first served) and which robot each benchmark holds.
    """
    CREATE TABLE device_waiters (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- the queue order
        board      TEXT NOT NULL,
        pid        INTEGER NOT NULL,      -- the waiting process, against kill -9
        proc_start TEXT,
        host       TEXT NOT NULL,
        label      TEXT NOT NULL,         -- what it will run (a bundle folder's name)
        created    TEXT NOT NULL,
        heartbeat  REAL NOT NULL          -- unix time: another host's waiter expires without it
    );
    CREATE INDEX device_waiters_board ON device_waiters(board, id);
    CREATE TABLE device_leases (
        device_id  TEXT PRIMARY KEY REFERENCES devices(id),
        waiter_id  INTEGER NOT NULL,
        pid        INTEGER NOT NULL,
        proc_start TEXT,
        host       TEXT NOT NULL,
        label      TEXT NOT NULL,
        acquired   TEXT NOT NULL,
        heartbeat  REAL NOT NULL
    );
    ALTER TABLE devices ADD COLUMN down_until REAL
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
