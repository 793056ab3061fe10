"""Writing deployable bundles (format: docs/BUNDLE.md) atomically.

A bundle is assembled in a hidden temporary sibling of the output folder and renamed into place
only when every file is written and hashed, so an interrupted or failed compile never leaves a
half-written bundle behind, and ``--force`` never destroys the old bundle before the new one is
complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile import __version__

# The robot-side reader owns the format's constants and hashing; the writer follows it.
from robopt_compile.bench.manifest import MANIFEST, SCHEMA_VERSION, sha256_file
from robopt_compile.errors import InputError, OutputExistsError

__all__ = ["MANIFEST", "SCHEMA_VERSION", "sha256_file"]
TOOLS = ("torch", "onnx", "onnx-ir", "onnxscript", "onnxslim", "onnxruntime", "openvino", "numpy")


def check_output_dir(out: Path, force: bool) -> None:
    """Fail before any work if ``out`` cannot be (re)written; never touches the disk.

    ``--force`` replaces only what robopt wrote: an empty folder or a bundle (one holding
    manifest.json). Any other folder, and the current folder or one of its parents, is refused.
    """
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputExistsError(
            f"-o {out} is the current folder or contains it; choose a new folder."
        )
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is a file; choose another -o path.")
    if out.exists():
        if not force:
            raise OutputExistsError(f"output folder {out} exists; pass --force to replace it.")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise OutputExistsError(
                f"{out} is not empty and not a robopt bundle (no {MANIFEST}); refusing to "
                "replace it even with --force. Choose another -o path."
            )
    existing = next(p for p in [resolved, *resolved.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"cannot write into {existing}; choose another -o path.")


@contextlib.contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on error it is removed.

    Parent folders created for ``out`` are removed again if the compile fails.
    """
    check_output_dir(out, force)
    parent = out.resolve().parent
    created = [p for p in [parent, *parent.parents] if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a bundle is published like any folder

    def cleanup() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()

    try:
        yield tmp
    except BaseException:
        cleanup()
        raise
    old = None
    try:
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
            out.rename(old)
        tmp.rename(out)
    except OSError as exc:
        if old is not None and not out.exists():
            old.rename(out)
        cleanup()
        raise InputError(
            f"cannot move the new bundle into {out} ({exc}); nothing was changed."
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, by POSIX relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def tool_versions() -> dict[str, str]:
    found = {"robopt": __version__}
    for name in TOOLS:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
