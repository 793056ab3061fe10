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
from robopt_compile.errors import InputError, OutputExistsError
from robopt_compile.ir import sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOOLS = ("torch", "onnx", "onnx-ir", "onnxscript", "onnxslim", "onnxruntime", "openvino", "numpy")


def check_output_dir(out: Path, force: bool) -> None:
    """Fail before any work if ``out`` cannot be written (exists without --force, is a file)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is a file; choose another -o path.")
    if out.exists() and not force:
        raise OutputExistsError(f"output folder {out} exists; pass --force to replace it.")
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"cannot create the parent folder of {out}: {exc}.") from exc
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write into {parent}; choose another -o path.")


@contextlib.contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on error it is removed."""
    check_output_dir(out, force)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a bundle is published like any folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
