"""Helpers shared by the test modules (command-line runs and bundle checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    """Progress lines may precede it; the error itself is exactly one line, last."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("robopt-compile: error:"), err
    assert sum("error" in line for line in lines) == 1, err


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def assert_bundle(out: Path, backend: str) -> dict:
    from robopt_compile.jsonutil import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["backend"] == backend
    assert manifest["precision"] == "fp32"
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest, rel
    assert "model.onnx" in manifest["files"]
    assert manifest["engine"]["files"]
    for f in manifest["engine"]["files"]:
        assert (out / manifest["engine"]["dir"] / f).is_file()
    ins = np.load(out / "reference" / "inputs.npz")
    outs = np.load(out / "reference" / "outputs.npz")
    assert sorted(ins.files) == sorted(i["name"] for i in manifest["inputs"])
    assert sorted(outs.files) == sorted(o["name"] for o in manifest["outputs"])
    assert manifest["parity"]["engine"]["passed"] is True
    assert manifest["parity"]["engine"]["cosine"] >= 0.9999
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["tool_versions"])
    return manifest


def cache_entries(store: Path, stage: str) -> int:
    """How many build-cache entries of ``stage`` the store at ``store`` holds (0 before it
    exists): read while another process writes them."""
    import sqlite3

    db = store / "store.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(db, timeout=5) as c:
        try:
            return c.execute("SELECT COUNT(*) FROM cache WHERE stage=?", (stage,)).fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def kill_when(args: list[str], ready, log: Path, timeout: float) -> str:
    """Run `robopt-compile ARGS` and SIGKILL it once `ready()` holds; returns its stderr.

    Fails the test when the child exits first or `ready()` does not hold within `timeout`
    seconds, quoting the child's stderr. Its stderr goes to the file `log`: an unread pipe
    fills with progress lines and blocks the child.
    """
    import signal
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).parent / "robopt-compile"
    with log.open("wb") as err_file:
        proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            deadline = time.monotonic() + timeout
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            exited = proc.poll()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
    tail = log.read_text(errors="replace")[-2000:]
    assert exited is None, f"the child exited ({exited}) before it was killed:\n{tail}"
    assert ready(), f"not ready after {timeout:.0f} s:\n{tail}"
    return tail
