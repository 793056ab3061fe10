"""JSON and sha256 helpers shared by the compiler, the store and the on-robot harness.

Standard library only (numpy values are turned into lists through their ``tolist``), so
``robopt-bench`` hashes and writes with the same code as ``robopt-compile``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20  # 1 MiB: hashing a multi-GB weights file stays flat in memory


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays (anything with ``tolist``) and paths, for ``json.dumps``."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite(x: Any) -> Any:
    """Strict JSON has no NaN or infinity: they become null (in dicts and lists too)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")


def canonical_json(data: Any) -> str:
    """Sorted-key, compact JSON; Paths and other objects as ``str`` (for hashing)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def json_sha(data: Any) -> str:
    """sha256 of a canonical JSON document."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = _CHUNK) -> str:
    """The hex sha256 of a file, read in fixed-size chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """sha256 over a folder's sorted relative paths and file hashes (or a file's own hash)."""
    root = Path(root)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
