"""Files of a bundle: every path a loader opens is checked to be one of the bundle's own.

A bundle arrives on a robot as a copied folder, possibly from someone else, and its manifest
names the files the runtimes open. A name that is absolute, climbs out with ``..``, or passes
through a symbolic link could make a runtime read any file of the robot, so every loader
goes through :func:`member` instead of ``root / name``. The checks are lexical first, so a
refused name never touches the disk outside the bundle (nothing says whether such a file
exists), and then ``lstat`` each step below the bundle's folder, so no link is followed.

Standard library only: ``robopt-bench`` checks a bundle with it before any runtime is
imported, and both ``bench`` and ``targets`` use it without importing each other.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Any

from robopt_compile.errors import InputError

# The keys of an engine's ``config`` that name a file of its folder (written by the targets'
# ``build``): the engine the runtime loads, a deferred TensorRT build's recipe and script.
# Other string values (``timing_cache``: where the build machine kept its cache) are records,
# never opened from the bundle.
CONFIG_PATHS = ("model", "recipe", "trtexec_script")

_CORRUPT = "the bundle is corrupt or not robopt's"
_NO_LINKS = (
    "a bundle holds only plain files and folders. Copy it again without links "
    "(cp -rL, rsync -L) or compile it again."
)


def relative(rel: Any, what: str) -> PurePosixPath:
    """``rel`` as a relative POSIX path inside a folder, judged by its text alone.

    Raises:
        InputError: not a string, empty, absolute, with a ``..`` step, a backslash or a NUL.
    """
    if isinstance(rel, str) and rel and "\\" not in rel and "\x00" not in rel:
        p = PurePosixPath(rel)
        if p.parts and not p.is_absolute() and ".." not in p.parts:
            return p
    raise InputError(
        f"{what} {rel!r} is not a file of this bundle (it leads outside the bundle); {_CORRUPT}."
    )


def member(root: Path, rel: Any, what: str, listed: Collection[str] | None = None) -> Path:
    """``root / rel`` once it is a regular file of the folder ``root``, reached without links.

    Args:
        root: the bundle's (or engine's) folder; itself may be a link, as the user chose it.
        rel: the name from the manifest or engine config, relative to ``root``.
        what: where the name comes from, for the message (``".../manifest.json:
            engine.config.model"``).
        listed: the names ``rel`` must be one of (an engine's ``files``), if given.

    Raises:
        InputError: one line naming ``what``: the name leads outside ``root``, is not listed,
            is missing, passes through or is a symbolic link, or is not a regular file.
    """
    p = relative(rel, what)
    if listed is not None and p.as_posix() not in {_posix(x) for x in listed}:
        raise InputError(f"{what} {rel!r} is not one of the engine's listed files; {_CORRUPT}.")
    path = Path(root)
    mode = 0  # relative() left at least one step
    for i, part in enumerate(p.parts, 1):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise InputError(
                f"{what} {rel!r} is missing from {root}; copy the whole bundle folder again."
            ) from None
        if stat.S_ISLNK(mode):
            step = PurePosixPath(*p.parts[:i]).as_posix()
            how = "is" if i == len(p.parts) else f"passes through {step!r},"
            raise InputError(f"{what} {rel!r} {how} a symbolic link; {_NO_LINKS}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {rel!r} is not a regular file; {_CORRUPT}.")
    return path


def _posix(name: Any) -> str:
    return PurePosixPath(str(name)).as_posix()


def refuse_links(root: Path) -> None:
    """Refuse a folder holding a symbolic link anywhere below it (none is followed).

    Runtimes open files the manifest does not name (an ONNX's external data, OpenVINO's
    ``.bin`` beside its ``.xml``), so a link anywhere in a bundle could lead one outside it.

    Raises:
        InputError: the first link found, by its path relative to ``root``, or a folder
            that cannot be listed.
    """
    root = Path(root)
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(
                f"cannot list {folder} ({exc.strerror or exc}); copy the bundle again with "
                "read permission."
            ) from None
        for e in entries:
            if e.is_symlink():
                rel = Path(e.path).relative_to(root).as_posix()
                raise InputError(f"{root}: {rel!r} is a symbolic link; {_NO_LINKS}")
            if e.is_dir(follow_symlinks=False):
                todo.append(Path(e.path))


# --- where robopt keeps things on this machine ----------------------------------------------


def cache_dir(sub: str) -> Path:
    """``$ROBOPT_CACHE/<sub>``, else ``$XDG_CACHE_HOME/robopt/<sub>``, else
    ``~/.cache/robopt/<sub>``: engine caches, tuning records, compiled blobs, the host's
    measured bandwidth (all safe to delete)."""
    base = os.environ.get("ROBOPT_CACHE")
    if base:
        return Path(base).expanduser() / sub
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "robopt" / sub
