"""docs/QUICKSTART.md followed as written, on its own policy: the factory from the page, data
files in the page's layout, an int8 host compile, robopt-bench, open-loop evaluation and the
runtime API (the board compiles are covered by the target tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "QUICKSTART.md"


def _factory_code() -> str:
    text = DOC.read_text()
    return re.search(r"```python\n# mypol/policies.py.*?\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def mypol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "mypol_qs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "policies.py").write_text(_factory_code())
    monkeypatch.chdir(tmp_path)  # "run robopt from the folder that holds mypol/"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.random((24, 3, 96, 96), np.float32),
             proprio=rng.standard_normal((24, 9)).astype(np.float32))  # fmt: skip
    np.savez(tmp_path / "episodes.npz", image=rng.random((12, 1, 3, 96, 96), np.float32),
             proprio=rng.standard_normal((12, 1, 9)).astype(np.float32))  # fmt: skip
    return tmp_path


def test_the_quick_start(mypol: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = mypol / "out" / "host-int8"
    code, _, err = run_cli(["mypol_qs.policies:make_policy", "--target", "host", "--precision",
                            "int8", "--calibration", "calib.npz", "--max-accuracy-drop", "0.02",
                            "--threads", "1", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in m["outputs"]] == ["action"]  # the returned dict's key
    assert [i["name"] for i in m["inputs"]] == ["image", "proprio"]

    from robopt_compile.bench.cli import main as bench_main

    with pytest.raises(SystemExit) as e:
        bench_main([str(out), "--runs", "20", "--threads", "1", "--control-rate", "50",
                    "--save", "--json"])  # fmt: skip
    assert e.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["fidelity"]["passed"] is True

    code, stdout, err = run_cli(["evaluate", str(out), "--dataset", "episodes.npz",
                                 "--gripper-dim", "6", "--json"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["samples"] == 12

    from robopt_compile import load_bundle

    with load_bundle(out, threads=1) as policy:
        action = policy({"image": np.zeros((1, 3, 96, 96), np.float32),
                         "proprio": np.zeros((1, 9), np.float32)})["action"]  # fmt: skip
    assert action.shape == (1, 7)
