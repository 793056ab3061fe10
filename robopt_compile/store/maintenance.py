"""Upkeep of a store: ``verify`` (re-hash and check references), ``gc`` and the cache's size.

What a row references is live: objects of models, of steps (input and output), of build-cache
rows, the members of a live tree, and objects stored by a queued or running session. ``gc``
deletes the rest once older than a grace period, under the database's write lock, so a
concurrent ``put`` of the same bytes cannot lose its object (docs/STORE.md, "Guarantees").
The :class:`~robopt_compile.store.store.Store` methods ``verify``, ``gc``, ``cache_trim`` and
``cache_clear`` call these.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from robopt_compile.jsonutil import sha256_file
from robopt_compile.store.objects import ObjectStore
from robopt_compile.store.records import load_json

DEFAULT_GC_GRACE_S = 3600.0


def references(store: ObjectStore) -> list[tuple[str, str, str]]:
    """(sha, table, row description) for every artifact a row points at."""
    refs: list[tuple[str, str, str]] = []
    for r in store.query("SELECT id, artifact FROM models WHERE artifact IS NOT NULL"):
        refs.append((r["artifact"], "models", f"model {r['id']}"))
    for r in store.query(
        "SELECT session_id, idx, input_hash, output_hash FROM steps "
        "WHERE input_hash IS NOT NULL OR output_hash IS NOT NULL"
    ):
        for col in ("input_hash", "output_hash"):
            if r[col]:
                refs.append((r[col], "steps", f"session {r['session_id']} step {r['idx']} {col}"))
    for r in store.query("SELECT key, stage, objects FROM cache"):
        for name, sha in sorted((load_json(r["objects"], {}) or {}).items()):
            refs.append((sha, "cache", f"cache {r['stage']} {r['key'][:12]} {name}"))
    return refs


def live_objects(store: ObjectStore) -> set[str]:
    """Every object a row references, objects of queued/running sessions, tree members."""
    live = {sha for sha, _, _ in references(store)}
    for r in store.query(
        "SELECT a.sha256 FROM artifacts a JOIN sessions s ON a.session_id=s.id "
        "WHERE s.state IN ('queued', 'running')"
    ):
        live.add(r["sha256"])
    trees = {r["sha256"] for r in store.query("SELECT sha256 FROM artifacts WHERE kind='tree'")}
    todo = [s for s in live if s in trees]
    while todo:
        for child in store.tree_members(todo.pop()):
            if child not in live:
                live.add(child)
                if child in trees:
                    todo.append(child)
    return live


def verify(store: ObjectStore) -> dict[str, Any]:
    """Re-hash every object and check every reference; a JSON-able report.

    Keys: ``ok`` (bool), ``integrity`` (SQLite's integrity_check), ``checked`` and ``bytes``
    (objects re-hashed), ``mismatched`` ([{sha256, actual}]: the bytes do not hash to the
    name), ``missing`` (catalogued but no file), ``dangling`` ([{sha256, where}]: a row or
    a tree points at an artifact the store lacks), ``orphans`` (files the catalogue does not
    list: left by a crash, removed by gc; not an error), ``tmp`` (temporary files).
    """
    integrity = store.integrity_check()
    catalogue = {r["sha256"]: r["size"] for r in store.query("SELECT sha256, size FROM artifacts")}
    mismatched, missing, orphans = [], [], []
    checked = nbytes = 0
    on_disk = set()
    for p in store.object_files():
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
        for sha, _, where in references(store)
        if sha not in catalogue or sha not in on_disk
    ]
    for r in store.query("SELECT id, parent_id FROM models WHERE parent_id IS NOT NULL"):
        if not store.query("SELECT 1 FROM models WHERE id=?", (r["parent_id"],)):
            dangling.append({"sha256": None, "where": f"model {r['id']} parent {r['parent_id']}"})
    for r in store.query("SELECT sha256 FROM artifacts WHERE kind='tree'"):
        if r["sha256"] in on_disk:
            for child in store.tree_members(r["sha256"]):
                if child not in on_disk:
                    dangling.append({"sha256": child, "where": f"tree {r['sha256']}"})
    tmp = sorted(p.name for p in store.tmp.iterdir()) if store.tmp.is_dir() else []
    return {
        "ok": integrity == "ok" and not (mismatched or missing or dangling),
        "store": str(store.root),
        "integrity": integrity,
        "checked": checked,
        "bytes": nbytes,
        "mismatched": mismatched,
        "missing": missing,
        "dangling": dangling,
        "orphans": orphans,
        "tmp": tmp,
    }


def collect_garbage(
    store: ObjectStore, dry_run: bool = False, grace_s: float = DEFAULT_GC_GRACE_S
) -> dict[str, Any]:
    """Remove objects no row references, and stale temporary files (see ``Store.gc``).

    The caller records dead sessions first (their objects stop being protected).
    """
    cutoff = time.time() - grace_s

    def old(p: Path) -> bool:
        try:
            return p.stat().st_mtime <= cutoff
        except OSError:
            return False

    def run(c: sqlite3.Connection) -> dict[str, Any]:
        live = live_objects(store)  # inside the transaction: same connection, same snapshot
        removed, freed = [], 0
        for p in list(store.object_files()):
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
                if r[0] not in live and not store.object_path(r[0]).exists():
                    c.execute("DELETE FROM artifacts WHERE sha256=?", (r[0],))
        return {"removed": removed, "bytes": freed, "kept": len(live)}

    out = store.write(run)
    tmp_removed = []
    for p in sorted(store.tmp.iterdir()) if store.tmp.is_dir() else []:
        if old(p):
            tmp_removed.append(p.name)
            if not dry_run:
                p.unlink(missing_ok=True)
    out.update({"tmp_removed": tmp_removed, "dry_run": dry_run})
    return out


def clear_cache(store: ObjectStore, stage: str | None = None) -> int:
    """Forget build-cache rows (all, or one stage's); return how many were removed."""
    if stage is None:
        return store.write(lambda c: c.execute("DELETE FROM cache").rowcount)
    return store.write(lambda c: c.execute("DELETE FROM cache WHERE stage=?", (stage,)).rowcount)


def trim_cache(store: ObjectStore, max_bytes: int, dry_run: bool = False) -> dict[str, Any]:
    """Forget the least recently used build-cache rows until what the rest reference fits in
    ``max_bytes`` (each object counted once, tree members included); see ``Store.cache_trim``.
    """
    rows = store.query("SELECT key, objects FROM cache ORDER BY used DESC, created DESC")
    sizes = dict(store.query("SELECT sha256, size FROM artifacts"))
    counted: set[str] = set()
    total, keep, drop = 0, [], []
    for r in rows:
        try:
            shas = list(json.loads(r["objects"]).values())
        except (ValueError, AttributeError):
            shas = []
        new = set()
        for sha in shas:
            new |= {sha, *store.tree_members(sha)}
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

        store.write(run)
    return {"removed": drop, "kept": len(keep), "kept_bytes": total, "dry_run": dry_run}
