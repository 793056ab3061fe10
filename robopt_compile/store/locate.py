"""Where a store is: the default location and the ``--store`` spec (folder, .db file, URL).

``--store PATH|URL``, else ``$ROBOPT_STORE``, else ``$XDG_CACHE_HOME/robopt/store``, else
``~/.cache/robopt/store`` (docs/STORE.md, "Location and layout"). Nothing here touches the
disk; ``open_store`` (``robopt_compile/store/store.py``) opens what these name.
"""

from __future__ import annotations

import os
from pathlib import Path

from robopt_compile.store.records import StoreError

DB_NAME = "store.db"


def default_store_root() -> Path:
    """``$ROBOPT_STORE``, else ``$XDG_CACHE_HOME/robopt/store``, else ``~/.cache/robopt/store``."""
    env = os.environ.get("ROBOPT_STORE")
    if env:
        return spec_paths(env)[0]
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "robopt" / "store"


def spec_paths(spec: str) -> tuple[Path, Path]:
    """(root folder, database file) for a folder, a ``.db`` file or a ``sqlite:///`` URL.

    Raises:
        StoreError: a URL whose scheme is not ``sqlite``, or a relative ``sqlite://`` path.
    """
    if "://" in spec:
        scheme, rest = spec.split("://", 1)
        if scheme != "sqlite":
            raise StoreError(
                f"store URL {spec!r}: only sqlite:///ABSOLUTE/PATH/store.db is supported "
                "(server databases are not implemented yet)."
            )
        if not rest.startswith("/"):
            raise StoreError(f"store URL {spec!r} must be sqlite:///ABSOLUTE/PATH (three slashes).")
        db = Path(rest).expanduser()
        return db.parent, db
    p = Path(spec).expanduser()
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return p.parent, p
    return p, p / DB_NAME


def store_location(spec: str | None = None) -> tuple[Path, Path]:
    """(root folder, database file) that ``open_store(spec)`` would use."""
    if spec:
        return spec_paths(spec)
    root = default_store_root()
    env = os.environ.get("ROBOPT_STORE")
    return spec_paths(env) if env else (root, root / DB_NAME)
