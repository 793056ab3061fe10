"""Importing the user's ``package.module:function`` (factories, calibration iterators, metrics).

One place decides how a user's module is found (the current folder first, as a user expects
from a command run beside their code) and how its failures read, for every such option.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError


def is_callable_ref(spec: str) -> bool:
    mod, sep, fn = spec.partition(":")
    return bool(sep and mod and fn.isidentifier()) and all(p.isidentifier() for p in mod.split("."))


@contextlib.contextmanager
def cwd_on_path() -> Iterator[None]:
    """The user's module lives beside them: import it with the cwd on ``sys.path``."""
    cwd = str(Path.cwd())
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def brief(exc: BaseException) -> str:
    """``Type: first line`` of an exception, short enough for a one-line error."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_callable(
    spec: str, what: str, error: type[InputError] = InputError
) -> Callable[..., Any]:
    """``package.module:function`` as a callable; every failure is one ``error`` line."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise error(f"{what} {spec!r}: expected package.module:function.")
    with cwd_on_path():
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise error(
                f"{what} {spec}: cannot import {mod_name!r} ({exc}). Run from the folder that "
                "holds it or install it."
            ) from exc
        except Exception as exc:  # the user's module raised (or has a syntax error) on import
            raise error(
                f"{what} {spec}: importing {mod_name!r} raised {brief(exc)}. Fix the module."
            ) from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        import difflib

        names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        close = difflib.get_close_matches(fn_name, names, n=1)
        hint = f" Did you mean {mod_name}:{close[0]}?" if close else ""
        raise error(f"{what} {spec}: {mod_name} has no callable {fn_name!r}.{hint}")
    return fn
