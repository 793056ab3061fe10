"""The TensorRT engine build against ``fake_tensorrt``, a strict fake of the documented API: the
builder calls, flags, DLA, profiles, timing cache, TensorRT 11, one-line failures."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import fake_tensorrt
import pytest
from tensorrt_helpers import build_deferred, conv_policy, install_fake, profile

from robopt_compile.errors import BuildError


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


def test_dla_without_gpu_fallback_when_the_profile_says_so(
    tmp_path: Path, fake: SimpleNamespace
) -> None:
    model = conv_policy(tmp_path / "m.onnx", precision="fp16")
    art = build_deferred(tmp_path, model, profile(gpu_fallback=False), precision="fp16", dla_core=0)
    assert fake.rec.default_device_type == "DLA" and "GPU_FALLBACK" not in fake.rec.flags_set
    assert art.config["builder_flags"] == []
