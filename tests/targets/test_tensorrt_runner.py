"""The TensorRT runner: the shared backend contract and a real engine against ONNX Runtime (both
skip, with the reason, without TensorRT and a CUDA GPU), and the runner's tensor handling and GPU
check against the fake TensorRT and cuda-python."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from contract import BackendContract
from tensorrt_helpers import build_deferred, conv_policy, install_fake

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.targets import get_backend


@pytest.mark.may_skip
class TestTensorRT(BackendContract):
    """The shared contract; it skips (with the reason) without TensorRT and a CUDA GPU."""

    name = "tensorrt"


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
