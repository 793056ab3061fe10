"""Named input arrays: reading them from an ``.npz`` (reference inputs, calibration data,
open-loop datasets) with a one-line error for anything wrong, and checking them against a
model's inputs (names, dtypes, static dims)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError


def load_npz_inputs(path: str | Path, what: str = "reference inputs file") -> dict[str, np.ndarray]:
    """Read an .npz of named input arrays with a one-line error for anything wrong.

    ``what`` names the file in the not-found message (reference inputs, calibration data).
    Pickled object arrays are refused: loading them can run arbitrary code.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}.")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "Object arrays" not in str(exc):  # a non-numpy file (even a pickle) is unreadable
            raise _unreadable_npz(p, exc) from exc
        raise InputError(
            f"{p} holds pickled object arrays, which robopt does not load (unsafe). "
            "Save plain numeric arrays with numpy.savez(path, input_name=array, ...)."
        ) from exc
    except Exception as exc:  # zip, pickle, EOF or OS errors of a file that is no .npz: typed
        raise _unreadable_npz(p, exc) from exc
    if not arrays:
        raise InputError(f"{p} holds no arrays.")
    return arrays


def _unreadable_npz(p: Path, exc: Exception) -> InputError:
    return InputError(
        f"{p} is not a readable .npz of arrays ({type(exc).__name__}: {str(exc)[:120]}). "
        "Write it with numpy.savez(path, input_name=array, ...)."
    )


def check_feeds_match(feeds: dict[str, np.ndarray], specs: list[Any], where: str) -> None:
    """Names, dtypes and static dims of ``feeds`` must match the model's inputs."""
    names = [s.name for s in specs]
    if sorted(feeds) != sorted(names):
        missing = [n for n in names if n not in feeds]
        extra = sorted(k for k in feeds if k not in names)
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise InputError(
            f"{where}: arrays {sorted(feeds)} do not match the model inputs {names} "
            f"({'; '.join(parts)})."
        )
    for s in specs:
        a = feeds[s.name]
        if str(a.dtype) != s.dtype:
            raise InputError(f"{where}: input {s.name!r} is {a.dtype}, the model takes {s.dtype}.")
        ok = len(a.shape) == len(s.shape) and all(
            not isinstance(d, int) or d == n for d, n in zip(s.shape, a.shape, strict=True)
        )
        if not ok:
            raise InputError(
                f"{where}: input {s.name!r} has shape {list(a.shape)}, the model takes "
                f"{list(s.shape)}."
            )
