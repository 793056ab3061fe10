"""Manifest checks on hand-made bundle folders (no engine build needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from robopt_compile.bench.manifest import load_manifest
from robopt_compile.errors import InputError
from robopt_compile.jsonutil import sha256_file


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


# --- every path a loader opens is a hashed file of the bundle (issue 15, defects 1 and 9c) ----


def _config(**changes: object):
    return lambda m: m["engine"]["config"].update(changes)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../outside.onnx", "../engine/model.ort-opt.onnx", "", ".", "a\\..\\b"]
)
def test_config_model_outside_the_bundle_is_refused(tmp_path: Path, bad: str, verify: bool):
    (tmp_path / "outside.onnx").write_bytes(b"not the bundle's")
    fake_bundle(tmp_path / "b")
    edit(tmp_path / "b", _config(model=bad))
    with pytest.raises(InputError) as info:
        load_manifest(tmp_path / "b", verify=verify)
    msg = str(info.value)
    assert f"engine.config.model {bad!r} is not a file of this bundle" in msg, msg
    assert "the bundle is corrupt or not robopt's" in msg and "\n" not in msg


def test_refusal_does_not_tell_whether_an_outside_file_exists(tmp_path: Path) -> None:
    fake_bundle(tmp_path / "b")
    msgs = []
    for bad in ("/etc/passwd", "/no/such/file"):
        edit(tmp_path / "b", _config(model=bad))
        with pytest.raises(InputError) as info:
            load_manifest(tmp_path / "b")
        msgs.append(str(info.value).replace(bad, "X"))
    assert msgs[0] == msgs[1]


@pytest.mark.parametrize("key", ["recipe", "trtexec_script"])
def test_other_config_paths_are_checked(tmp_path: Path, key: str) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, _config(**{key: "/etc/passwd"}))
    with pytest.raises(InputError, match=rf"engine\.config\.{key} '/etc/passwd' is not a file"):
        load_manifest(tmp_path, verify=False)


def test_config_model_must_be_a_listed_engine_file(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    (tmp_path / "engine" / "other.onnx").write_bytes(b"unlisted")
    edit(tmp_path, _config(model="other.onnx"))
    with pytest.raises(InputError, match=r"engine\.config\.model 'other\.onnx' is not one of"):
        load_manifest(tmp_path, verify=False)


def test_engine_file_not_hashed_is_refused_when_verifying(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m["files"].pop("engine/model.ort-opt.onnx"))
    with pytest.raises(InputError, match=r"'engine/model\.ort-opt\.onnx' is not hashed"):
        load_manifest(tmp_path)
    load_manifest(tmp_path, verify=False)  # hashing is what --no-verify skips


def test_manifest_without_files_is_refused_when_verifying(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m.pop("files"))
    with pytest.raises(InputError, match="is not hashed"):
        load_manifest(tmp_path)
    load_manifest(tmp_path, verify=False)


def test_reference_file_not_hashed_is_refused_when_verifying(tmp_path: Path) -> None:
    fake_bundle(tmp_path)
    edit(tmp_path, lambda m: m["files"].pop("reference/inputs.npz"))
    with pytest.raises(InputError, match=r"'reference/inputs\.npz' is not hashed"):
        load_manifest(tmp_path)


def _link_engine_file(b: Path, target: Path) -> None:
    """engine/model.ort-opt.onnx -> target, hashed as the target's bytes (the hash holds)."""
    engine = b / "engine" / "model.ort-opt.onnx"
    engine.unlink()
    engine.symlink_to(target)
    edit(b, lambda m: m["files"].update({"engine/model.ort-opt.onnx": sha256_file(target)}))


@pytest.mark.parametrize("verify", [True, False])
def test_symlinked_engine_file_is_refused(tmp_path: Path, verify: bool) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"engine bytes" * 100)
    fake_bundle(tmp_path / "b")
    _link_engine_file(tmp_path / "b", outside)
    with pytest.raises(InputError, match=r"'engine/model\.ort-opt\.onnx' is a symbolic link"):
        load_manifest(tmp_path / "b", verify=verify)


def test_symlink_to_a_system_file_is_refused(tmp_path: Path) -> None:
    fake_bundle(tmp_path / "b")
    _link_engine_file(tmp_path / "b", Path("/etc/hostname"))
    with pytest.raises(InputError, match="is a symbolic link"):
        load_manifest(tmp_path / "b", verify=False)


@pytest.mark.parametrize("verify", [True, False])
def test_symlinked_engine_dir_is_refused(tmp_path: Path, verify: bool) -> None:
    b = fake_bundle(tmp_path / "b")
    (b / "engine").rename(tmp_path / "elsewhere")
    (b / "engine").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(InputError, match=r"'engine' is a symbolic link"):
        load_manifest(b, verify=verify)


def test_symlink_anywhere_in_the_bundle_is_refused(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path / "b")
    (b / "reference" / "inputs.npz").unlink()
    (b / "reference" / "inputs.npz").symlink_to(b / "model.onnx")  # even one inside
    with pytest.raises(InputError, match=r"'reference/inputs\.npz' is a symbolic link"):
        load_manifest(b, verify=False)
    (b / "reference" / "inputs.npz").unlink()
    (b / "reference" / "inputs.npz").write_bytes(b"in")
    (b / "engine" / "weights.data").symlink_to("/etc/hostname")  # unnamed: external data
    with pytest.raises(InputError, match=r"'engine/weights\.data' is a symbolic link"):
        load_manifest(b, verify=False)


def test_symlinked_manifest_is_refused(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path / "b")
    (b / "manifest.json").rename(tmp_path / "m.json")
    (b / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(InputError, match="symbolic link"):
        load_manifest(b, verify=False)


def _compressed(m: dict) -> None:
    m["engine"]["files"] = ["model.ort-opt.onnx.xz"]
    m["engine"]["compressed"] = {
        "method": "lzma",
        "files": {"model.ort-opt.onnx.xz": {"original": "model.ort-opt.onnx"}},
    }
    m["files"]["engine/model.ort-opt.onnx.xz"] = m["files"].pop("engine/model.ort-opt.onnx")


def test_compressed_engine_config_names_an_original(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    (b / "engine" / "model.ort-opt.onnx").rename(b / "engine" / "model.ort-opt.onnx.xz")
    edit(b, _compressed)
    load_manifest(b)  # the config names the original the runtime loads from the cache
    edit(b, _config(model="model.ort-opt.onnx.xz.other"))
    with pytest.raises(InputError, match=r"engine\.config\.model .* is not one of"):
        load_manifest(b)
    edit(b, _config(model="/etc/passwd"))
    with pytest.raises(InputError, match=r"engine\.config\.model '/etc/passwd' is not a file"):
        load_manifest(b)
    edit(b, _config(model="model.ort-opt.onnx"))
    edit(b, lambda m: m["engine"]["compressed"]["files"].update(
        {"/etc/passwd": {"original": "x.onnx"}}))  # fmt: skip
    with pytest.raises(InputError, match="'/etc/passwd'"):
        load_manifest(b)


def test_graph_engine_config_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    b = fake_bundle(tmp_path)
    engine = {"dir": "engine", "files": ["model.ort-opt.onnx"], "config": {"model": "../../x"}}
    edit(b, lambda m: m.update(graphs=[{"name": "llm", "engine": engine, "inputs": [],
                                        "outputs": []}]))  # fmt: skip
    with pytest.raises(InputError, match=r"graphs\[llm\]\.engine\.config\.model '\.\./\.\./x'"):
        load_manifest(b, verify=False)


def test_bundle_doc_lists_every_backend_and_precision() -> None:
    """docs/BUNDLE.md's manifest table names what manifests really hold (it had gone stale:
    "onnxruntime or openvino", "fp32 (later: ...)")."""
    from robopt_compile.bench.manifest import RUNTIMES
    from robopt_compile.precision import PRECISIONS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "BUNDLE.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert all(f"`{b}`" in rows["`backend`"] for b in RUNTIMES), rows["`backend`"]
    assert all(f"`{p}`" in rows["`precision`"] for p in PRECISIONS), rows["`precision`"]
