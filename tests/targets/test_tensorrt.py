"""TensorRT backend: pre-flight check, deferred builds, builder calls (strict fake), harness.

TensorRT cannot be installed here and there is no GPU: the builder and runner run against
``fake_tensorrt`` (a strict fake of the documented API) and a fake cuda-python runtime; the
contract tests and the real-engine test skip with the reason unless TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fake_tensorrt
import numpy as np
import onnx
import pytest
from contract import BackendContract
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
from robopt_compile.targets import BuildOptions, get_backend
from robopt_compile.targets import tensorrt as trt_backend
from robopt_compile.targets.tensorrt.check import (
    ERROR,
    WARNING,
    check_model,
    dla_supported,
    require_buildable,
)

TOLERANCE = {"cosine_min": 0.9999, "atol": 1e-4, "rtol": 1e-3}


@pytest.mark.may_skip
class TestTensorRT(BackendContract):
    """The shared contract; it skips (with the reason) without TensorRT and a CUDA GPU."""

    name = "tensorrt"


# --- tiny ONNX models -------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), meta=None, opset=17) -> onnx.ModelProto:
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
    m = _model(
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
    mp.setattr(trt_backend, "_cudart", _no_cuda)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_trt(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    force_no_tensorrt(monkeypatch)


def install_fake(
    mp: pytest.MonkeyPatch, version: str = "10.3.0", gpu: bytes = b"Orin", **kw: Any
) -> SimpleNamespace:
    trt, rec = fake_tensorrt.make(version, **kw)
    cudart, crec = fake_tensorrt.make_cudart(name=gpu)
    mp.setitem(sys.modules, "tensorrt", trt)
    mp.setattr(trt_backend, "_cudart", lambda: cudart)
    return SimpleNamespace(trt=trt, rec=rec, cudart=cudart, crec=crec)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, cache: Path) -> SimpleNamespace:
    return install_fake(monkeypatch)


# --- pre-flight -------------------------------------------------------------------------------


def test_clean_models_pass(tmp_path: Path) -> None:
    assert errors(check_model(conv_policy(tmp_path / "a.onnx"))) == []
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16")
    assert errors(check_model(fp16, precision="fp16")) == []
    int8 = conv_policy(tmp_path / "c.onnx", precision="int8")
    assert errors(check_model(int8, precision="int8")) == []


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    m = _model(
        [
            helper.make_node("Relu", ["x"], ["r"], "relu"),
            helper.make_node("Unique", ["r"], ["y"], "dedupe"),
            helper.make_node("Det", ["r"], ["d"], "determinant"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
        ],
    )
    findings = check_model(m)
    assert [(f.node, f.op, f.rule) for f in errors(findings)] == [
        ("dedupe", "Unique", "operator"),
        ("determinant", "Det", "operator"),
    ]
    with pytest.raises(BuildError) as info:
        require_buildable(findings)
    msg = str(info.value)
    assert "node 'dedupe' (Unique)" in msg and "not supported" in msg
    assert "(and 1 other blocking finding)" in msg and "\n" not in msg


def test_custom_domain_and_unknown_ops(tmp_path: Path) -> None:
    m = _model(
        [
            helper.make_node("FusedGemm", ["x", "x"], ["a"], "ms_op", domain="com.microsoft"),
            helper.make_node("RMSNormalization", ["a"], ["y"], "rms"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = {f.node: f.reason for f in errors(check_model(m))}
    assert "plugin" in found["ms_op"] and "not in TensorRT's operator table" in found["rms"]


def test_int64_out_of_int32_range(tmp_path: Path) -> None:
    big = 2**33
    inits = [
        numpy_helper.from_array(np.array([1, big], np.int64), "shape"),
        numpy_helper.from_array(np.array([big], np.int64), "offset"),
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([2**63 - 1], np.int64), "ends"),
    ]
    m = _model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"], "reshape_big"),
            helper.make_node("Add", ["i", "offset"], ["j"], "add_big"),
            helper.make_node("Slice", ["x", "starts", "ends"], ["s"], "slice_to_end"),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("j", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
        ],
        inits,
    )
    findings = [f for f in check_model(m) if f.rule == "int64-range"]
    by_node = {f.node: f for f in findings}
    assert set(by_node) == {"reshape_big", "add_big"}  # Slice's INT64_MAX end is the idiom
    assert by_node["reshape_big"].severity == ERROR and str(big) in by_node["reshape_big"].reason
    assert by_node["add_big"].severity == WARNING and "8.6" in by_node["add_big"].reason
    with pytest.raises(BuildError, match=r"node 'reshape_big' \(Reshape\): INT64 constant 'shape'"):
        require_buildable(findings)


def test_asymmetric_qdq_is_refused(tmp_path: Path) -> None:
    path = conv_policy(tmp_path / "m.onnx", precision="int8", zero_point=3)
    findings = check_model(path, precision="int8")
    assert {(f.node, f.rule) for f in errors(findings)} == {
        ("q_x", "qdq-zero-point"),
        ("dq_x", "qdq-zero-point"),
    }
    with pytest.raises(
        BuildError, match=r"node 'q_x' \(QuantizeLinear\): asymmetric.*zero point 3"
    ):
        require_buildable(findings)


def test_weight_scale_must_run_along_output_channels(tmp_path: Path) -> None:
    path = conv_policy(tmp_path / "m.onnx", precision="int8", weight_axis=1)  # input channels
    found = [f for f in check_model(path, precision="int8") if f.rule == "qdq-granularity"]
    assert found and "axis 1" in found[0].reason and "'conv' are axis 0" in found[0].reason


def test_per_channel_activation_scale_is_refused() -> None:
    inits = [
        numpy_helper.from_array(np.full(3, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.zeros(3, np.int8), "z"),
    ]
    m = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], "q", axis=1),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq", axis=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    found = {f.node: f.reason for f in errors(check_model(m, precision="int8"))}
    assert "activations per-tensor only" in found["q"]


def test_qdq_pairs_and_strong_types() -> None:
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    m = _model(
        [
            helper.make_node("Cast", ["x"], ["h"], "to_half", to=TensorProto.FLOAT16),
            helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"], "q_half"),
            helper.make_node("Cast", ["q"], ["y"], "not_a_dq", to=TensorProto.FLOAT),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    rules = {(f.node, f.rule) for f in errors(check_model(m, precision="int8"))}
    assert ("q_half", "qdq-pair") in rules
    assert ("q_half", "qdq-strongly-typed") in rules


def test_dynamic_dims(tmp_path: Path) -> None:
    batch = conv_policy(tmp_path / "b.onnx", batch="batch")
    no_profile = errors(check_model(batch))
    assert len(no_profile) == 1 and "no dynamic_batch" in no_profile[0].reason
    assert errors(check_model(batch, dynamic_batch=(1, 4, 8))) == []
    other = conv_policy(tmp_path / "h.onnx", batch="batch", height="h")
    found = errors(check_model(other, dynamic_batch=(1, 4, 8)))
    assert [(f.node, f.op) for f in found] == [("x", "input")]
    assert "dim 2 ('h') is dynamic" in found[0].reason
    with pytest.raises(BuildError, match=r"input 'x': dim 2 \('h'\) is dynamic"):
        require_buildable(found)
    static = conv_policy(tmp_path / "s.onnx")
    assert (
        "no input has a symbolic dim 0"
        in errors(check_model(static, dynamic_batch=(1, 2, 4)))[0].reason
    )
    with pytest.raises(InputError, match="min <= opt <= max"):
        check_model(batch, dynamic_batch=(4, 2, 8))


def test_precision_must_match_the_onnx_types(tmp_path: Path) -> None:
    fp32 = conv_policy(tmp_path / "a.onnx")
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16")
    int8 = conv_policy(tmp_path / "c.onnx", precision="int8")
    assert "float16 pass" in errors(check_model(fp32, precision="fp16"))[0].reason
    assert "int8-static-trt" in errors(check_model(fp32, precision="int8"))[0].reason
    assert "computes in float16" in errors(check_model(fp16, precision="fp32"))[0].reason
    assert "build it as int8" in errors(check_model(int8, precision="fp32"))[0].reason


def test_dla_rules(tmp_path: Path) -> None:
    fp32 = conv_policy(tmp_path / "a.onnx")
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16", batch="n")
    assert "FP16 and INT8 only" in errors(check_model(fp32, dla_core=0))[0].reason
    assert errors(check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(2, 2, 2))) == []
    warn = check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(1, 2, 4))
    assert [f.rule for f in warn if f.severity == WARNING] == ["dla"]
    gone = errors(
        check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(2, 2, 2), trt_version="11.1")
    )
    assert "not available in TensorRT 11.1" in gone[0].reason
    assert dla_supported("10.3.0") and dla_supported("10.7") and not dla_supported("10.8")
    assert not dla_supported("11.3.0") and dla_supported("11.4.1")


def test_corrupt_model_is_a_build_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BuildError, match="cannot read"):
        check_model(bad)


# --- deferred builds (no TensorRT, no GPU) ----------------------------------------------------


def test_availability_needs_tensorrt_and_a_gpu(
    no_trt: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = get_backend("tensorrt")
    ok, why = b.availability()
    assert not ok and "pip install" in why and "python3-libnvinfer" in why
    with pytest.raises(BackendUnavailableError):
        b.require()
    # tensorrt importable but no GPU: still unavailable, and the reason says so
    trt, _ = fake_tensorrt.make()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    ok, why = b.availability()
    assert not ok and "cuda-python" in why
    cudart, _ = fake_tensorrt.make_cudart(devices=0)
    monkeypatch.setattr(trt_backend, "_cudart", lambda: cudart)
    ok, why = b.availability()
    assert not ok and "no CUDA GPU" in why


def build_deferred(tmp_path: Path, model: Path, prof: Any = None, **opts: Any):
    backend = trt_backend.TensorRTBackend().configure(dla_core=opts.pop("dla_core", None))
    return backend.build(model, prof or profile(), BuildOptions(**opts), tmp_path / "engine")


def test_deferred_build_is_complete_and_self_describing(tmp_path: Path, no_trt: None) -> None:
    model = conv_policy(tmp_path / "m.onnx", batch="batch", precision="fp16", sparsity="2:4")
    art = build_deferred(tmp_path, model, precision="fp16", dynamic_batch=(1, 4, 8), dla_core=0)
    assert art.backend == "tensorrt"
    assert set(art.files) == {"model.onnx", "build.json", "trtexec.sh"}
    assert (art.root / "model.onnx").read_bytes() == model.read_bytes()
    cfg = art.config
    assert cfg["deferred"] is True and "tensorrt is not installed" in cfg["deferred_reason"]
    assert cfg["model"] == "model.onnx" and cfg["recipe"] == "build.json"
    assert cfg["sparse_weights"] is True and cfg["dla_core"] == 0 and cfg["precision"] == "fp16"
    assert not any(k == "tensorrt_version" for k in cfg)  # nothing was built with any version

    recipe = json.loads((art.root / "build.json").read_text())
    assert {
        "precision",
        "strongly_typed",
        "network_flags",
        "builder_flags",
        "sparsity",
        "dla",
        "optimization_profile",
        "workspace_mib",
        "timing_cache",
        "tensorrt",
        "target",
        "trtexec",
        "onnx_sha256",
    } <= set(recipe)
    assert recipe["strongly_typed"] is True and recipe["network_flags"] == ["STRONGLY_TYPED"]
    assert recipe["builder_flags"] == ["SPARSE_WEIGHTS", "GPU_FALLBACK"]
    assert recipe["dla"] == {"core": 0, "gpu_fallback": True}
    assert recipe["optimization_profile"] == {
        "x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}
    }
    assert recipe["target"] == {
        "profile": "jetson-orin-test",
        "gpu": "Orin",
        "sm": "sm_87",
        "sparse_tensor_cores": True,
    }
    assert recipe["tensorrt"]["checked_against"] == "10.3" and recipe["workspace_mib"] == 1024

    line = recipe["trtexec"]
    assert line == cfg["trtexec_command"]
    for flag in (
        "trtexec --onnx=model.onnx",
        "--saveEngine=model.engine",
        "--stronglyTyped",
        "--noTF32",
        "--memPoolSize=workspace:1024",
        "--sparsity=enable",
        "--useDLACore=0",
        "--allowGPUFallback",
        "--minShapes=x:1x3x8x8",
        "--optShapes=x:4x3x8x8",
        "--maxShapes=x:8x3x8x8",
        "--timingCacheFile=timing.cache",
        "--skipInference",
    ):
        assert flag in line, flag
    assert "--fp16" not in line and "--int8" not in line and "--best" not in line
    script = art.root / "trtexec.sh"
    assert script.stat().st_mode & stat.S_IXUSR and line in script.read_text()


def test_deferred_int8_and_plain_fp32_lines(tmp_path: Path, no_trt: None) -> None:
    int8 = build_deferred(
        tmp_path / "a", conv_policy(tmp_path / "a.onnx", precision="int8"), precision="int8"
    )
    line = int8.config["trtexec_command"]
    assert "--int8" not in line and "--sparsity" not in line and "Shapes" not in line
    assert "DLACore" not in line and int8.config["precision"] == "int8"
    fp32 = build_deferred(tmp_path / "b", conv_policy(tmp_path / "b.onnx"))
    assert json.loads((fp32.root / "build.json").read_text())["builder_flags"] == []


def test_sparse_weights_need_a_sparse_gpu_and_a_2_4_model(tmp_path: Path, no_trt: None) -> None:
    sparse = conv_policy(tmp_path / "s.onnx", sparsity="2:4")
    dense = conv_policy(tmp_path / "d.onnx")
    no_cores = build_deferred(tmp_path / "a", sparse, profile(sparse=False))
    recipe = json.loads((no_cores.root / "build.json").read_text())
    assert recipe["sparsity"]["sparse_weights"] is False
    assert "does not list sparse tensor cores" in recipe["sparsity"]["why"]
    assert "--sparsity" not in recipe["trtexec"]
    assert build_deferred(tmp_path / "b", dense).config["sparse_weights"] is False
    assert build_deferred(tmp_path / "c", sparse).config["sparse_weights"] is True
    bare = SimpleNamespace(name="x86", backend_options={})  # a profile without a GPU table
    assert build_deferred(tmp_path / "d", sparse, bare).config["sparse_weights"] is False


def test_bad_requests_fail_before_anything_is_written(tmp_path: Path, no_trt: None) -> None:
    model = conv_policy(tmp_path / "m.onnx")
    with pytest.raises(BuildError, match="int3"):
        build_deferred(tmp_path, model, precision="int3")
    with pytest.raises(InputError, match="has no DLA core"):
        build_deferred(tmp_path, model, profile(dla_cores=0), precision="fp16", dla_core=0)
    with pytest.raises(BuildError, match="TensorRT pre-flight: model: precision fp16"):
        build_deferred(tmp_path, model, precision="fp16")
    assert not (tmp_path / "engine").exists()


def test_runner_refuses_a_deferred_artifact(tmp_path: Path, no_trt: None) -> None:
    art = build_deferred(tmp_path, conv_policy(tmp_path / "m.onnx"))
    assert trt_backend.is_deferred(art)
    with pytest.raises(BackendUnavailableError, match="holds a deferred TensorRT build"):
        get_backend("tensorrt").runner(art)


# --- the builder against the strict fake ------------------------------------------------------


def test_fake_is_strict(fake: SimpleNamespace) -> None:
    trt = fake.trt
    for name in ("platform_has_fast_fp16", "EXPLICIT_BATCH", "build_engine"):
        with pytest.raises(AttributeError):
            getattr(trt, name)
    with pytest.raises(AttributeError):
        trt.BuilderFlag.FP16  # noqa: B018 - removed in TensorRT 11, invalid when strongly typed
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError):
        config.DLA_cores = 1  # a typo of DLA_core


def test_builder_calls(tmp_path: Path, fake: SimpleNamespace, cache: Path) -> None:
    model = conv_policy(tmp_path / "m.onnx", precision="fp16", sparsity="2:4")
    art = build_deferred(tmp_path, model, precision="fp16")
    rec = fake.rec
    assert rec.network_flags == [1 << 1]  # STRONGLY_TYPED is flag 1 in TensorRT 10
    assert rec.flags_set == ["SPARSE_WEIGHTS"] and rec.flags_cleared == ["TF32"]
    assert rec.memory_pool_limits == {"WORKSPACE": 1024 << 20}
    assert rec.default_device_type is None and rec.dla_core is None and rec.profiles == []
    key = "orin-sm87-trt10.3.0"
    cfg = art.config
    assert "deferred" not in cfg
    assert cfg["model"] == f"model.{key}.engine" and cfg["engine_key"] == key
    assert (cfg["gpu"], cfg["compute_capability"], cfg["tensorrt_version"]) == (
        "Orin",
        "8.7",
        "10.3.0",
    )
    assert set(art.files) == {f"model.{key}.engine", "build.json"}
    assert cfg["io"] == [
        {"name": "x", "mode": "input", "dtype": "float32", "shape": [1, 3, 8, 8]},
        {"name": "y", "mode": "output", "dtype": "float32", "shape": [1, 2]},
    ]
    body = json.loads((art.root / cfg["model"]).read_bytes()[len(fake_tensorrt.ENGINE_MAGIC) :])
    assert body["strongly_typed"] and body["flags"] == ["SPARSE_WEIGHTS"]

    # the timing cache is persisted per GPU + TensorRT version and reused by the next build
    tcache = cache / "tensorrt" / f"timing-{key}.cache"
    assert Path(cfg["timing_cache"]) == tcache and tcache.is_file()
    assert rec.timing_cache_created_from == [b""] and rec.timing_cache_serialized == 1
    assert rec.timing_cache_set == [False] and cfg["timing_cache_reused"] is False
    saved = tcache.read_bytes()
    again = build_deferred(tmp_path / "again", model, precision="fp16")
    assert rec.timing_cache_created_from[-1] == saved and saved.startswith(
        fake_tensorrt.CACHE_MAGIC
    )
    assert again.config["timing_cache_reused"] is True and rec.timing_cache_serialized == 2


def test_no_sparse_weights_on_a_gpu_without_sparse_tensor_cores(
    tmp_path: Path, fake: SimpleNamespace
) -> None:
    model = conv_policy(tmp_path / "m.onnx", sparsity="2:4")
    build_deferred(tmp_path, model, profile(sparse=False))
    assert "SPARSE_WEIGHTS" not in fake.rec.flags_set


def test_dla_and_dynamic_batch(tmp_path: Path, fake: SimpleNamespace) -> None:
    model = conv_policy(tmp_path / "m.onnx", precision="fp16", batch="batch")
    art = build_deferred(tmp_path, model, precision="fp16", dla_core=1, dynamic_batch=(2, 2, 2))
    rec = fake.rec
    assert rec.default_device_type == "DLA" and rec.dla_core == 1
    assert rec.flags_set == ["GPU_FALLBACK"]
    assert rec.profiles == [{"x": ((2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))}]
    assert art.config["dla_core"] == 1
    dyn = build_deferred(tmp_path / "dyn", model, precision="fp16", dynamic_batch=(1, 4, 8))
    assert rec.profiles[-1] == {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    assert dyn.config["optimization_profile"]["x"]["max"] == [8, 3, 8, 8]


def test_tensorrt_11_same_code_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    f = install_fake(monkeypatch, "11.1.0")
    model = conv_policy(tmp_path / "m.onnx", precision="int8")
    art = build_deferred(tmp_path, model, precision="int8")
    assert f.rec.network_flags == [1 << 0]  # STRONGLY_TYPED is flag 0 in TensorRT 11
    assert art.config["engine_key"] == "orin-sm87-trt11.1.0"
    fp16 = conv_policy(tmp_path / "h.onnx", precision="fp16")
    with pytest.raises(BuildError, match="no DLA"):  # DLA left 10.x after 10.7 (back in 11.4.1)
        build_deferred(tmp_path / "dla", fp16, precision="fp16", dla_core=0)


def test_parser_and_builder_failures_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    model = conv_policy(tmp_path / "m.onnx")
    install_fake(monkeypatch, parse_errors=[("conv", "Invalid weights\ntype"), ("fc", "x")])
    with pytest.raises(BuildError) as info:
        build_deferred(tmp_path / "a", model)
    assert str(info.value) == (
        "TensorRT 10.3.0's ONNX parser rejected the model: conv: Invalid weights type "
        "(and 1 more parser error(s))."
    )
    install_fake(monkeypatch, build_fails=True)
    with pytest.raises(
        BuildError, match="could not build the engine: fake builder: no implementation"
    ):
        build_deferred(tmp_path / "b", model)


def test_runner_binds_tensors_by_name_and_shape(tmp_path: Path, fake: SimpleNamespace) -> None:
    model = conv_policy(tmp_path / "m.onnx", batch="batch")
    art = build_deferred(tmp_path, model, dynamic_batch=(1, 2, 4))
    backend = get_backend("tensorrt")
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with backend.runner(art) as r:
        assert r.input_names == ["x"] and r.output_names == ["y"]
        out = r.infer({"x": x})
        assert out["y"].shape == (3, 2) and out["y"].dtype == np.float32
        assert np.all(out["y"] == 0.5)  # what the fake engine writes
        assert fake.rec.input_shapes[-1] == ("x", (3, 3, 8, 8))
        assert set(fake.rec.addresses) == {"x", "y"}
        assert r.bind({"x": x})() is not None  # the contract asks bind()() for a result
        with pytest.raises(InputError, match="missing input"):
            r.infer({})
    assert fake.crec.copies.count(("cudaMemcpyHostToDevice", x.nbytes)) == 2
    assert len(fake.crec.frees) == len(fake.crec.mallocs)  # every buffer freed on exit


def test_runner_refuses_an_engine_from_another_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    install_fake(monkeypatch)
    art = build_deferred(tmp_path, conv_policy(tmp_path / "m.onnx"))
    install_fake(monkeypatch, gpu=b"NVIDIA GeForce RTX 4090")
    with pytest.raises(BackendUnavailableError, match="do not move between GPUs"):
        get_backend("tensorrt").runner(art).__enter__()


@pytest.mark.may_skip
def test_real_engine_matches_onnxruntime(tmp_path: Path) -> None:
    ok, why = get_backend("tensorrt").availability()
    if not ok:
        pytest.skip(f"needs TensorRT >= 10 and a CUDA GPU: {why}")
    import onnxruntime as ort

    model = conv_policy(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    art = build_deferred(tmp_path, model)
    with get_backend("tensorrt").runner(art) as r:
        assert np.allclose(r.infer({"x": x})["y"], ref, atol=1e-4, rtol=1e-3)


# --- robopt-bench on a deferred bundle --------------------------------------------------------


def write_deferred_bundle(out: Path, model: Path, precision: str = "fp32") -> Path:
    """A bundle laid out as the compile pipeline writes it, holding a deferred build."""
    import onnxruntime as ort

    from robopt_compile.compile.bundle import hash_tree, tool_versions

    out.mkdir(parents=True)
    shutil.copyfile(model, out / "model.onnx")
    with pytest.MonkeyPatch.context() as mp:
        force_no_tensorrt(mp)
        art = trt_backend.TensorRTBackend().build(
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


@pytest.fixture
def bundle(tmp_path: Path, cache: Path) -> Path:
    return write_deferred_bundle(tmp_path / "bundle", conv_policy(tmp_path / "m.onnx"))


def test_bench_without_tensorrt_is_one_line(bundle: Path, no_trt: None) -> None:
    from click.testing import CliRunner

    from robopt_compile.bench.cli import main
    from robopt_compile.bench.harness import run_benchmark

    with pytest.raises(BackendUnavailableError) as info:
        run_benchmark(bundle, runs=1, warmup=0)
    msg = str(info.value)
    assert msg.startswith(
        "this bundle holds a deferred TensorRT build; run robopt-bench on the device with "
        "TensorRT installed (JetPack 6: python3-libnvinfer) or run `cd "
    )
    assert "&& trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped" in msg
    assert "(here: tensorrt is not installed" in msg
    r = CliRunner().invoke(main, [str(bundle)])
    assert r.exit_code == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "deferred TensorRT build" in lines[0]


def test_bench_builds_once_into_the_cache_and_reuses_it(
    bundle: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robopt_compile.bench.harness import _open_bundle

    f = install_fake(monkeypatch)
    first = _open_bundle(bundle, verify=True)
    assert first.build_ms is not None and f.rec.builds == 1
    folder = first.artifact.root
    assert folder.parent == cache / "engines" and folder.name.endswith("-orin-sm87-trt10.3.0")
    assert first.artifact.config["engine_key"] == "orin-sm87-trt10.3.0"
    assert (folder / first.artifact.config["model"]).is_file()
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # atomic: no leftovers

    second = _open_bundle(bundle, verify=True)
    assert second.build_ms is None and f.rec.builds == 1 and second.artifact.root == folder

    # another GPU never reuses it: it builds its own engine under its own key
    g = install_fake(monkeypatch, gpu=b"Jetson AGX Thor")
    third = _open_bundle(bundle, verify=True)
    assert g.rec.builds == 1 and third.artifact.root != folder
    assert third.artifact.config["engine_key"].startswith("jetson-agx-thor-")

    # a truncated cached engine is rebuilt, not loaded
    install_fake(monkeypatch)
    engine = folder / first.artifact.config["model"]
    engine.write_bytes(engine.read_bytes()[:10])
    fourth = _open_bundle(bundle, verify=True)
    assert fourth.build_ms is not None and fourth.artifact.root == folder


def test_bench_runs_the_built_engine(bundle: Path, fake: SimpleNamespace) -> None:
    from robopt_compile.bench.harness import run_benchmark

    r = run_benchmark(bundle, runs=5, warmup=1)
    assert r["backend"] == "tensorrt" and r["latency"]["n"] == 5
    assert r["timing"]["engine_build_ms"] > 0 and r["timing"]["bundle_check_ms"] >= 0
    assert r["machine"]["runtime_version_at_build"] == "10.3.0"
    assert r["fidelity"]["passed"] is False  # the fake engine writes 0.5, not the policy's output
    assert fake.rec.executions >= 7
    again = run_benchmark(bundle, runs=2, warmup=0)
    assert again["timing"]["engine_build_ms"] is None and fake.rec.builds == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("onnx", "../model.onnx"), ("onnx", "/etc/hostname"), ("onnx_external_data", ["../x"])],
)
def test_deferred_recipe_cannot_name_a_file_outside_the_engine(
    bundle: Path, fake: SimpleNamespace, key: str, value: Any
) -> None:
    """build.json is hashed, but a hand-made bundle hashes what it likes: the recipe's ONNX
    and its external data must be listed files of the engine folder (issue 15, defect 1)."""
    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.compile.bundle import hash_tree

    recipe = json.loads((bundle / "engine" / "build.json").read_text())
    recipe[key] = value
    (bundle / "engine" / "build.json").write_text(json.dumps(recipe))
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = hash_tree(bundle)
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=rf"build\.json: {key} .* is not"):
        run_benchmark(bundle, runs=1, warmup=0)
    assert fake.rec.builds == 0


def test_bench_modules_import_without_tensorrt_or_onnx() -> None:
    code = (
        "import sys\n"
        "import robopt_compile.bench.harness, robopt_compile.bench.deferred\n"
        "import robopt_compile.targets.tensorrt\n"
        "bad = [m for m in ('tensorrt', 'onnx', 'onnx_ir', 'torch', 'cuda') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ})


def test_local_functions_are_checked_through_their_bodies() -> None:
    fn = helper.make_function(
        "robopt.local",
        "Block",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["t"]), helper.make_node("Unique", ["t"], ["b"], "inner")],
        [helper.make_opsetid("", 17)],
    )
    m = _model(
        [helper.make_node("Block", ["x"], ["y"], "call", domain="robopt.local")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("robopt.local", 1))
    assert [(f.node, f.op) for f in errors(check_model(m))] == [("inner", "Unique")]


def test_recipe_reads_the_real_board_profiles(tmp_path: Path, no_trt: None) -> None:
    from robopt_compile.hwprofiles import load_profile, profile_names

    model = conv_policy(tmp_path / "m.onnx", precision="fp16", sparsity="2:4")
    for name in profile_names():
        prof = load_profile(name)
        gpu = getattr(prof, "gpu", None)
        if "tensorrt" not in prof.backends or gpu is None:
            continue
        art = build_deferred(tmp_path / name, model, prof, precision="fp16")
        target = json.loads((art.root / "build.json").read_text())["target"]
        assert target["profile"] == name and target["sm"] == getattr(gpu.sm, "value", None)
        sparse = getattr(gpu.sparse_tensor_cores, "value", False) is True
        assert target["sparse_tensor_cores"] is sparse and art.config["sparse_weights"] is sparse


def test_dla_without_gpu_fallback_when_the_profile_says_so(
    tmp_path: Path, fake: SimpleNamespace
) -> None:
    model = conv_policy(tmp_path / "m.onnx", precision="fp16")
    art = build_deferred(tmp_path, model, profile(gpu_fallback=False), precision="fp16", dla_core=0)
    assert fake.rec.default_device_type == "DLA" and "GPU_FALLBACK" not in fake.rec.flags_set
    assert art.config["builder_flags"] == []


def test_external_data_travels_with_the_deferred_build(tmp_path: Path, no_trt: None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = onnx.load(str(conv_policy(tmp_path / "m.onnx", precision="int8")))
    onnx.save(m, str(src / "big.onnx"), save_as_external_data=True, location="big.onnx.data",
              size_threshold=0)  # fmt: skip
    art = build_deferred(tmp_path, src / "big.onnx", precision="int8")
    assert "big.onnx.data" in art.files
    assert json.loads((art.root / "build.json").read_text())["onnx_external_data"] == [
        "big.onnx.data"
    ]
    copied = onnx.load(str(art.root / "model.onnx"))  # loads its data from the copied file
    assert len(copied.graph.initializer) == len(m.graph.initializer)
    (src / "big.onnx.data").unlink()
    with pytest.raises(BuildError, match=r"not next to it|external data"):
        build_deferred(tmp_path / "again", src / "big.onnx", precision="int8")
