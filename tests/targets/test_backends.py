"""The backend contract (tests/targets/contract.py) for ONNX Runtime and OpenVINO, and the
registry."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from contract import BackendContract

from robopt_compile.errors import BuildError, UnknownNameError
from robopt_compile.hwprofiles import load_profile
from robopt_compile.targets import TARGETS, BuildOptions, get_backend


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
