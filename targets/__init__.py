"""Target backends, one per file, found through the ``TARGETS`` table (``targets/registry.py``)
and imported on use.

Importing this package loads the table only, so hardware profiles and ``--help`` read it without
numpy or any runtime; the interface types load from ``targets.base`` on first use
(``from robopt_compile.targets import Artifact`` works as usual).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robopt_compile.targets.registry import TARGETS, get_backend

if TYPE_CHECKING:
    from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

__all__ = ["TARGETS", "Artifact", "Backend", "BuildOptions", "Runner", "get_backend"]
_BASE = ("Artifact", "Backend", "BuildOptions", "Runner")


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from robopt_compile.targets import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
