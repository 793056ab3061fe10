"""One contract every backend meets, subclassed per backend (NNCF's template-test pattern)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError, UnknownNameError
from robopt_compile.hwprofiles import load_profile
from robopt_compile.targets import TARGETS, Artifact, BuildOptions, get_backend


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A small conv+gemm ONNX model, its inputs and torch's outputs."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()
    x = torch.rand(2, 3, 20, 20)
    path = tmp_path_factory.mktemp("tiny") / "m.onnx"
    torch.onnx.export(
        m, (x,), str(path), dynamo=True, verbose=False, input_names=["x"], output_names=["y"]
    )
    with torch.no_grad():
        ref = m(x).numpy()
    return path, {"x": x.numpy()}, {"y": ref}


class BackendContract:
    """What every backend must do; subclasses set ``name``."""

    name = ""

    @pytest.fixture()
    def backend(self):
        b = get_backend(self.name)
        ok, why = b.availability()
        if not ok:
            pytest.skip(f"{self.name} runtime not installed here: {why}")
        return b

    @pytest.fixture()
    def artifact(self, backend, tiny_model, tmp_path) -> Artifact:
        path, _, _ = tiny_model
        return backend.build(path, load_profile("host"), BuildOptions(threads=1), tmp_path / "e")

    def test_build_writes_listed_files(self, artifact, tmp_path):
        assert artifact.backend == self.name
        assert artifact.files
        for f in artifact.files:
            assert (artifact.root / f).is_file()

    def test_runner_matches_torch(self, backend, artifact, tiny_model):
        _, feeds, ref = tiny_model
        with backend.runner(artifact, threads=1) as r:
            assert r.input_names == ["x"] and r.output_names == ["y"]
            out = r.infer(feeds)
            assert np.allclose(out["y"], ref["y"], atol=1e-4, rtol=1e-4)
            out2 = r.infer(feeds)
            assert out2["y"] is not out["y"]  # outputs are not reused buffers
            assert np.array_equal(out["y"], out2["y"])
            assert r.bind(feeds)() is not None

    def test_artifact_json_round_trip(self, backend, artifact, tiny_model):
        _, feeds, ref = tiny_model
        again = Artifact.from_json(artifact.to_json(), artifact.root)
        with backend.runner(again, threads=1) as r:
            assert np.allclose(r.infer(feeds)["y"], ref["y"], atol=1e-4)

    def test_missing_input_is_a_clear_error(self, backend, artifact):
        with backend.runner(artifact) as r, pytest.raises(InputError, match="missing input"):
            r.infer({})

    def test_infer_outside_with_block_fails(self, backend, artifact, tiny_model):
        r = backend.runner(artifact)
        with pytest.raises(RuntimeError, match="outside"):
            r.infer(tiny_model[1])

    def test_unsupported_precision_is_refused(self, backend, tiny_model, tmp_path):
        with pytest.raises(BuildError, match="int3"):
            backend.build(
                tiny_model[0], load_profile("host"), BuildOptions(precision="int3"), tmp_path / "e"
            )

    def test_corrupt_model_fails_the_build(self, backend, tmp_path):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx at all")
        with pytest.raises(BuildError):
            backend.build(bad, load_profile("host"), BuildOptions(), tmp_path / "e")

    def test_missing_runtime_is_reported(self, backend, monkeypatch):
        monkeypatch.setattr(type(backend), "runtime_module", "no_such_runtime_xyz")
        ok, why = backend.availability()
        assert not ok and "pip install" in why
        with pytest.raises(BackendUnavailableError):
            backend.require()


class TestOnnxRuntime(BackendContract):
    name = "onnxruntime"


class TestOpenVino(BackendContract):
    name = "openvino"

    def test_fp32_pins_f32_hint(self, artifact):
        # OpenVINO defaults to bf16 on AVX-512-BF16/AMX CPUs; fp32 must say f32 explicitly.
        assert artifact.config["inference_precision_hint"] == "f32"

    def test_bf16_hint(self, backend, tiny_model, tmp_path):
        art = backend.build(
            tiny_model[0], load_profile("host"), BuildOptions(precision="bf16"), tmp_path / "e"
        )
        assert art.config["inference_precision_hint"] == "bf16"

    def _profile(self, **ov_opts):
        import dataclasses
        from types import MappingProxyType

        return dataclasses.replace(
            load_profile("x86-64-avx512"), backend_options=MappingProxyType({"openvino": ov_opts})
        )

    def test_compiled_model_cache_is_used(
        self, backend, artifact, tiny_model, tmp_path, monkeypatch
    ):
        monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
        with backend.runner(artifact, threads=1) as r:
            r.infer(tiny_model[1])
        blobs = list((tmp_path / "cache" / "openvino").iterdir())
        assert blobs, "OpenVINO wrote no compiled blob to CACHE_DIR"
        with backend.runner(artifact, threads=1) as r:  # a second start loads the blob
            assert np.allclose(r.infer(tiny_model[1])["y"], tiny_model[2]["y"], atol=1e-4)
        assert sorted(p.name for p in (tmp_path / "cache" / "openvino").iterdir()) == sorted(
            p.name for p in blobs
        )

    def test_device_missing_here_is_converted_not_compiled(self, backend, tiny_model, tmp_path):
        art = backend.build(
            tiny_model[0], self._profile(device="NPU"), BuildOptions(), tmp_path / "e"
        )
        assert art.config["device"] == "NPU" and art.config["compile_checked"] is False
        assert "first start" in art.config["compile_note"]

    def test_performance_hint_from_profile(self, backend, tiny_model, tmp_path):
        art = backend.build(
            tiny_model[0], self._profile(performance_hint="throughput"), BuildOptions(),
            tmp_path / "e",
        )  # fmt: skip
        assert art.config["performance_hint"] == "THROUGHPUT"
        with pytest.raises(BuildError, match="performance_hint"):
            backend.build(
                tiny_model[0], self._profile(performance_hint="fast"), BuildOptions(),
                tmp_path / "e2",
            )  # fmt: skip


def test_every_registered_backend_has_a_contract_test():
    tested = {c.name for c in BackendContract.__subclasses__()}
    assert tested == set(TARGETS)


def test_unknown_backend():
    with pytest.raises(UnknownNameError, match="onnxruntime"):
        get_backend("onnxrt")


def test_runner_modules_import_without_compile_stack():
    import subprocess

    code = (
        "import sys, robopt_compile.targets.onnxruntime, robopt_compile.targets.openvino\n"
        "bad = [m for m in ('torch','onnx','onnx_ir','openvino','onnxruntime') "
        "if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
