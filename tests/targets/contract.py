"""The contract every backend meets, subclassed per backend in its own test module (NNCF's
template-test pattern): a tiny model fixture and the ``BackendContract`` class."""

from __future__ import annotations

import numpy as np
import pytest

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
from robopt_compile.hwprofiles import load_profile
from robopt_compile.targets import Artifact, BuildOptions, get_backend


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
