"""Fixtures for the multi-graph tests: the tiny OpenVLA-style model, its fp32 bundle (built
once per session: about 15 s), a compile helper and a helper that edits a bundle's copy."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def compile_vla(out: Path, *extra: str) -> dict:
    """``robopt-compile zoo:openvla-tiny -o OUT --force --json EXTRA...``; the manifest."""
    from robopt_compile.cli import main

    try:
        main(["zoo:openvla-tiny", "--threads", "1", "-o", str(out), "--force", "--json", *extra])
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    return json.loads((out / "manifest.json").read_text())


def edited_copy(bundle: Path, dest: Path, fn: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``bundle`` at ``dest`` whose manifest ``fn`` changed (not rehashed)."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    fn(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


@pytest.fixture(name="compile_vla")
def compile_vla_fixture() -> Callable[..., dict]:
    """``compile_vla(out, *extra)``: compile the tiny VLA into ``out``; its manifest."""
    return compile_vla


@pytest.fixture(name="edited_copy")
def edited_copy_fixture() -> Callable[[Path, Path, Callable[[dict[str, Any]], Any]], Path]:
    """``edited_copy(bundle, dest, fn)``: a copy of a bundle with ``fn`` applied to its
    manifest."""
    return edited_copy


@pytest.fixture(scope="module")
def tiny():
    from robopt_compile.zoo.vla import make_vla

    return make_vla("openvla-tiny")


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLA compiled at fp32 with the defaults (read-only: copy it before editing)."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("vla") / "fp32"
    compile_vla(out)
    return out
