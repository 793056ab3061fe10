"""Manifest checks on hand-made bundle folders (no engine build needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from robopt_compile.bench.manifest import load_manifest, sha256_file
from robopt_compile.errors import InputError


def fake_bundle(root: Path) -> Path:
    """A bundle whose files are stand-ins; enough for everything the manifest reader checks."""
    files = {
        "engine/model.ort-opt.onnx": b"engine bytes" * 100,
        "reference/inputs.npz": b"in",
        "reference/outputs.npz": b"out",
        "model.onnx": b"model",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = {
        "schema_version": 1,
        "backend": "onnxruntime",
        "engine": {
            "backend": "onnxruntime",
            "dir": "engine",
            "files": ["model.ort-opt.onnx"],
            "config": {"model": "model.ort-opt.onnx"},
        },
        "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()},
        "reference": {
            "inputs": "reference/inputs.npz",
            "outputs": "reference/outputs.npz",
            "tolerance": {"cosine_min": 0.999, "atol": 1e-4, "rtol": 1e-3},
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def edit(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_good_bundle_loads(tmp_path: Path) -> None:
    m = load_manifest(fake_bundle(tmp_path))
    assert m["backend"] == "onnxruntime" and m["schema_version"] == 1


def test_chunked_hash_matches_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = bytes(range(256)) * 41
    p.write_bytes(data)
    assert sha256_file(p, chunk=7) == hashlib.sha256(data).hexdigest()
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda r: r / "nope", "does not exist"),
        (lambda r: r, "not a robopt bundle"),
        (lambda r: (r / "f.txt").write_text("x") and r / "f.txt", "is a file"),
    ],
)
def test_missing_or_wrong_folder(tmp_path: Path, setup, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_manifest(setup(tmp_path))


def test_bad_json(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_newer_schema_refused(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m.update(schema_version=2))
    with pytest.raises(InputError, match="newer than this robopt-bench reads"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("key", ["schema_version", "backend", "engine", "reference"])
def test_missing_key(tmp_path: Path, key: str) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m.pop(key))
    with pytest.raises(InputError, match=f"missing key '{key}'"):
        load_manifest(tmp_path)


def test_missing_tolerance_value(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m["reference"]["tolerance"].pop("atol"))
    with pytest.raises(InputError, match="'atol'"):
        load_manifest(tmp_path)


def test_missing_engine_file_even_without_verify(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    (tmp_path / "engine" / "model.ort-opt.onnx").unlink()
    with pytest.raises(InputError, match=r"engine file\(s\) \['model.ort-opt.onnx'\] missing"):
        load_manifest(tmp_path, verify=False)


def test_tampered_file_caught_only_when_verifying(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"modeL")
    with pytest.raises(InputError, match=r"'model\.onnx' does not match its sha256"):
        load_manifest(tmp_path)
    load_manifest(tmp_path, verify=False)


def test_listed_file_missing(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"'model\.onnx' listed in manifest\.json is missing"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd"])
def test_paths_cannot_leave_the_bundle(tmp_path: Path, bad: str) -> None:
    fake_bundle(tmp_path / "b")
    edit(tmp_path / "b", lambda m: m["files"].update({bad: "0" * 64}))
    with pytest.raises(InputError, match="must be relative to the bundle"):
        load_manifest(tmp_path / "b")


def test_backend_mismatch(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m["engine"].update(backend="openvino"))
    with pytest.raises(InputError, match=r"engine\.backend is 'openvino'"):
        load_manifest(tmp_path)
