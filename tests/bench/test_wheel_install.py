"""The robot-side install route of docs/DEPLOY.md, for real: build the wheel from this checkout,
install it with only the ``onnxruntime`` extra into a clean virtual environment, and run a
bundle there with ``robopt-bench`` and with the runtime API (about 15 s; pip reads the same
package index as ``make install``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:4]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) in ``dest``: a wheel built in the
    checkout would leave build/ and egg-info behind in it."""
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    archive = dest.parent / "src.tar"
    with tarfile.open(archive, "w") as tar:
        for rel in filter(None, files.split("\0")):
            if (ROOT / rel).is_file():
                tar.add(ROOT / rel, arcname=rel)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_wheel_with_the_onnxruntime_extra_runs_a_bundle(ort_bundle: Path, tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    log = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-w", str(tmp_path / "dist"), str(src)])  # fmt: skip
    assert "is not declared" not in log and "importable" not in log, log[-2000:]
    wheel = next((tmp_path / "dist").glob("robopt_compile-*.whl"))
    venv = tmp_path / "robot"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[onnxruntime]"])
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"])
    names = {p["name"].lower() for p in json.loads(installed.strip().splitlines()[-1])}
    assert "onnxruntime" in names and not names & {"torch", "onnx", "openvino"}, names
    out = _run([str(venv / "bin" / "robopt-bench"), str(ort_bundle), "--runs", "20",
                "--threads", "1", "--json"], cwd=tmp_path)  # fmt: skip
    res = json.loads(out[out.index("{") :])
    assert res["fidelity"]["passed"] is True
    code = (
        "import numpy as np, json\n"
        "from robopt_compile import load_bundle\n"
        f"p = load_bundle({str(ort_bundle)!r})\n"
        f"ins = dict(np.load({str(ort_bundle / 'reference' / 'inputs.npz')!r}))\n"
        "print(json.dumps(p(ins)['action'].tolist()))\n"
    )
    # cwd: not the checkout, whose robopt_compile/ folder would shadow the installed package
    got = _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path)
    got = json.loads(got.strip().splitlines()[-1])
    with np.load(ort_bundle / "reference" / "outputs.npz") as z:
        assert np.abs(np.asarray(got) - z["action"]).max() < 1e-4
