"""TensorRT recipes and deferred builds, where there is no TensorRT and no GPU: availability, the
files and ``build.json`` keys, the trtexec line, sparsity and DLA requests, the real board
profiles, external data."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import fake_tensorrt
import onnx
import pytest
from tensorrt_helpers import build_deferred, conv_policy, profile

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
from robopt_compile.targets import get_backend
from robopt_compile.targets.tensorrt import is_deferred, probe


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
    monkeypatch.setattr(probe, "load_cudart", lambda: cudart)
    ok, why = b.availability()
    assert not ok and "no CUDA GPU" in why


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
    assert is_deferred(art)
    with pytest.raises(BackendUnavailableError, match="holds a deferred TensorRT build"):
        get_backend("tensorrt").runner(art)


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
