"""The layer check: import-linter's contracts (pyproject.toml, docs/ARCHITECTURE.md) on robopt.

robopt's top-level folders install as subpackages of ``robopt_compile`` (``passes/`` is
``robopt_compile.passes``); import-linter reads a package from one folder, so the check runs on
a copy of the sources laid out as installed. ``make lint`` runs this file; tests/test_layers.py
runs it in ``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = ("passes", "targets", "hwprofiles", "bench")  # pyproject's package-dir


def installed_layout(dest: Path) -> Path:
    """``dest/robopt_compile``: the Python sources as the wheel lays them out."""
    skip = shutil.ignore_patterns("__pycache__", "*.npz", "*.json", "*.toml", "weights")
    shutil.copytree(REPO / "robopt_compile", dest / "robopt_compile", ignore=skip)
    for name in MAPPED:
        shutil.copytree(REPO / name, dest / "robopt_compile" / name, ignore=skip)
    return dest


def check(
    contract: str | None = None, edit: Callable[[Path], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the installed layout (changed by ``edit(root)`` first, if given);
    the completed process (the contracts' report in stdout)."""
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="robopt-layers-") as tmp:
        root = installed_layout(Path(tmp))
        if edit is not None:
            edit(root / "robopt_compile")
        args = [str(lint), str(REPO / "pyproject.toml"), "--no-cache"]
        if contract:
            args += ["--contract", contract]
        env = {**os.environ, "PYTHONPATH": str(root)}
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)


if __name__ == "__main__":
    proc = check()
    print(proc.stdout + proc.stderr, end="")
    sys.exit(proc.returncode)
