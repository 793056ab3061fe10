"""Measurements added to a bundle after it was built: ``<bundle>/results/<name>.json``.

A bundle's ``manifest.json`` hashes what the compiler wrote; what is measured later (on the
build machine or on the robot) lands beside it in ``results/``, one JSON object per file, and
is never hashed: adding a measurement must not make ``robopt-bench --verify`` reject the
bundle. Names say what a file holds (docs/REPORTS.md):

    results/bench-<label>.json       ``robopt-bench --json`` output (``run_benchmark``)
    results/remote-<host>-<time>.json  a benchmark run on another machine (robot, board)
    results/eval-<task>.json         closed-loop evaluation (``"kind": "closed_loop"``)
    results/openloop-<dataset>.json  open-loop evaluation (``"kind": "open_loop"``)
    results/control-<label>.json     control-loop timing (``"kind": "control_loop"``)
    results/layers.json              per-layer times (``robopt_compile.report.layers``)

Files are written atomically (a temporary file in the same folder, then a rename), so a reader
never sees half a result. This module imports only the standard library: the robot writes
results too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.jsonutil import finite, json_default

RESULTS_DIR = "results"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def results_dir(bundle_dir: Path | str) -> Path:
    """The folder a bundle's measurements live in (it may not exist yet)."""
    return Path(bundle_dir) / RESULTS_DIR


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename.

    The file gets the permissions of an ordinary new file (0666 minus the umask), not the
    0600 of a temporary file, since results and reports are meant to be published. With
    ``overwrite=False`` an existing ``path`` is left alone and ``FileExistsError`` raised (the
    temporary file is hard-linked into place; where links are unsupported, renamed after a
    check).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name is taken
                os.unlink(tmp)
            except FileExistsError:
                raise
            except OSError:  # no hard links (some USB file systems)
                if path.exists():
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_result(
    bundle_dir: Path | str, name: str, data: dict[str, Any], unique: bool = False
) -> Path:
    """Write ``data`` as ``<bundle>/results/<name>.json`` atomically; return the path.

    With ``unique`` an existing result is never replaced: the file becomes ``<name>-1.json``,
    ``<name>-2.json``, ... (for time-stamped measurements such as benchmark runs).

    Args:
        bundle_dir: the bundle folder (it must exist).
        name: file name without ``.json`` (a trailing ``.json`` is accepted): letters, digits,
            ``.``, ``_`` and ``-``, e.g. ``bench-host`` or ``eval-reach``.
        data: a JSON object; numpy values are converted, NaN and infinity become null.

    Raises:
        InputError: the bundle folder is missing, the name is not a plain file name, or the
            data is not a JSON object.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise InputError(f"bundle folder {str(root)!r} does not exist; cannot save {name!r}.")
    stem = name[:-5] if name.endswith(".json") else name
    if not _NAME.match(stem):
        raise InputError(
            f"result name {name!r} must be a plain file name (letters, digits, '.', '_', '-')."
        )
    if not isinstance(data, dict):
        raise InputError(f"result {stem!r} must be a JSON object, not {type(data).__name__}.")
    try:
        text = json.dumps(finite(data), indent=2, default=json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"result {stem!r} cannot be written as JSON: {exc}.") from exc
    folder = results_dir(root)
    try:
        if not unique:
            return atomic_write_text(folder / f"{stem}.json", text + "\n")
        for n in range(1000):
            path = folder / f"{stem}{'' if n == 0 else f'-{n}'}.json"
            with contextlib.suppress(FileExistsError):
                return atomic_write_text(path, text + "\n", overwrite=False)
    except OSError as exc:
        raise InputError(
            f"cannot write the result into {folder} ({exc.strerror or exc}); the bundle folder "
            "must be writable."
        ) from exc
    raise InputError(f"too many results named {stem}* in {folder}.")


def load_results(
    bundle_dir: Path | str, *, errors: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every ``results/*.json`` of a bundle, by file name without ``.json``, sorted by name.

    A missing ``results/`` folder gives ``{}``. Files that cannot be read or are not a JSON
    object are left out; pass ``errors`` to collect ``{name: reason}`` for them.
    """
    folder = results_dir(bundle_dir)
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if errors is not None:
                errors[path.stem] = f"cannot be read ({str(exc).splitlines()[0][:200]})"
            continue
        if not isinstance(data, dict):
            if errors is not None:
                errors[path.stem] = f"holds a JSON {type(data).__name__}, not an object"
            continue
        out[path.stem] = data
    return out


def result_kind(name: str, data: dict[str, Any]) -> str:
    """What a result holds: its ``kind`` field, else the file name's prefix, else its shape.

    Returns one of ``closed_loop``, ``open_loop``, ``control_loop``, ``layers``, ``bench``,
    ``remote`` or ``unknown``.
    """
    kind = data.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    prefix = name.split("-", 1)[0].split(".", 1)[0]
    if prefix == "layers":
        return "layers"
    if prefix == "remote" or data.get("remote"):
        return "remote"
    if prefix == "control":
        return "control_loop"
    if prefix == "openloop":
        return "open_loop"
    if prefix == "bench" or ("latency" in data and "fidelity" in data):
        return "bench"
    return "unknown"
