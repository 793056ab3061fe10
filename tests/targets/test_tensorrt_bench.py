"""robopt-bench on a bundle holding a deferred TensorRT build: the one-line error without TensorRT,
and with the fake: built once into the cache, reused, never across GPUs, benchmarked end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tensorrt_helpers import install_fake

from robopt_compile.errors import BackendUnavailableError, InputError


def test_bench_without_tensorrt_is_one_line(bundle: Path, no_trt: None) -> None:
    from click.testing import CliRunner

    from robopt_compile.bench.cli import main
    from robopt_compile.bench.harness import run_benchmark

    with pytest.raises(BackendUnavailableError) as info:
        run_benchmark(bundle, runs=1, warmup=0)
    msg = str(info.value)
    assert msg.startswith(
        "this bundle holds a deferred TensorRT build; run robopt-bench on the device with "
        "TensorRT installed (JetPack 6: python3-libnvinfer) or run `cd "
    )
    assert "&& trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped" in msg
    assert "(here: tensorrt is not installed" in msg
    r = CliRunner().invoke(main, [str(bundle)])
    assert r.exit_code == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "deferred TensorRT build" in lines[0]


def test_bench_builds_once_into_the_cache_and_reuses_it(
    bundle: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robopt_compile.bench.harness import open_bundle

    f = install_fake(monkeypatch)
    first = open_bundle(bundle, verify=True)
    assert first.build_ms is not None and f.rec.builds == 1
    folder = first.artifact.root
    assert folder.parent == cache / "engines" and folder.name.endswith("-orin-sm87-trt10.3.0")
    assert first.artifact.config["engine_key"] == "orin-sm87-trt10.3.0"
    assert (folder / first.artifact.config["model"]).is_file()
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # atomic: no leftovers

    second = open_bundle(bundle, verify=True)
    assert second.build_ms is None and f.rec.builds == 1 and second.artifact.root == folder

    # another GPU never reuses it: it builds its own engine under its own key
    g = install_fake(monkeypatch, gpu=b"Jetson AGX Thor")
    third = open_bundle(bundle, verify=True)
    assert g.rec.builds == 1 and third.artifact.root != folder
    assert third.artifact.config["engine_key"].startswith("jetson-agx-thor-")

    # a truncated cached engine is rebuilt, not loaded
    install_fake(monkeypatch)
    engine = folder / first.artifact.config["model"]
    engine.write_bytes(engine.read_bytes()[:10])
    fourth = open_bundle(bundle, verify=True)
    assert fourth.build_ms is not None and fourth.artifact.root == folder


def test_bench_runs_the_built_engine(bundle: Path, fake: SimpleNamespace) -> None:
    from robopt_compile.bench.harness import run_benchmark

    r = run_benchmark(bundle, runs=5, warmup=1)
    assert r["backend"] == "tensorrt" and r["latency"]["n"] == 5
    assert r["timing"]["engine_build_ms"] > 0 and r["timing"]["bundle_check_ms"] >= 0
    assert r["machine"]["runtime_version_at_build"] == "10.3.0"
    assert r["fidelity"]["passed"] is False  # the fake engine writes 0.5, not the policy's output
    assert fake.rec.executions >= 7
    again = run_benchmark(bundle, runs=2, warmup=0)
    assert again["timing"]["engine_build_ms"] is None and fake.rec.builds == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("onnx", "../model.onnx"), ("onnx", "/etc/hostname"), ("onnx_external_data", ["../x"])],
)
def test_deferred_recipe_cannot_name_a_file_outside_the_engine(
    bundle: Path, fake: SimpleNamespace, key: str, value: Any
) -> None:
    """build.json is hashed, but a hand-made bundle hashes what it likes: the recipe's ONNX
    and its external data must be listed files of the engine folder (issue 15, defect 1)."""
    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.compile.bundle import hash_tree

    recipe = json.loads((bundle / "engine" / "build.json").read_text())
    recipe[key] = value
    (bundle / "engine" / "build.json").write_text(json.dumps(recipe))
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = hash_tree(bundle)
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=rf"build\.json: {key} .* is not"):
        run_benchmark(bundle, runs=1, warmup=0)
    assert fake.rec.builds == 0


def test_bench_modules_import_without_tensorrt_or_onnx() -> None:
    code = (
        "import sys\n"
        "import robopt_compile.bench.harness, robopt_compile.bench.deferred\n"
        "import robopt_compile.targets.tensorrt\n"
        "bad = [m for m in ('tensorrt', 'onnx', 'onnx_ir', 'torch', 'cuda') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ})
