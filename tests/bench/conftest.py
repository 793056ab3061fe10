"""Real bundles for the harness tests, built the way docs/BUNDLE.md describes.

A tiny two-input, two-output policy is exported once per session with the dynamo exporter and
built into engines by the real backends; reference outputs come from torch, as in a compiled
bundle. Tests that tamper with a bundle work on a copy (``bundle_copy``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robopt_compile.compile.bundle import tool_versions

TOLERANCE = {"cosine_min": 0.9999, "atol": 1e-4, "rtol": 1e-3}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(bundle: Path) -> None:
    """Recompute ``files`` in the manifest after a test edits a bundle on purpose."""
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"] = {
        p.relative_to(bundle).as_posix(): sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    mpath.write_text(json.dumps(manifest, indent=2))


def edit_manifest(bundle: Path, **changes: Any) -> None:
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest.update(changes)
    mpath.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny policy as ONNX plus torch reference inputs and outputs."""
    torch = pytest.importorskip("torch", reason="building test bundles needs torch")
    nn = torch.nn

    class TinyPolicy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(12, 5)

        def forward(self, image: torch.Tensor, state: torch.Tensor):
            feat = torch.relu(self.conv(image)).mean(dim=(2, 3))
            h = torch.cat([feat, state], dim=1)
            return torch.tanh(self.fc(h)), h.sum(dim=1, keepdim=True)

    torch.manual_seed(0)
    model = TinyPolicy().eval()
    image, state = torch.randn(1, 3, 16, 16), torch.randn(1, 4)
    path = tmp_path_factory.mktemp("source") / "tiny.onnx"
    torch.onnx.export(
        model,
        (image, state),
        str(path),
        input_names=["image", "state"],
        output_names=["action", "value"],
        dynamo=True,
        external_data=False,
    )
    with torch.no_grad():
        action, value = model(image, state)
    return {
        "onnx": path,
        "inputs": {"image": image.numpy(), "state": state.numpy()},
        "outputs": {"action": action.numpy(), "value": value.numpy()},
    }


def write_bundle(out: Path, backend_name: str, source: dict[str, Any]) -> Path:
    """A complete bundle folder for ``backend_name`` (the compile side's layout)."""
    from robopt_compile.targets import BuildOptions, get_backend

    backend = get_backend(backend_name)
    out.mkdir(parents=True)
    shutil.copy(source["onnx"], out / "model.onnx")
    artifact = backend.build(out / "model.onnx", None, BuildOptions(threads=1), out / "engine")
    (out / "reference").mkdir()
    np.savez(out / "reference" / "inputs.npz", **source["inputs"])
    np.savez(out / "reference" / "outputs.npz", **source["outputs"])

    def tensors(d: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in d.items()]

    manifest = {
        "schema_version": 1,
        "robopt_version": "0.1.0",
        "created_utc": "2025-01-01T00:00:00Z",
        "model": {"name": "tiny-policy", "source": "test", "source_kind": "factory"},
        "inputs": tensors(source["inputs"]),
        "outputs": tensors(source["outputs"]),
        "target": {"profile": "host", "arch": "x86_64", "description": "test host"},
        "backend": backend_name,
        "precision": "fp32",
        "engine": {**artifact.to_json(), "dir": "engine"},
        "files": {},
        "tool_versions": tool_versions(),
        "parity": {},
        "reference": {
            "inputs": "reference/inputs.npz",
            "outputs": "reference/outputs.npz",
            "tolerance": TOLERANCE,
        },
        "build": {"threads": 1, "dynamic_batch": False, "opset": 20},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rehash(out)
    return out


@pytest.fixture(scope="session")
def ort_bundle(tmp_path_factory: pytest.TempPathFactory, source: dict[str, Any]) -> Path:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    return write_bundle(tmp_path_factory.mktemp("ort") / "bundle", "onnxruntime", source)


@pytest.fixture(scope="session")
def ov_bundle(tmp_path_factory: pytest.TempPathFactory, source: dict[str, Any]) -> Path:
    pytest.importorskip("openvino", reason="openvino is not installed")
    return write_bundle(tmp_path_factory.mktemp("ov") / "bundle", "openvino", source)


@pytest.fixture(
    params=["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)],
)
def bundle(request: pytest.FixtureRequest) -> Path:
    """Each backend's bundle in turn (read-only: copy it before editing)."""
    return request.getfixturevalue("ort_bundle" if request.param == "onnxruntime" else "ov_bundle")


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a session bundle so a test can break it."""

    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / "bundle"))

    return copy


@pytest.fixture(name="rehash")
def rehash_fixture() -> Callable[[Path], None]:
    """``rehash(bundle)``: make ``files`` match a bundle a test edited on purpose."""
    return rehash


@pytest.fixture(name="edit_manifest")
def edit_manifest_fixture() -> Callable[..., None]:
    """``edit_manifest(bundle, key=value, ...)``: overwrite top-level manifest keys."""
    return edit_manifest
