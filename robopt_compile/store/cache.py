"""The build cache: a pipeline stage's output keyed by its inputs, in the model store.

A key is the sha256 of a canonical JSON of the stage name, the hash of the stage's input, the
stage's configuration, the versions of the tools that could change its output
(``bundle.tool_versions()``) and a fingerprint of robopt's own code. A cache row (table
``cache``, store schema version 2) maps the key to content-addressed objects (files or trees)
plus JSON metadata; see docs/STORE.md, "Build cache".

Nothing here ever fails a compile: a store that cannot be opened disables the cache with one
note, and a missing or corrupt object, or any other error while reading, is a miss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from robopt_compile.errors import RoboptError
from robopt_compile.jsonutil import canonical_json, sha256_file, sha256_tree
from robopt_compile.store.records import StoreError, utc_now
from robopt_compile.store.store import Store, open_store

CACHE_FORMAT = "robopt-cache/1"
# The tools whose versions enter every key (what exports, transforms and builds depend on).
KEY_TOOLS = (
    "robopt",
    "torch",
    "onnx",
    "onnx-ir",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "nncf",
    "tvm",
    "apache-tvm",
    "tensorrt",
)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of robopt's Python sources (with passes, targets, zoo weights and profiles).

    Part of every key, so an edited pass or backend never reuses an older output, even where
    the package version did not change (a development checkout).
    """
    import robopt_compile

    roots = [Path(robopt_compile.__file__).parent]
    for sub in ("passes", "targets", "hwprofiles"):
        try:
            mod = __import__(f"robopt_compile.{sub}", fromlist=["__file__"])
            roots.append(Path(mod.__file__).parent)
        except ImportError:
            continue
    h = hashlib.sha256()
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in (".py", ".npz", ".json", ".toml"):
                h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def key_tool_versions() -> dict[str, str]:
    """The versions of :data:`KEY_TOOLS` installed here (absent tools are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    from robopt_compile import __version__

    found = {"robopt": __version__}
    for name in KEY_TOOLS[1:]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def profile_fingerprint(profile: Any) -> dict[str, Any]:
    """A hardware profile as key data: what a build can depend on, not performance figures.

    The name, the profile file's sha256 (for a profile from a file) and every field except
    the roofline figures (:data:`PROFILE_FIGURES`), which a detected host re-measures on each
    run and which only the analysis stage (always run) reads.
    """
    fields = plain_data(profile)
    if isinstance(fields, dict):
        fields = {k: v for k, v in fields.items() if k not in PROFILE_FIGURES}
    path = Path(str(getattr(profile, "path", "") or ""))
    file_sha = sha256_file(path) if path.suffix and path.is_file() else None
    return {"name": getattr(profile, "name", None), "file_sha256": file_sha, "fields": fields}


# Measured or estimated speeds of a hardware profile: not part of a build's key.
PROFILE_FIGURES = frozenset(
    {
        "memory_gb",
        "memory_bandwidth_gbs",
        "memory_bandwidth_per_core_gbs",
        "compute_gops",
        "cpu_clock_ghz",
        "cpu_core_gops",
        "dla_gops",
        "headline",
        "power_modes",
    }
)


def plain_data(obj: Any) -> Any:
    """Dataclasses, mappings and sequences as JSON-able data (anything else as ``str``)."""
    from collections.abc import Mapping

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = [plain_data(v) for v in obj]
        return sorted(items, key=canonical_json) if isinstance(obj, set | frozenset) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


@dataclasses.dataclass
class CacheEntry:
    """A cache hit: the stored objects (name -> sha256) and the stage's JSON metadata."""

    key: str
    stage: str
    objects: dict[str, str]
    meta: dict[str, Any]


class BuildCache:
    """Stage outputs in a :class:`~robopt_compile.store.store.Store`, keyed by :meth:`key`."""

    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def open(cls, warn: Callable[[str], None]) -> BuildCache | None:
        """The cache in the default store, or None (after one ``warn``) if it cannot open."""
        try:
            return cls(open_store())
        except (StoreError, OSError, sqlite3.Error) as exc:
            warn(f"build cache off: the store cannot be opened ({exc})")
            return None

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    @staticmethod
    def key(stage: str, input_hash: str, config: dict[str, Any]) -> str:
        """sha256 of (format, stage, input hash, config, tool versions, robopt code)."""
        doc = {
            "format": CACHE_FORMAT,
            "stage": stage,
            "input": input_hash,
            "config": config,
            "tools": key_tool_versions(),
            "code": code_fingerprint(),
        }
        return hashlib.sha256(canonical_json(doc).encode()).hexdigest()

    def _object_ok(self, sha: str, tree: bool) -> bool:
        try:
            path = self.store.get_path(sha)
        except StoreError:
            return False
        if sha256_file(path) != sha:
            self._discard(path)
            return False
        if tree:
            try:
                members = self.store.tree_manifest(sha)["files"]
            except (StoreError, KeyError, TypeError, OSError):
                return False
            return all(self._object_ok(m["sha256"], False) for m in members)
        return True

    def _discard(self, path: Path) -> None:
        """Remove a corrupt object (under the write lock), so the next put stores it afresh
        (the store never rewrites an object that exists)."""
        with contextlib.suppress(OSError, sqlite3.Error):
            self.store.write(lambda c: path.unlink(missing_ok=True))

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if every object it names exists and hashes to its name.

        A missing row is a miss; so is a missing or corrupt object (the entry is then
        rewritten by the next :meth:`put`). Never raises for a store problem.
        """
        try:
            rows = self.store.query("SELECT stage, objects, meta FROM cache WHERE key=?", (key,))
            if not rows:
                return None
            objects = json.loads(rows[0]["objects"])
            meta = json.loads(rows[0]["meta"])
            trees = set(meta.get("_trees", []))
            if not all(self._object_ok(sha, name in trees) for name, sha in objects.items()):
                return None
            now = utc_now()
            self.store.write(
                lambda c: c.execute("UPDATE cache SET used=?, hits=hits+1 WHERE key=?", (now, key))
            )
            return CacheEntry(key, rows[0]["stage"], objects, meta)
        except (StoreError, OSError, sqlite3.Error, ValueError, TypeError, KeyError):
            return None

    def peek(self, key: str) -> dict[str, str] | None:
        """The object names -> sha256 recorded under ``key``, without checking the objects
        (enough to chain a later stage's key on this stage's output); None if absent."""
        try:
            rows = self.store.query("SELECT objects FROM cache WHERE key=?", (key,))
            return dict(json.loads(rows[0]["objects"])) if rows else None
        except (StoreError, OSError, sqlite3.Error, ValueError, TypeError, KeyError):
            return None

    def put(
        self,
        key: str,
        stage: str,
        meta: dict[str, Any],
        files: dict[str, Path] | None = None,
        trees: dict[str, Path] | None = None,
    ) -> CacheEntry:
        """Store ``files`` and folders (``trees``) and record them under ``key`` (replacing).

        The objects are committed first (atomic, content-addressed); the row last, in one
        transaction that checks the objects are still there (a concurrent ``gc`` keeps fresh
        objects for its grace period anyway).
        """
        objects: dict[str, str] = {}
        for name, path in (files or {}).items():
            objects[name] = self.store.put_file(path)
        for name, path in (trees or {}).items():
            objects[name] = self.store.put_tree(path)
        meta = {**meta, "_trees": sorted(trees or {})}
        text_objects = canonical_json(objects)
        text_meta = canonical_json(meta)
        now = utc_now()

        def run(c: sqlite3.Connection) -> None:
            for sha in objects.values():
                if not self.store.object_path(sha).is_file():
                    raise StoreError(f"cache object {sha[:12]} vanished before its row was written")
            c.execute(
                "INSERT OR REPLACE INTO cache(key, stage, objects, meta, created, used, hits) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                (key, stage, text_objects, text_meta, now, now),
            )

        self.store.write(run)
        return CacheEntry(key, stage, objects, meta)

    def path(self, entry: CacheEntry, name: str) -> Path:
        """The stored file ``name`` of an entry (read-only: copy it before changing it)."""
        return self.store.get_path(entry.objects[name])

    def materialize(self, entry: CacheEntry, name: str, dest: Path) -> Path:
        """Write the stored folder ``name`` of an entry under ``dest``."""
        return self.store.materialize_tree(entry.objects[name], dest)


class Uncacheable(Exception):
    """A stage whose inputs cannot be hashed reliably; the message says why."""


# What storing in or reading from the cache may raise without robopt having a bug: the store's
# and the loaders' own errors (RoboptError), the disk, SQLite. A cache problem never fails a
# compile: it becomes a note and the stage runs (or its output is not kept).
STORE_ERRORS: tuple[type[BaseException], ...] = (RoboptError, OSError, sqlite3.Error)
# Reading an entry back: also one written by another robopt version or damaged on disk (a key
# missing from its metadata, JSON or arrays that do not parse).
ENTRY_ERRORS = (*STORE_ERRORS, KeyError, ValueError)
# Computing a key: also a source that cannot be hashed reliably.
KEY_ERRORS = (*STORE_ERRORS, Uncacheable)


def data_identity(spec: str | None) -> dict[str, Any] | None:
    """Calibration data as hashable content: a file or folder by its bytes, ``random`` as is.

    A ``module:iterator`` (or anything else that is not a path) raises :class:`Uncacheable`.
    """
    if spec is None or spec == "random":
        return {"spec": spec}
    path = Path(spec)
    if path.exists():
        kind = "folder" if path.is_dir() else path.suffix.lower()
        return {"kind": kind, "sha256": sha256_tree(path)}
    raise Uncacheable(f"calibration {spec!r} is not a file or folder (its data cannot be hashed)")


def implementation(*fns: Any) -> list[str]:
    """``module.qualname`` of the functions a stage calls: part of its key, so a replaced
    implementation (a plugin backend's, a test's monkeypatch) never reuses the original's
    output. Their code itself is covered by :func:`code_fingerprint`."""
    return [
        f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"
        for f in fns
    ]


def implementation_of(*refs: str) -> list[str]:
    """:func:`implementation` of ``"module:attr.path"`` references, without importing a module
    that is not loaded yet: an unloaded module cannot have been patched, so its functions are
    named as written (an unchanged rebuild then never pays for importing the pass machinery).
    """
    import sys

    names = []
    for ref in refs:
        module, _, path = ref.partition(":")
        obj: Any = sys.modules.get(module)
        if obj is None:
            names.append(f"{module}.{path}")
            continue
        for part in path.split("."):
            obj = getattr(obj, part)
        names.extend(implementation(obj))
    return names


class UnitMemo:
    """Plain-JSON results of units of work (a batch of evaluation episodes) kept in the build
    cache under ``stage``, so a run whose driver was killed continues from the units that had
    finished (``robopt-compile evaluate --resume``). Every finished unit is recorded; earlier
    ones are read back only with ``reuse``. Keys are ``BuildCache.key`` of the unit's parts,
    so a changed engine, task, seed, tool or robopt code never matches. A store problem is a
    miss (the unit runs), never an error."""

    def __init__(self, cache: BuildCache, stage: str, reuse: bool) -> None:
        self.cache, self.stage, self.reuse = cache, stage, reuse
        self.reused = 0

    def get(self, parts: dict[str, Any]) -> dict[str, Any] | None:
        if not self.reuse:
            return None
        entry = self.cache.get(BuildCache.key(self.stage, "", parts))
        if entry is None:
            return None
        self.reused += 1
        return {k: v for k, v in entry.meta.items() if k != "_trees"}

    def put(self, parts: dict[str, Any], meta: dict[str, Any]) -> None:
        with contextlib.suppress(StoreError, OSError, sqlite3.Error):
            self.cache.put(BuildCache.key(self.stage, "", parts), self.stage, meta)
