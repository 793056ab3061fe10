"""Shared helpers of the TensorRT tests (imported by them and by conftest.py's fixtures).

Tiny ONNX policies, a target profile as the loader gives it, and the two environments the tests
run in: no TensorRT and no cuda-python (whatever is installed), or the strict ``fake_tensorrt``
with a fake cuda-python runtime. TensorRT cannot be installed here and there is no GPU.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fake_tensorrt
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.targets import BuildOptions
from robopt_compile.targets.tensorrt import TensorRTBackend, probe
from robopt_compile.targets.tensorrt.support import ERROR

TOLERANCE = {"cosine_min": 0.9999, "atol": 1e-4, "rtol": 1e-3}


# --- tiny ONNX models -------------------------------------------------------------------------


def onnx_model(nodes, inputs, outputs, inits=(), meta=None, opset=17) -> onnx.ModelProto:
    """A model of ``nodes`` at ``opset`` (IR 9), with ``meta`` as metadata properties."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    for k, v in (meta or {}).items():
        helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, k: v})
    return m


def conv_policy(
    path: Path,
    *,
    batch: int | str = 1,
    height: int | str = 8,
    precision: str = "fp32",
    zero_point: int = 0,
    weight_axis: int = 0,
    sparsity: str | None = None,
) -> Path:
    """x [batch,3,H,8] -> Conv(4) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(2) -> y."""
    rng = np.random.default_rng(0)
    fdt = np.float16 if precision == "fp16" else np.float32
    w = rng.standard_normal((4, 3, 3, 3)).astype(fdt)
    inits = [
        numpy_helper.from_array(rng.standard_normal(4).astype(fdt), "conv.b"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(fdt), "fc.w"),
        numpy_helper.from_array(rng.standard_normal(2).astype(fdt), "fc.b"),
    ]
    nodes = []
    x = "x"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["x"], ["x16"], "cast_in", to=TensorProto.FLOAT16))
        x = "x16"
    wname = "conv.w"
    if precision == "int8":
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x.scale"),
            numpy_helper.from_array(np.array(zero_point, np.int8), "x.zp"),
            numpy_helper.from_array(np.full(w.shape[weight_axis], 0.02, np.float32), "w.scale"),
            numpy_helper.from_array(np.zeros(w.shape[weight_axis], np.int8), "w.zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x.scale", "x.zp"], ["xq"], "q_x"),
            helper.make_node("DequantizeLinear", ["xq", "x.scale", "x.zp"], ["xdq"], "dq_x"),
            helper.make_node(
                "QuantizeLinear", ["conv.w", "w.scale", "w.zp"], ["wq"], "q_w", axis=weight_axis
            ),
            helper.make_node(
                "DequantizeLinear", ["wq", "w.scale", "w.zp"], ["wdq"], "dq_w", axis=weight_axis
            ),
        ]
        x, wname = "xdq", "wdq"
    inits.append(numpy_helper.from_array(w, "conv.w"))
    nodes += [
        helper.make_node("Conv", [x, wname, "conv.b"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], "gap"),
        helper.make_node("Flatten", ["p"], ["f"], "flat"),
        helper.make_node(
            "Gemm", ["f", "fc.w", "fc.b"], ["y16" if precision == "fp16" else "y"], "fc"
        ),
    ]
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["y16"], ["y"], "cast_out", to=TensorProto.FLOAT))
    m = onnx_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, height, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        inits,
        meta={"robopt.sparsity": sparsity} if sparsity else None,
    )
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def profile(sparse: bool = True, dla_cores: int = 2, **tensorrt: Any) -> SimpleNamespace:
    """A target profile as robopt's loader will give it (the GPU table is being added)."""
    return SimpleNamespace(
        name="jetson-orin-test",
        backend_options={"tensorrt": {"dla_cores": dla_cores, **tensorrt}},
        gpu=SimpleNamespace(name="Orin", compute_capability="8.7", sparse_tensor_cores=sparse),
    )


def errors(findings):
    return [f for f in findings if f.severity == ERROR]


# --- environments -----------------------------------------------------------------------------


def _no_cuda() -> Any:
    raise ImportError("no cuda-python in this test")


def force_no_tensorrt(mp: pytest.MonkeyPatch) -> None:
    """This machine has neither TensorRT nor cuda-python, whatever is installed."""
    mp.setitem(sys.modules, "tensorrt", None)  # import fails, find_spec gives None
    mp.setattr(probe, "load_cudart", _no_cuda)


def install_fake(
    mp: pytest.MonkeyPatch, version: str = "10.3.0", gpu: bytes = b"Orin", **kw: Any
) -> SimpleNamespace:
    trt, rec = fake_tensorrt.make(version, **kw)
    cudart, crec = fake_tensorrt.make_cudart(name=gpu)
    mp.setitem(sys.modules, "tensorrt", trt)
    mp.setattr(probe, "load_cudart", lambda: cudart)
    return SimpleNamespace(trt=trt, rec=rec, cudart=cudart, crec=crec)


# --- builds and bundles -----------------------------------------------------------------------


def build_deferred(tmp_path: Path, model: Path, prof: Any = None, **opts: Any):
    backend = TensorRTBackend().configure(dla_core=opts.pop("dla_core", None))
    return backend.build(model, prof or profile(), BuildOptions(**opts), tmp_path / "engine")


def write_deferred_bundle(out: Path, model: Path, precision: str = "fp32") -> Path:
    """A bundle laid out as the compile pipeline writes it, holding a deferred build."""
    import onnxruntime as ort

    from robopt_compile.compile.bundle import hash_tree, tool_versions

    out.mkdir(parents=True)
    shutil.copyfile(model, out / "model.onnx")
    with pytest.MonkeyPatch.context() as mp:
        force_no_tensorrt(mp)
        art = TensorRTBackend().build(
            out / "model.onnx", profile(), BuildOptions(precision=precision), out / "engine"
        )
    assert art.config["deferred"] is True
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (out / "reference").mkdir()
    np.savez(out / "reference" / "inputs.npz", x=x)
    np.savez(out / "reference" / "outputs.npz", y=y)
    manifest = {
        "schema_version": 1,
        "robopt_version": "0.1.0",
        "created_utc": "2025-01-01T00:00:00Z",
        "model": {"name": "tiny-conv", "source": "test", "source_kind": "onnx"},
        "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}],
        "target": {"profile": "jetson-orin-test", "arch": "aarch64", "description": "test"},
        "backend": "tensorrt",
        "precision": precision,
        "requested_precision": precision,
        "engine": {"dir": "engine", **art.to_json()},
        "files": hash_tree(out),
        "tool_versions": tool_versions(),
        "parity": {},
        "reference": {
            "inputs": "reference/inputs.npz",
            "outputs": "reference/outputs.npz",
            "tolerance": TOLERANCE,
        },
        "build": {"threads": None, "dynamic_batch": False, "opset": 17, "sparsity": None},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
