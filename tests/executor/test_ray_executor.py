"""--executor ray on a real 2-CPU Ray cluster on 127.0.0.1 (started by the fixture): the same
per-seed episodes and the same planner choice as a local run, a worker killed mid-unit, a fleet
built on the workers, and the one-line errors of an unreachable cluster."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli
from raycluster_helpers import worker_pids

SWINGUP = "InvertedPendulumSwingupBulletEnv-v0"
ZOO = "zoo:pendulum-swingup-mlp"


@pytest.fixture(scope="module")
def swingup(tmp_path_factory) -> Path:
    from robopt_compile import api

    out = tmp_path_factory.mktemp("ray") / "int8"
    api.compile(ZOO, out=out, precision="int8-dynamic", threads=1, record=False)
    return out


def _per_seed(path: Path) -> list[list]:
    doc = json.loads(path.read_text())
    return [[e["per_seed"]["seed"], e["per_seed"]["return"], e["per_seed"]["success"]]
            for e in doc["engines"]]  # fmt: skip


def test_worker_killed_mid_unit_is_retried(ray_cluster, swingup, capsys) -> None:
    """The same per-seed episodes as a local run, although one worker is killed with SIGKILL
    while it runs a batch of them (Ray reruns the batch)."""
    result = swingup / "results" / f"eval-{SWINGUP}.json"
    run_cli(["evaluate", str(swingup), "--episodes", "20", "--seed", "7"], capsys)
    local = _per_seed(result)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = worker_pids("episode_batch")
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    code, _, err = run_cli(["evaluate", str(swingup), "--episodes", "20", "--seed", "7",
                            "--executor", ray_cluster.client], capsys)  # fmt: skip
    t.join(timeout=5)
    assert killed, "no episode_batch worker was seen to kill"
    assert code == 0, err
    assert _per_seed(result) == local  # reference and engine, seed by seed
    ex = json.loads(result.read_text())["executor"]
    assert ex["executor"] == "ray" and ex["workers"] == 2 and ex["machines"]


def test_fleet_on_ray(ray_cluster, tmp_path, capsys, monkeypatch) -> None:
    """--executor ray joins the cluster $RAY_ADDRESS names (as a driver, not a Ray Client)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    out = tmp_path / "fleet"
    boards = ["host", "jetson-orin-nano-8gb"]
    code, stdout, err = run_cli(["zoo:state-mlp", "--target", ",".join(boards), "--executor",
                                 "ray", "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert [r["board"] for r in summary["boards"]] == boards
    assert summary["failed"] == 0 and summary["executor"]["executor"] == "ray"
    for r in summary["boards"]:  # shipped back as tar bytes, unpacked into the fleet
        assert (out / r["board"] / "manifest.json").is_file()
    assert json.loads((out / "fleet.json").read_text())["boards"][1]["backend"] == "tensorrt"


def test_planner_on_ray_chooses_as_local(ray_cluster, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    args = [ZOO, "--objective", "size", "--max-accuracy-drop", "0.2", "--threads", "1",
            "--techniques", "quantize", "-b", "onnxruntime", "--json"]  # fmt: skip
    code, out, err = run_cli([*args, "-o", str(tmp_path / "local")], capsys)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run_cli([*args, "-o", str(tmp_path / "ray"), "--executor", "ray"], capsys)
    assert code == 0, err
    ray = json.loads(out)
    assert len(ray["measured"]) == len(local["measured"]) >= 3
    assert ray["best"]["candidate"] == local["best"]["candidate"]
    assert {m["candidate"] for m in ray["measured"]} == {m["candidate"] for m in local["measured"]}
    assert all(m["measured_on"] is None for m in ray["measured"])  # same machine: comparable
    assert (tmp_path / "ray" / "manifest.json").is_file()


def test_unreachable_cluster(tmp_path, capsys) -> None:
    from raycluster_helpers import free_port

    dead = f"ray://127.0.0.1:{free_port()}"
    fleet = ["zoo:state-mlp", "--target", "host,x86-64-avx2", "-o", str(tmp_path / "f")]
    code, _, err = run_cli([*fleet, "--executor", dead], capsys)
    assert code == 3 and "no Ray cluster answers" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f").exists()
    code, _, err = run_cli(["zoo:state-mlp", "-o", str(tmp_path / "x"), "--executor", "ray:/x"],
                           capsys)  # fmt: skip
    assert code == 2 and "--executor" in err


def test_auto_falls_back_to_local(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
    code, _, err = run_cli(["zoo:state-mlp", "--target", "host,x86-64-avx2", "--executor",
                            "auto", "-o", str(tmp_path / "f")], capsys)  # fmt: skip
    assert code == 0, err
    assert "Running locally instead" in err
    assert (tmp_path / "f" / "host" / "manifest.json").is_file()


def test_without_ray_installed(monkeypatch) -> None:
    from robopt_compile.errors import ClusterError
    from robopt_compile.executor import open_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ClusterError, match=r"\[ray\] extra"), open_executor("ray"):
        pass


def _two_layer_mlp(path: Path) -> Path:
    """Two fused kernels (MatMul + Add + Relu, MatMul + Add + Tanh): one tuning unit each."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (32, 64)), ("b1", (64,)), ("w2", (64, 16)), ("b2", (16,)))
    ]
    nodes = [
        helper.make_node(op, i, o)
        for op, i, o in (
            ("MatMul", ["x", "w1"], ["m1"]),
            ("Add", ["m1", "b1"], ["a1"]),
            ("Relu", ["a1"], ["h"]),
            ("MatMul", ["h", "w2"], ["m2"]),
            ("Add", ["m2", "b2"], ["a2"]),
            ("Tanh", ["a2"], ["y"]),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tvm_tuning_units_on_ray(ray_cluster, tmp_path, capsys, monkeypatch) -> None:
    """--tune-trials with --executor: one MetaSchedule unit per worker, the records merged into
    this machine's database, so the next (local) build of the model tunes nothing."""
    pytest.importorskip("tvm", reason="the [tvm] extra is not installed")
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    src = _two_layer_mlp(tmp_path / "mlp.onnx")
    args = [str(src), "-b", "tvm", "--tune-trials", "2", "--threads", "1", "--no-cache"]
    code, _, err = run_cli([*args, "-o", str(tmp_path / "r"), "--executor", ray_cluster.client],
                           capsys)  # fmt: skip
    assert code == 0, err
    tuning = json.loads((tmp_path / "r" / "manifest.json").read_text())["engine"]["config"]
    tuning = tuning["tuning"]
    assert tuning["kernels"] == tuning["kernels_tuned"] == 2
    assert tuning["executor"]["executor"] == "ray" and tuning["executor"]["units"] == 2
    assert tuning["executor"]["records_merged"] == tuning["new_trials"] > 0
    code, _, err = run_cli([*args, "-o", str(tmp_path / "l")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "l" / "manifest.json").read_text())["engine"]["config"]
    again = again["tuning"]
    assert again["kernels_reused"] == 2 and again["new_trials"] == 0 and again["executor"] is None
    assert again["records_reused"] == tuning["new_trials"]
