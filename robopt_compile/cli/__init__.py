"""``robopt-compile``: the command line, a thin layer over :mod:`robopt_compile.api`."""

from robopt_compile.cli.main import main

__all__ = ["main"]
