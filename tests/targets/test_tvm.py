"""TVM backend: the shared contract, MetaSchedule tuning with a reused database, cross-compiling
for aarch64 (ELF check and kernels run under qemu-user), and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import pytest
from contract import BackendContract
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import BackendUnavailableError, BuildError
from robopt_compile.hwprofiles import load_profile
from robopt_compile.targets import Artifact, BuildOptions, get_backend

AARCH64_TARGET = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a76",
    "mattr": ["+neon"],
    "num-cores": 4,
}


class TestTvm(BackendContract):
    name = "tvm"

    def test_config_records_target_io_and_untuned(self, artifact):
        cfg = artifact.config
        assert artifact.files == ("model.so",)
        assert cfg["target"]["kind"] == "llvm" and cfg["target"]["num-cores"] == 1
        assert cfg["inputs"] == [{"name": "x", "shape": [2, 3, 20, 20], "dtype": "float32"}]
        assert cfg["outputs"] == ["y"]
        assert cfg["tuned"] is False and cfg["tuning"] is None
        assert cfg["cross_compiled"] is False
        json.dumps(cfg)  # goes into the manifest as it is

    def test_wrong_input_shape_is_a_clear_error(self, backend, artifact):
        from robopt_compile.errors import InputError

        with backend.runner(artifact) as r, pytest.raises(InputError, match=r"\[2, 3, 20, 20\]"):
            r.infer({"x": np.zeros((1, 3, 20, 20), np.float32)})


def _profile(base: str = "host", **tvm_opts):
    return dataclasses.replace(
        load_profile(base), backend_options=MappingProxyType({"tvm": tvm_opts})
    )


def _save(tmp_path: Path, nodes, inputs, outputs, inits=(), name="m.onnx") -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _gemm_relu(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """One fused kernel (MatMul + Add + Relu): the cheapest model to tune."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    x = rng.standard_normal((1, 16)).astype(np.float32)
    path = _save(
        tmp_path,
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    return path, x, np.maximum(x @ w + b, 0)


@pytest.fixture()
def tvm_backend():
    b = get_backend("tvm")
    ok, why = b.availability()
    if not ok:  # a failure in CI (ROBOPT_FAIL_ON_SKIP): `make install` installs the tvm extra
        pytest.skip(f"tvm runtime not installed here: {why}")
    return b


def test_tuning_writes_a_database_and_a_second_build_reuses_it(tvm_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    path, x, want = _gemm_relu(tmp_path)
    opts = BuildOptions(threads=1, tune_trials=2)
    first = tvm_backend.build(path, load_profile("host"), opts, tmp_path / "a")
    t1 = first.config["tuning"]
    assert first.config["tuned"] is True
    assert t1["new_trials"] > 0 and t1["records_reused"] == 0 and t1["trials_requested"] == 2
    db = Path(t1["database"])
    assert db.parent == tmp_path / "cache" / "tvm"
    for f in ("database_workload.json", "database_tuning_record.json"):
        assert (db / f).stat().st_size > 0
    second = tvm_backend.build(path, load_profile("host"), opts, tmp_path / "b")
    t2 = second.config["tuning"]
    assert t2["new_trials"] == 0 and t2["kernels_reused"] == t2["kernels"] == t1["kernels"]
    assert t2["records_reused"] >= t1["new_trials"] > 0 and t2["database"] == t1["database"]
    with tvm_backend.runner(second, threads=1) as r:
        np.testing.assert_allclose(r.infer({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_robot_threads_enter_the_target_and_the_database_key(tvm_backend, tmp_path, monkeypatch):
    """num-cores is the robot's: the host's is --threads (the robot is this machine); a
    board's is its own unless --robot-threads says otherwise, whatever the build's --threads
    (``-t raspberry-pi-5 --threads 1`` used to bake num-cores 1 into the Pi's kernels)."""
    from robopt_compile.targets.tvm import resolve_target, target_key

    one = resolve_target(load_profile("host"), 1)
    assert one["num-cores"] == 1 and one["mcpu"]
    assert resolve_target(load_profile("host"), 1, robot_threads=2)["num-cores"] == 2
    pi = load_profile("raspberry-pi-5")
    assert resolve_target(pi, 1)["num-cores"] == 4 == pi.cpu_cores
    assert resolve_target(pi, 1, robot_threads=2)["num-cores"] == 2
    board = resolve_target(_profile("host", target=AARCH64_TARGET), 1, robot_threads=3)
    assert board["num-cores"] == 3 and board["mcpu"] == "cortex-a76"
    assert target_key(one, "0.27") != target_key({**one, "num-cores": 2}, "0.27")


def _needs_cross_compiler():
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ missing: apt-get install g++-aarch64-linux-gnu")


@pytest.mark.may_skip
def test_cross_compile_for_aarch64_gives_an_aarch64_library(tvm_backend, tmp_path):
    _needs_cross_compiler()
    from robopt_compile.targets.tvm import elf_machine

    path, _, _ = _gemm_relu(tmp_path)
    art = tvm_backend.build(path, load_profile("raspberry-pi-5"), BuildOptions(), tmp_path / "e")
    cfg = art.config
    assert cfg["arch"] == "aarch64" and cfg["cross_compiled"] is True
    assert cfg["target"]["mtriple"] == "aarch64-linux-gnu"
    assert elf_machine(art.root / "model.so") == "aarch64"
    out = subprocess.run(
        ["aarch64-linux-gnu-nm", "-D", str(art.root / "model.so")], capture_output=True, text=True
    ).stdout
    assert "__tvm_ffi_" in out and "__tvm_ffi__library_bin" in out
    check = cfg["qemu_check"]
    if shutil.which("qemu-aarch64"):  # CI installs qemu-user: the kernels really ran
        assert check["status"] == "passed", check
        assert check["kernels_run"] == check["kernels"] >= 1 and check["max_abs_diff"] < 1e-4
    else:
        assert check["status"] == "not run"
    if platform.machine() != "aarch64":
        with pytest.raises(BackendUnavailableError, match="aarch64 library") as e:
            tvm_backend.runner(art).__enter__()
        assert "\n" not in str(e.value)


@pytest.mark.may_skip
def test_cross_tuning_without_records_asks_for_the_board(tvm_backend, tmp_path, monkeypatch):
    _needs_cross_compiler()
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    path, _, _ = _gemm_relu(tmp_path)
    prof = _profile("host", target=AARCH64_TARGET)
    with pytest.raises(BuildError, match="tune on the board"):
        tvm_backend.build(path, prof, BuildOptions(tune_trials=8), tmp_path / "e")


def test_missing_cross_compiler_names_the_debian_package(tvm_backend, tmp_path):
    path, _, _ = _gemm_relu(tmp_path)
    prof = _profile("host", target=AARCH64_TARGET, cross_compiler="no-such-aarch64-g++")
    if platform.machine() == "aarch64":
        pytest.skip("aarch64 builds natively here: no cross compiler is needed")
    with pytest.raises(BuildError, match=r"apt-get install g\+\+-aarch64-linux-gnu") as e:
        tvm_backend.build(path, prof, BuildOptions(), tmp_path / "e")
    assert "no-such-aarch64-g++" in str(e.value) and "\n" not in str(e.value)


def test_op_the_frontend_lacks_is_a_one_line_build_error(tvm_backend, tmp_path):
    w = numpy_helper.from_array(np.ones((1, 4, 3), np.float32), "W")
    r = numpy_helper.from_array(np.ones((1, 4, 4), np.float32), "R")
    path = _save(
        tmp_path,
        [helper.make_node("RNN", ["x", "W", "R"], ["seq", "h"], hidden_size=4)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 3])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 4])],
        [w, r],
    )
    with pytest.raises(BuildError, match="RNN") as e:
        tvm_backend.build(path, load_profile("host"), BuildOptions(), tmp_path / "e")
    assert "\n" not in str(e.value) and "onnxruntime" in str(e.value)


def test_symbolic_batch_is_refused(tvm_backend, tmp_path):
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    with pytest.raises(BuildError, match="static shapes"):
        tvm_backend.build(path, load_profile("host"), BuildOptions(), tmp_path / "e")


def test_profile_without_tvm_target_and_string_targets_are_refused(tvm_backend, tmp_path):
    path, _, _ = _gemm_relu(tmp_path)
    with pytest.raises(BuildError, match="names no TVM target"):
        tvm_backend.build(path, _profile("x86-64-avx512"), BuildOptions(), tmp_path / "e")
    with pytest.raises(BuildError, match="JSON dicts"):
        tvm_backend.build(path, _profile("host", target="llvm -mcpu=znver5"), BuildOptions(),
                          tmp_path / "e")  # fmt: skip


def test_foreign_arch_engine_is_refused_by_the_runner(tvm_backend, tmp_path):
    other = "x86_64" if platform.machine() == "aarch64" else "aarch64"
    art = Artifact("tvm", tmp_path, ("model.so",), {"model": "model.so", "arch": other})
    with pytest.raises(BackendUnavailableError, match=f"{other} library"):
        tvm_backend.runner(art).__enter__()


def test_runner_module_imports_without_tvm_or_compile_stack():
    code = (
        "import sys, robopt_compile.targets.tvm\n"
        "bad = [m for m in ('tvm', 'tvm_ffi', 'torch', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_symbolic_batch_is_built_for_batch_1_with_a_line_saying_so(
    tvm_backend, tmp_path, capsys
) -> None:
    """Neither --dynamic-batch nor a batch was asked for: the model's own symbolic batch is
    fixed to 1 for TVM (it was "drop --dynamic-batch", a flag nobody gave)."""
    from helpers import run_cli

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])
    out = tmp_path / "out"
    code, _, err = run_cli([str(path), "-b", "tvm", "--threads", "1", "-o", str(out),
                            "--no-cache"], capsys)  # fmt: skip
    assert code == 0, err
    assert "robopt-compile: the model's batch dim is symbolic" in err  # a plain line
    assert "built for batch 1" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == [1, 16] and m["parity"]["engine"]["passed"]


def test_a_tuning_unit_refuses_a_worker_with_another_cpu():
    """Timings from another CPU are not the robot's: the unit refuses before tuning anything."""
    pytest.importorskip("tvm", reason="the [tvm] extra is not installed")
    from robopt_compile.targets.tvm.distributed import cpu_identity, tune_kernels

    assert cpu_identity()  # this machine's model and flags
    with pytest.raises(BuildError, match="another CPU"):
        tune_kernels({"cpu": "Some Other CPU (flags 00000000)", "kernels": []})


def test_the_executor_is_not_part_of_the_build_key():
    a, b = BuildOptions(tune_trials=8), BuildOptions(tune_trials=8, executor=object())
    assert a == b and a.key() == b.key() and "executor" not in a.key()
