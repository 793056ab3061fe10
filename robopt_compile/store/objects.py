"""Content-addressed objects: files, bytes and folder trees stored once under their sha256.

An object is written to ``objects/tmp``, fsynced, then renamed into ``objects/ab/<sha256>``
while the writer holds the database's write lock, with its catalogue row (table
``artifacts``) in the same transaction. So a path under ``objects/ab/`` only ever holds
complete bytes whose sha256 is its name, an existing object is never rewritten (the same
bytes again only touch it, restarting ``gc``'s grace period), and ``gc``, which deletes under
the same lock, cannot remove an object a concurrent ``put`` is claiming.

A tree (a bundle folder) is a JSON manifest object ``{"format": "robopt-tree/1", "files":
[{"path", "sha256", "size", "mode"}]}`` whose files are objects too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robopt_compile.errors import RoboptError
from robopt_compile.store.database import Database
from robopt_compile.store.records import (
    ArtifactRecord,
    StoreError,
    UnknownIdError,
    artifact_from_row,
    load_json,
    utc_now,
)

TREE_FORMAT = "robopt-tree/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ObjectStore(Database):
    """A store folder's objects and their catalogue, on top of its database."""

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
        except BaseException:  # no half-written temp file is left behind; re-raised
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
        except BaseException:  # no half-written temp file is left behind; re-raised
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
        data = load_json(self.get_bytes(sha).decode("utf-8", "replace"))
        if not isinstance(data, dict) or data.get("format") != TREE_FORMAT:
            raise StoreError(f"artifact {sha[:12]} is not a tree manifest.")
        return data

    def tree_members(self, sha: str) -> list[str]:
        """The sha256 of every file of tree ``sha``; empty if it is missing or not a tree."""
        try:
            return [f["sha256"] for f in self.tree_manifest(sha)["files"]]
        except (RoboptError, KeyError, TypeError, OSError):
            return []

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

    def object_files(self) -> Iterator[Path]:
        """Every object file under ``objects/`` (not the temporary ones), sorted."""
        for d in sorted(self.objects.iterdir()) if self.objects.is_dir() else []:
            if d.is_dir() and len(d.name) == 2 and d.name != "tmp":
                yield from sorted(p for p in d.iterdir() if p.is_file())

    def artifacts(self, limit: int | None = None) -> list[ArtifactRecord]:
        """Catalogued artifacts, newest first."""
        sql = "SELECT * FROM artifacts ORDER BY created DESC"
        rows = self.query(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [artifact_from_row(r) for r in rows]

    def resolve_artifact(self, prefix: str) -> ArtifactRecord:
        """The artifact whose sha256 is ``prefix`` or starts with it (unambiguously)."""
        return artifact_from_row(self.row_by_prefix("artifacts", "sha256", prefix, "artifact"))
