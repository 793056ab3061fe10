"""Read and check a bundle's ``manifest.json`` (docs/BUNDLE.md, schema version 1).

This is the robot's first contact with a bundle that was copied over a network or a USB stick,
so every problem becomes one ``InputError`` line that says what is wrong and what to do, and
the sha256 check catches truncated or edited files before they produce wrong actions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from robopt_compile.errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20  # 1 MiB: hashing a multi-GB weights file stays flat in memory


def sha256_file(path: Path, chunk: int = _CHUNK) -> str:
    """The hex sha256 of a file, read in fixed-size chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` so a manifest cannot point outside."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InputError(f"{root / MANIFEST}: {what} path {rel!r} must be relative to the bundle.")
    return root / p


def _require(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(f"{where}: missing key {key!r}; the bundle is incomplete or not robopt's.")
    if not isinstance(d[key], kind):
        raise InputError(f"{where}: key {key!r} has the wrong type ({type(d[key]).__name__}).")
    return d[key]


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Check every listed file exists and matches its sha256.

    Raises:
        InputError: a file is missing or differs; the message names the first one.
    """
    for rel, digest in sorted(files.items()):
        path = _inside(root, rel, "file")
        if not path.is_file():
            raise InputError(
                f"bundle file {rel!r} listed in manifest.json is missing from {root}; "
                "copy the whole bundle folder again."
            )
        if sha256_file(path) != str(digest).lower():
            raise InputError(
                f"bundle file {rel!r} does not match its sha256 in manifest.json: it was "
                "truncated or edited. Copy the bundle again (or pass --no-verify to skip)."
            )


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load, validate and (optionally) hash-check a bundle's manifest.

    Checks what the harness relies on: schema version, backend, engine files and reference
    files. Engine and reference files must exist even without ``verify``; ``verify`` adds the
    sha256 check of everything in ``files``, which costs a read of the whole bundle.

    Raises:
        InputError: missing folder, not a bundle, bad JSON, newer schema, missing files,
            sha256 mismatch.
    """
    root = Path(bundle_dir)
    if not root.exists():
        raise InputError(f"bundle folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is a file, not a bundle folder.")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise InputError(
            f"{str(root)!r} is not a robopt bundle (no {MANIFEST}); pass the folder that "
            "`robopt-compile -o` wrote."
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{mpath}: not valid JSON ({exc}); the bundle is corrupt.") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mpath}: expected a JSON object at the top level.")

    where = str(mpath)
    version = _require(manifest, "schema_version", int, where)
    if isinstance(version, bool) or version < 1:
        raise InputError(f"{where}: schema_version {version!r} is not valid.")
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{where}: bundle schema_version {version} is newer than this robopt-bench reads "
            f"({SCHEMA_VERSION}); upgrade robopt-compile on the robot."
        )
    backend = _require(manifest, "backend", str, where)
    engine = _require(manifest, "engine", dict, where)
    edir = _inside(root, _require(engine, "dir", str, f"{where} engine"), "engine dir")
    efiles = _require(engine, "files", list, f"{where} engine")
    _require(engine, "config", dict, f"{where} engine")
    if engine.get("backend", backend) != backend:
        raise InputError(
            f"{where}: backend is {backend!r} but engine.backend is {engine['backend']!r}."
        )
    missing = [f for f in efiles if not _inside(edir, str(f), "engine file").is_file()]
    if missing:
        raise InputError(
            f"engine file(s) {missing} missing from {edir}; copy the whole bundle folder again."
        )

    ref = _require(manifest, "reference", dict, where)
    for key in ("inputs", "outputs"):
        rel = ref.setdefault(key, f"reference/{key}.npz")
        if not _inside(root, str(rel), f"reference {key}").is_file():
            raise InputError(f"reference file {rel!r} is missing from {root}.")
    tol = _require(ref, "tolerance", dict, f"{where} reference")
    for key in ("cosine_min", "atol", "rtol"):
        _require(tol, key, (int, float), f"{where} reference.tolerance")

    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise InputError(f"{where}: 'files' must map relative paths to sha256 digests.")
    if verify:
        verify_files(root, files)
    return manifest
