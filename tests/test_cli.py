"""robopt-compile end to end on tiny models: every source kind, both backends, every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.cli import main
from robopt_compile.errors import EXIT_BACKEND, EXIT_BAD_INPUT, BuildError


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    """Progress lines may precede it; the error itself is exactly one line, last."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("robopt-compile: error:"), err
    assert sum("error" in line for line in lines) == 1, err


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def assert_bundle(out: Path, backend: str) -> dict:
    from robopt_compile.ir import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["backend"] == backend
    assert manifest["precision"] == "fp32"
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest, rel
    assert "model.onnx" in manifest["files"]
    assert manifest["engine"]["files"]
    for f in manifest["engine"]["files"]:
        assert (out / manifest["engine"]["dir"] / f).is_file()
    ins = np.load(out / "reference" / "inputs.npz")
    outs = np.load(out / "reference" / "outputs.npz")
    assert sorted(ins.files) == sorted(i["name"] for i in manifest["inputs"])
    assert sorted(outs.files) == sorted(o["name"] for o in manifest["outputs"])
    assert manifest["parity"]["engine"]["passed"] is True
    assert manifest["parity"]["engine"]["cosine"] >= 0.9999
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["tool_versions"])
    return manifest


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_compile_factory_both_backends(policy_dir, tmp_path, capsys, backend):
    out = tmp_path / "bundle"
    code, stdout, err = run_cli(
        [
            "tiny_policies:make_tiny",
            "--target",
            "host",
            "-b",
            backend,
            "-o",
            str(out),
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    m = assert_bundle(out, backend)
    assert m["model"]["source_kind"] == "factory"
    assert m["parity"]["export"]["cosine"] >= 0.99999
    assert [i["name"] for i in m["inputs"]] == ["image", "state"]
    assert m["outputs"][0]["name"] == "action"
    assert "engine fidelity" in stdout
    assert leftovers(tmp_path) == []


def test_compile_onnx_file_json(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "b"
    code, stdout, err = run_cli(
        [
            str(tiny_onnx),
            "--target",
            "x86-64-avx512",
            "--backend",
            "openvino",
            "-o",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(stdout)  # --json: stdout is exactly one JSON document
    assert doc["manifest"]["model"]["source_kind"] == "onnx"
    assert doc["manifest"]["target"]["profile"] == "x86-64-avx512"
    assert_bundle(out, "openvino")


def test_compile_pt2(tiny_pt2, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, err = run_cli([str(tiny_pt2), "-o", str(out)], capsys)
    assert code == 0, err
    m = assert_bundle(out, "onnxruntime")
    assert m["model"]["source_kind"] == "pt2"
    assert m["parity"]["export"]["cosine"] >= 0.99999


def test_compile_tuple_inputs_and_dynamic_batch(policy_dir, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, err = run_cli(
        ["tiny_policies:make_tuple_inputs", "-o", str(out), "--dynamic-batch"], capsys
    )
    assert code == 0, err
    m = assert_bundle(out, "onnxruntime")
    assert isinstance(m["inputs"][0]["shape"][0], str)  # symbolic batch
    assert m["parity"]["export_batch3"]["cosine"] >= 0.99999
    assert m["build"]["dynamic_batch"] is True


def test_dump_ir_and_pass_timings(policy_dir, tmp_path, capsys):
    out, dump = tmp_path / "b", tmp_path / "ir"
    code, _, err = run_cli(
        ["tiny_policies:make_tiny", "-o", str(out), "--dump-ir", str(dump)], capsys
    )
    assert code == 0, err
    dumped = sorted(p.name for p in dump.iterdir())
    assert dumped and dumped[0].startswith("01-") and dumped[0].endswith(".onnx")
    report = json.loads((out / "report.json").read_text())
    assert report["passes"] and all(p["seconds"] >= 0 for p in report["passes"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.onnx"], "not found"),
        (["zoo:no-such-model"], "unknown zoo model"),
        (["tiny_policies:make_tiny", "--target", "jetsn"], "unknown target"),
        (["tiny_policies:make_tiny", "--backend", "tensorrtt"], "unknown backend"),
        (["tiny_policies:make_broken"], "checkpoint weights.pt is missing"),
        (["tiny_policies:make_wrong_type"], "must return"),
        (["tiny_policies:no_such_fn"], "no callable"),
        (["no_such_pkg.mod:make"], "cannot import"),
        (["tiny_policies:make_tiny", "--precision", "int3"], "precision"),
        (["tiny_policies:make_tiny", "--threads", "0"], "threads"),
        (["tiny_policies:make_tiny", "--hwprofile", "nope.toml"], "not found"),
    ],
)
def test_bad_input_one_line_exit_2(policy_dir, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    code, _stdout, err = run_cli([*args, "-o", str(out)], capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_error_line(err)
    assert needle in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_unknown_target_suggests_closest(capsys, tmp_path):
    code, _, err = run_cli(["zoo:state-mlp", "--target", "hots", "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT
    assert "Did you mean 'host'" in err


def test_corrupt_and_empty_onnx(tmp_path, capsys):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-a-protobuf" * 10)
    code, _, err = run_cli([str(bad), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT and "not a readable ONNX model" in err
    assert_one_error_line(err)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, _, err = run_cli([str(empty), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT
    assert not (tmp_path / "o").exists()


def test_truncated_onnx(tiny_onnx, tmp_path, capsys):
    cut = tmp_path / "cut.onnx"
    data = tiny_onnx.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli([str(cut), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_error_line(err)


def test_unsupported_file_type(tmp_path, capsys):
    f = tmp_path / "model.h5"
    f.write_text("x")
    code, _, err = run_cli([str(f), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT and "unsupported model file type" in err


def test_output_exists_refused_then_forced(policy_dir, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out)], capsys)
    assert code == EXIT_BAD_INPUT and "--force" in err
    assert (out / "keep.txt").read_text() == "precious"
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "--force"], capsys)
    assert code == 0, err
    assert not (out / "keep.txt").exists()
    assert_bundle(out, "onnxruntime")
    assert leftovers(tmp_path) == []


def test_failed_build_leaves_nothing(policy_dir, tmp_path, capsys, monkeypatch):
    from robopt_compile.targets.onnxruntime import OnnxRuntimeBackend

    def boom(self, *a, **k):
        raise BuildError("simulated build failure")

    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("old bundle")
    monkeypatch.setattr(OnnxRuntimeBackend, "build", boom)
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "--force"], capsys)
    assert code == EXIT_BACKEND and "simulated build failure" in err
    assert (out / "keep.txt").read_text() == "old bundle"  # --force never loses the old bundle
    assert leftovers(tmp_path) == []


def test_debug_shows_traceback(policy_dir, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "robopt_compile.cli",
            "tiny_policies:make_broken",
            "-o",
            str(tmp_path / "o"),
            "--debug",
        ],
        capture_output=True,
        text=True,
        cwd=policy_dir,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_list_targets(capsys):
    code, out, _ = run_cli(["--list-targets"], capsys)
    assert code == 0 and "host" in out and "x86-64-avx512" in out
    code, out, _ = run_cli(["--list-targets", "--json"], capsys)
    doc = json.loads(out)
    names = [t["name"] for t in doc["targets"]]
    assert "host" in names and "x86-64-avx512" in names
    assert doc["backends"]["onnxruntime"]["available"] is True


def test_analyze_table_and_json(policy_dir, capsys):
    code, out, err = run_cli(["analyze", "tiny_policies:make_tiny", "--target", "host"], capsys)
    assert code == 0, err
    assert "Conv" in out
    code, out, err = run_cli(["analyze", "tiny_policies:make_tiny", "--json"], capsys)
    assert code == 0, err
    facts = json.loads(out)["facts"]
    assert facts["summary"]["macs"] > 0


@pytest.mark.parametrize("cmd", ["robopt-compile", "robopt-bench"])
def test_help_starts_fast_without_heavy_imports(cmd):
    exe = Path(sys.executable).parent / cmd
    best = min(_timed([str(exe), "--help"]) for _ in range(3))
    assert best < 1.0, f"{cmd} --help took {best:.2f} s"


def _timed(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - t
