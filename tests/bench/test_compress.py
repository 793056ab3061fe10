"""Compressed engine storage: round trip, the unpack cache, corrupt files, a real bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from robopt_compile.bench import compress as bc
from robopt_compile.bench.cli import main
from robopt_compile.bench.compress import compress_engine, materialize_engine
from robopt_compile.bench.harness import measure_overhead, run_benchmark
from robopt_compile.compile.bundle import hash_tree
from robopt_compile.errors import InputError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test unpacks into its own cache, never into ~/.cache."""
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "engines"


def _engine(root: Path) -> dict[str, bytes]:
    """An engine folder with a zero-heavy weight file, a text file and a nested file."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(50_000).astype(np.float32)
    w[rng.random(w.size) < 0.8] = 0
    files = {
        "model.bin": w.tobytes(),
        "model.xml": b"<net name='tiny'/>\n" * 50,
        "sub/extra.dat": bytes(range(256)) * 10,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _manifest(desc: dict[str, Any] | None) -> dict[str, Any]:
    engine: dict[str, Any] = {"dir": "engine", "files": []}
    if desc is not None:
        engine["compressed"] = desc
    return {"engine": engine}


@pytest.mark.parametrize(("method", "suffix"), [("lzma", ".xz"), ("gzip", ".gz")])
def test_round_trip(tmp_path: Path, cache: Path, method: str, suffix: str) -> None:
    originals = _engine(tmp_path / "b" / "engine")
    desc = compress_engine(tmp_path / "b" / "engine", method)
    json.dumps(desc)
    assert desc["method"] == method
    assert set(desc["files"]) == {rel + suffix for rel in originals}
    stored = sorted(p.relative_to(tmp_path / "b" / "engine").as_posix()
                    for p in (tmp_path / "b" / "engine").rglob("*") if p.is_file())  # fmt: skip
    assert stored == sorted(desc["files"])  # originals replaced
    entry = desc["files"]["model.bin" + suffix]
    assert entry["original"] == "model.bin" and entry["original_bytes"] == 200_000
    assert entry["bytes"] == (tmp_path / "b" / "engine" / ("model.bin" + suffix)).stat().st_size
    assert entry["bytes"] < 0.4 * entry["original_bytes"]  # 80% zeros compress well

    folder = materialize_engine(tmp_path / "b", _manifest(desc))
    assert folder.parent == cache and len(folder.name) == 64
    for rel, data in originals.items():
        assert (folder / rel).read_bytes() == data
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_plain_engine_is_loaded_in_place(tmp_path: Path, cache: Path) -> None:
    _engine(tmp_path / "engine")
    assert materialize_engine(tmp_path, _manifest(None)) == tmp_path / "engine"
    assert not cache.exists()


def test_same_engine_same_bytes(tmp_path: Path) -> None:
    """Bundles stay reproducible: no timestamps or file names in the compressed files."""
    for method in ("lzma", "gzip"):
        a, b = tmp_path / method / "a", tmp_path / method / "b"
        _engine(a), _engine(b)
        os.utime(b / "model.bin", (1, 1))
        compress_engine(a, method), compress_engine(b, method)
        assert hash_tree(a) == hash_tree(b)


def test_cache_is_reused_and_repaired(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = _engine(tmp_path / "engine")
    manifest = _manifest(compress_engine(tmp_path / "engine"))
    first = materialize_engine(tmp_path, manifest)
    stamp = (first / "model.bin").stat().st_mtime_ns

    def no_unpack(*args: object) -> None:
        raise AssertionError("a cached engine was unpacked again")

    with monkeypatch.context() as m:
        m.setattr(bc, "_unpack", no_unpack)
        assert materialize_engine(tmp_path, manifest) == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp
    # a damaged cache entry (truncated file) is replaced, not used
    (first / "model.bin").write_bytes(b"oops")
    assert materialize_engine(tmp_path, manifest) == first
    assert (first / "model.bin").read_bytes() == originals["model.bin"]
    # other compressed content gets another folder
    (tmp_path / "engine2").mkdir()
    (tmp_path / "engine2" / "model.bin").write_bytes(b"\0" * 1000)
    other = {"engine": {"dir": "engine2", "compressed": compress_engine(tmp_path / "engine2")}}
    assert materialize_engine(tmp_path, other) != first
    assert len(list(cache.iterdir())) == 2


def test_corrupt_and_bad_descriptions_are_input_errors(tmp_path: Path) -> None:
    _engine(tmp_path / "engine")
    desc = compress_engine(tmp_path / "engine", "gzip")
    gz = tmp_path / "engine" / "model.bin.gz"
    good = gz.read_bytes()
    gz.write_bytes(good[: len(good) // 2])  # truncated copy
    with pytest.raises(InputError, match=r"'engine/model.bin.gz' cannot be decompressed"):
        materialize_engine(tmp_path, _manifest(desc))
    gz.write_bytes(good)
    wrong = json.loads(json.dumps(desc))
    wrong["files"]["model.bin.gz"]["sha256"] = "0" * 64
    with pytest.raises(InputError, match="decompresses to data that does not match its sha256"):
        materialize_engine(tmp_path, _manifest(wrong))
    with pytest.raises(InputError, match=r"engine\.compressed must be"):
        materialize_engine(tmp_path, _manifest({"method": "zstd", "files": desc["files"]}))
    with pytest.raises(InputError, match="must be relative"):
        materialize_engine(tmp_path, _manifest({"method": "gzip", "files": {"../x.gz": {}}}))
    with pytest.raises(InputError, match="unknown engine compression 'zstd'"):
        compress_engine(tmp_path / "engine", "zstd")


def test_unwritable_cache_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _engine(tmp_path / "engine")
    desc = compress_engine(tmp_path / "engine")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ROBOPT_CACHE", str(blocker))
    with pytest.raises(InputError, match="set ROBOPT_CACHE to a writable folder"):
        materialize_engine(tmp_path, _manifest(desc))


def test_imports_only_the_standard_library() -> None:
    """The robot has numpy, click and one runtime; unpacking must not need more."""
    code = (
        "import sys; before = set(sys.modules); import robopt_compile.bench.compress; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(m for m in new if m not in sys.stdlib_module_names "
        "and m != 'robopt_compile' and not m.startswith('_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- a real bundle through the harness --------------------------------------------------------


def _compress_bundle(bundle: Path, method: str = "lzma") -> dict[str, Any]:
    """What the compile pipeline does: compress engine/, rewrite the manifest, rehash."""
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    desc = compress_engine(bundle / manifest["engine"]["dir"], method)
    manifest["engine"] = {**manifest["engine"], "files": sorted(desc["files"]), "compressed": desc}
    manifest["files"] = hash_tree(bundle)
    mpath.write_text(json.dumps(manifest, indent=2))
    return manifest


def test_compressed_bundle_benchmarks_like_the_plain_one(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path], cache: Path
) -> None:
    b = bundle_copy(ort_bundle)
    manifest = _compress_bundle(b)
    assert manifest["engine"]["files"] == ["model.ort-opt.onnx.xz"]
    assert "engine/model.ort-opt.onnx.xz" in manifest["files"]
    assert not (b / "engine" / "model.ort-opt.onnx").exists()

    r = run_benchmark(b, runs=5, warmup=1, threads=1)
    plain = run_benchmark(ort_bundle, runs=5, warmup=1, threads=1)
    assert r["fidelity"]["passed"] is True
    for name, o in r["fidelity"]["outputs"].items():
        assert o["max_abs"] == plain["fidelity"]["outputs"][name]["max_abs"]
    assert r["timing"]["engine_unpack_ms"] > 0 and plain["timing"]["engine_unpack_ms"] is None
    assert len(list(cache.iterdir())) == 1
    assert measure_overhead(b, runs=4, warmup=1, threads=1, blocks=2)["bare_p50_ms"] > 0

    out = CliRunner().invoke(main, [str(b), "--runs", "3", "--warmup", "0"])
    assert out.exit_code == 0, out.output
    assert "engine unpack" in out.stdout and "fidelity    PASS" in out.stdout


def test_corrupt_compressed_engine_is_one_line_error(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path]
) -> None:
    b = bundle_copy(ort_bundle)
    _compress_bundle(b, "gzip")
    gz = b / "engine" / "model.ort-opt.onnx.gz"
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(data))
    # --verify (the default) catches it by the manifest hash of the stored file ...
    with pytest.raises(InputError, match=r"'engine/model.ort-opt.onnx.gz' does not match its"):
        run_benchmark(b, runs=2, warmup=0)
    # ... and without it, unpacking does; the CLI prints either on one line, exit code 2
    for args in ([], ["--no-verify"]):
        r = CliRunner().invoke(main, [str(b), "--runs", "2", *args])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("robopt-bench: error: bundle file"), lines
        assert "engine/model.ort-opt.onnx.gz" in lines[0] and "Copy the bundle again" in lines[0]
        assert "Traceback" not in r.output
