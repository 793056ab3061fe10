"""Writing deployable bundles (format: docs/BUNDLE.md) atomically.

A bundle is assembled in a hidden temporary sibling of the output folder and renamed into place
only when every file is written and hashed, so an interrupted or failed compile never leaves a
half-written bundle behind, and ``--force`` never destroys the old bundle before the new one is
complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from robopt_compile import __version__

# The robot-side reader owns the format's constants and hashing; the writer follows it.
from robopt_compile.bench.manifest import MANIFEST, SCHEMA_VERSION
from robopt_compile.errors import InputError, OutputExistsError
from robopt_compile.jsonutil import sha256_file, write_json

__all__ = ["MANIFEST", "SCHEMA_VERSION", "sha256_file", "write_json"]
TOOLS = ("torch", "onnx", "onnx-ir", "onnxscript", "onnxslim", "onnxruntime", "openvino", "numpy")


# Files a bundle holds that its manifest does not hash: the manifest itself, the reports
# written from it and the measurements added later (robopt_compile.bench.results).
UNHASHED = ("manifest.json", "report.html", "report.md")
RESULTS_GLOB = "results/*.json"
PRODUCER = "robopt-compile"


def foreign_entry(folder: Path) -> str | None:
    """Why ``folder`` is not a bundle robopt wrote, or None when it is one.

    A robopt bundle has a manifest robopt wrote (a JSON object with ``schema_version``, a
    producer or robopt version, and the ``files`` it hashed) and nothing else but the files it
    lists, its reports and ``results/*.json``. Symbolic links are never robopt's.
    """
    mpath = folder / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        return f"it has no {MANIFEST}"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"its {MANIFEST} is not valid JSON"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("schema_version"), int)
        or not (
            manifest.get("producer") == PRODUCER or isinstance(manifest.get("robopt_version"), str)
        )
        or not isinstance(files, dict)
    ):
        return f"its {MANIFEST} was not written by robopt (schema_version, producer, files)"
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            return f"{rel} is a symbolic link"
        if p.is_dir():
            continue
        if rel not in files and rel not in UNHASHED and not p.match(RESULTS_GLOB):
            return f"{rel} is not a file of the bundle"
    return None


def check_output_dir(out: Path, force: bool) -> None:
    """Fail before any work if ``out`` cannot be (re)written. Touches the disk only to tidy
    what a killed robopt run left beside ``out`` (``clean_stale_staging``).

    ``--force`` replaces only what robopt wrote: an empty folder or a robopt bundle holding
    nothing but its own files (``foreign_entry``). Any other folder, and the current folder or
    one of its parents, is refused.
    """
    clean_stale_staging(out)
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputExistsError(
            f"-o {out} is the current folder or contains it; choose a new folder."
        )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a folder; choose another -o path.")
    if out.exists():
        if not force:
            raise OutputExistsError(f"output folder {out} exists; pass --force to replace it.")
        _check_replaceable(out)
    existing = next(p for p in [resolved, *resolved.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"cannot write into {existing}; choose another -o path.")


FLEET = "fleet.json"  # a fleet folder (--target a,b,c): this file and one bundle per board


def foreign_fleet(folder: Path) -> str | None:
    """Why ``folder`` is not a fleet folder robopt wrote (``FLEET`` and the bundles it names,
    each a robopt bundle), or None when it is one."""
    try:
        boards = json.loads((folder / FLEET).read_text(encoding="utf-8"))["boards"]
        names = {b["board"] for b in boards if b.get("bundle")}
    except (OSError, ValueError, KeyError, TypeError):
        return f"it has no readable {FLEET}"
    for p in folder.iterdir():
        if p.name == FLEET:
            continue
        if p.name not in names or p.is_symlink() or not p.is_dir():
            return f"{p.name} is not a bundle of the fleet"
        why = foreign_entry(p)
        if why is not None:
            return f"{p.name}: {why}"
    return None


def _check_replaceable(out: Path) -> None:
    if not any(out.iterdir()):
        return
    why = foreign_entry(out) if not (out / FLEET).exists() else foreign_fleet(out)
    if why is not None:
        raise OutputExistsError(
            f"{out} is not a robopt bundle ({why}); refusing to replace it even with --force. "
            "Choose another -o path."
        )


def _staging_tag() -> str:
    """``<pid>@<host>``: lets a later run on this host tell a dead run's staging folders."""
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c in "-_")[:32]
    return f"{os.getpid()}@{host}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders that a killed compile of ``out`` on this host left behind.

    ``.OUT.tmp-PID@HOST-*`` of a dead process is deleted; a dead process's ``.OUT.old-*``
    (the previous bundle, moved aside just before the kill) goes back to ``OUT`` when nothing
    took its place, and is deleted otherwise. Returns what was removed or restored.
    """
    parent = out.resolve().parent
    if not parent.is_dir():
        return []
    host = _staging_tag().split("@", 1)[1]
    done = []
    for kind in ("tmp", "old"):
        for p in sorted(parent.glob(f".{out.name}.{kind}-*@{host}-*")):
            tag = p.name[len(f".{out.name}.{kind}-") :].split("@", 1)[0]
            if not tag.isdigit() or _alive(int(tag)) or p.is_symlink() or not p.is_dir():
                continue
            if kind == "old" and not out.exists() and not out.is_symlink():
                p.rename(parent / out.name)
            else:
                shutil.rmtree(p, ignore_errors=True)
            done.append(p)
    return done


@contextlib.contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on error it is removed.

    Parent folders created for ``out`` are removed again if the compile fails. Publishing is
    the last step: if ``out`` appeared while the bundle was built, it is replaced only with
    ``--force`` and only when it is a robopt bundle; otherwise the new bundle is kept beside
    it under a name the error gives, and nothing is deleted.
    """
    check_output_dir(out, force)
    parent = out.resolve().parent
    created = [p for p in [parent, *parent.parents] if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    tag = _staging_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{tag}-", dir=parent))
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
    publish(tmp, out, force, tag, cleanup)


def publish(tmp: Path, out: Path, force: bool, tag: str, cleanup: Callable[[], None]) -> None:
    """Rename the finished bundle ``tmp`` to ``out`` (see ``staged_output``)."""
    old = None
    try:
        if out.exists() or out.is_symlink():
            if not force or out.is_symlink() or not out.is_dir():
                raise _Appeared("it appeared while the bundle was built")
            old = out.parent / f".{out.name}.old-{tag}-{time.time_ns()}"
            out.rename(old)
            why = None
            if any(old.iterdir()):
                why = foreign_fleet(old) if (old / FLEET).exists() else foreign_entry(old)
            if why is not None:  # written to while we looked: give it back untouched
                old.rename(out)
                old = None
                raise _Appeared(f"it is not a robopt bundle ({why})")
        tmp.rename(out)  # never replaces a non-empty folder (ENOTEMPTY)
    except _Appeared as exc:
        kept = _keep_staged(tmp, out)
        raise OutputExistsError(
            f"output folder {out} was not replaced: {exc}. The new bundle is kept at {kept}; "
            "move it where you want it."
        ) from None
    except OSError as exc:
        if old is not None and not out.exists():
            old.rename(out)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            kept = _keep_staged(tmp, out)
            raise OutputExistsError(
                f"output folder {out} appeared while the bundle was built and was not "
                f"replaced. The new bundle is kept at {kept}; move it where you want it."
            ) from None
        cleanup()
        raise InputError(
            f"cannot move the new bundle into {out} ({exc}); nothing was changed."
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Appeared(Exception):
    """``out`` exists at publish time and may not be replaced."""


def _keep_staged(tmp: Path, out: Path) -> Path:
    """Give a finished bundle that could not be published a visible name beside ``out``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = out.parent / f"{out.name}.new-{stamp}"
    n = 1
    while kept.exists():
        n += 1
        kept = out.parent / f"{out.name}.new-{stamp}-{n}"
    try:
        tmp.rename(kept)
    except OSError:
        return tmp
    return kept


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


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
