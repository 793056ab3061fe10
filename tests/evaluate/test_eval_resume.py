"""``robopt-compile evaluate --resume``: an evaluation killed with SIGKILL mid-way continues
from the batches of episodes it had recorded in the store, with the same per-seed results as
an evaluation that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cache_entries, kill_when, run_cli

ZOO = "zoo:pendulum-swingup-mlp"
TASK = "InvertedPendulumSwingupBulletEnv-v0"
ARGS = ["--episodes", "30", "--seed", "3"]  # 6 batches of 10 episodes (3 per engine)


def _per_seed(path: Path) -> list[list]:
    doc = json.loads(path.read_text())
    return [[e["per_seed"]["seed"], e["per_seed"]["return"], e["per_seed"]["success"]]
            for e in doc["engines"]]  # fmt: skip


def _batches(store: Path) -> int:
    return cache_entries(store, "episodes")


def test_killed_evaluation_resumes(tmp_path, capsys, monkeypatch) -> None:
    from robopt_compile import api

    bundle = tmp_path / "int8"
    api.compile(ZOO, out=bundle, precision="int8-dynamic", threads=1, record=False)
    result = bundle / "results" / f"eval-{TASK}.json"
    store = tmp_path / "store"
    monkeypatch.setenv("ROBOPT_STORE", str(store))
    args = ["evaluate", str(bundle), *ARGS, "--resume"]
    kill_when(args, lambda: _batches(store) >= 2, tmp_path / "child.err", timeout=180)
    recorded = _batches(store)
    assert 2 <= recorded < 6, f"killed after {recorded} of 6 batches"

    code, out, err = run_cli(["evaluate", str(bundle), *ARGS, "--resume"], capsys)
    assert code == 0, err
    assert f"resumed {recorded} batch(es) of episodes recorded by an earlier run" in out
    assert json.loads(result.read_text())["executor"]["resumed_units"] == recorded
    resumed = _per_seed(result)
    # Without --resume nothing is read back (a fresh run): the same episodes, seed by seed.
    code, out, err = run_cli(["evaluate", str(bundle), *ARGS], capsys)
    assert code == 0 and "resumed" not in out, err
    assert _per_seed(result) == resumed
