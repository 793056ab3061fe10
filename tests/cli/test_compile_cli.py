"""robopt-compile end to end on tiny models: every source kind, both backends, every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_bundle, assert_one_error_line, leftovers, run_cli

from robopt_compile.errors import EXIT_BACKEND, EXIT_BAD_INPUT, BuildError


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
    report = json.loads((out / "report.json").read_text())
    names = [p["name"] for p in report["passes"]]
    assert names == ["simplify"] and report["passes"][0]["seconds"] > 0
    dumped = sorted(p.name for p in dump.iterdir())
    assert dumped == ["00-input.onnx", "01-simplify.onnx"]
    import onnx

    for f in dumped:
        onnx.checker.check_model(onnx.load(dump / f))


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
        (["tiny_policies:make_tiny", "--simplify", "onnxsimm"], "unknown simplify tool"),
        (["raising_mod:make"], "raised ValueError"),
        (["tiny_policies:make_bad_shapes"], "forward() raised"),
        (["tiny_policies:make_star_args"], "*args"),
        (["tiny_policies:make_wrong_names"], "not parameters of forward"),
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
    f = tmp_path / "model.caffemodel"
    f.write_text("x")
    code, _, err = run_cli([str(f), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT and "unsupported model file type" in err


def test_output_exists_refused_then_forced(policy_dir, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out)], capsys)
    assert code == EXIT_BAD_INPUT and "--force" in err
    # --force replaces only bundles (or empty folders), never someone's data
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "--force"], capsys)
    assert code == EXIT_BAD_INPUT and "not a robopt bundle" in err
    assert (out / "keep.txt").read_text() == "precious"
    bundle = tmp_path / "bundle"
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(bundle)], capsys)
    assert code == 0, err
    first = json.loads((bundle / "manifest.json").read_text())["created_utc"]
    (bundle / "results" / "bench-stale.json").write_text("{}")  # robopt's, from an older run
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(bundle), "--force"], capsys)
    assert code == 0, err
    assert not (bundle / "results" / "bench-stale.json").exists()
    assert json.loads((bundle / "manifest.json").read_text())["created_utc"] >= first
    assert_bundle(bundle, "onnxruntime")
    assert leftovers(tmp_path) == []


def test_output_is_current_folder_refused(policy_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    for target in (".", ".."):
        code, _, err = run_cli(["tiny_policies:make_tiny", "-o", target, "--force"], capsys)
        assert code == EXIT_BAD_INPUT and "current folder" in err
    assert leftovers(tmp_path) == [] and leftovers(tmp_path.parent) == []


def test_created_parents_removed_on_failure(policy_dir, tmp_path, capsys, monkeypatch):
    from robopt_compile.targets.onnxruntime import OnnxRuntimeBackend

    def boom(self, *a, **k):
        raise BuildError("simulated build failure")

    monkeypatch.setattr(OnnxRuntimeBackend, "build", boom)
    out = tmp_path / "new" / "deeper" / "b"
    code, _, _ = run_cli(["tiny_policies:make_tiny", "-o", str(out), "-b", "onnxruntime"], capsys)
    assert code == EXIT_BACKEND
    assert not (tmp_path / "new").exists()


def test_failed_build_leaves_nothing(policy_dir, tmp_path, capsys, monkeypatch):
    from robopt_compile.targets.onnxruntime import OnnxRuntimeBackend

    def boom(self, *a, **k):
        raise BuildError("simulated build failure")

    out = tmp_path / "b"
    assert run_cli(["tiny_policies:make_tiny", "-o", str(out)], capsys)[0] == 0  # an old bundle
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(OnnxRuntimeBackend, "build", boom)
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "--force", "-b",
                            "onnxruntime"], capsys)  # fmt: skip
    assert code == EXIT_BACKEND and "simulated build failure" in err
    # --force never loses the old bundle
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
    assert leftovers(tmp_path) == []
    # Without -b the board's next backend builds it (host: OpenVINO), and only that is left.
    pytest.importorskip("openvino", reason="the host's next backend is OpenVINO")
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "--force"], capsys)
    assert code == 0 and "falling back to openvino" in err, err
    assert json.loads((out / "manifest.json").read_text())["backend"] == "openvino"
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
    module = {"robopt-compile": "robopt_compile.cli", "robopt-bench": "robopt_compile.cli.bench"}
    code = (
        f"import sys; sys.argv = ['{cmd}', '--help']\n"
        f"from {module[cmd]} import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnx_ir', 'onnxruntime', 'openvino', 'numpy')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


def test_compiled_bundle_runs_in_robopt_bench(policy_dir, tmp_path, capsys):
    """The writer (pipeline) and the reader (harness) agree on the bundle format."""
    out = tmp_path / "b"
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(out), "-b", "openvino"], capsys)
    assert code == 0, err
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "robopt-bench"), str(out), "--runs", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["fidelity"]["passed"] is True
    assert res["backend"] == "openvino" and res["latency"]["n"] == 20


def _timed(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - t


GATHER_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 3] table, int64[2] idx) => (float[2, 3] rows) {
  rows = Gather <axis = 0> (table, idx)
}
"""


def test_reference_inputs_for_models_that_need_valid_values(tmp_path, capsys):
    import onnx

    path = tmp_path / "gather.onnx"
    onnx.save(onnx.parser.parse_model(GATHER_MODEL), path)
    # random int64 indices run out of range: a clear hint to pass real samples
    code, _, err = run_cli([str(path), "-o", str(tmp_path / "o")], capsys)
    if code != 0:
        assert code == EXIT_BAD_INPUT and "--reference-inputs" in err
    samples = tmp_path / "samples.npz"
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(samples, table=table, idx=np.array([3, 1], dtype=np.int64))
    out = tmp_path / "ok"
    code, _, err = run_cli([str(path), "-o", str(out), "--reference-inputs", str(samples)], capsys)
    assert code == 0, err
    ref_out = np.load(out / "reference" / "outputs.npz")["rows"]
    assert np.array_equal(ref_out, table[[3, 1]])
    # wrong names, dtypes and shapes are refused with the input named
    for bad, needle in (
        ({"table": table}, "do not match the model inputs"),
        ({"table": table, "idx": np.array([1, 2], dtype=np.int32)}, "int32"),
        ({"table": table[:2], "idx": np.array([1, 2])}, "shape"),
    ):
        np.savez(samples, **bad)
        code, _, err = run_cli(
            [str(path), "-o", str(tmp_path / "x"), "--reference-inputs", str(samples)], capsys
        )
        assert code == EXIT_BAD_INPUT and needle in err, err


def test_reference_inputs_for_torch_sources(policy_dir, tmp_path, capsys):
    samples = tmp_path / "s.npz"
    image = np.full((1, 3, 16, 16), 0.5, dtype=np.float32)
    np.savez(samples, image=image, state=np.ones((1, 4), dtype=np.float32))
    out = tmp_path / "b"
    code, _, err = run_cli(
        ["tiny_policies:make_tiny", "-o", str(out), "--reference-inputs", str(samples)], capsys
    )
    assert code == 0, err
    m = assert_bundle(out, "onnxruntime")
    assert m["parity"]["export"]["inputs"] == "user-supplied --reference-inputs"
    assert np.array_equal(np.load(out / "reference" / "inputs.npz")["image"], image)


def test_dynamic_batch_recorded_from_the_model(policy_dir, tmp_path, capsys):
    """An .onnx with a symbolic batch dim is recorded as dynamic without --dynamic-batch."""
    import torch
    from tiny_policies import make_tiny

    m, ins = make_tiny()
    path = tmp_path / "dyn.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        m,
        args=(),
        kwargs={k: torch.cat([v, v]) for k, v in ins.items()},
        f=str(path),
        dynamo=True,
        verbose=False,
        input_names=list(ins),
        output_names=["action"],
        dynamic_shapes={k: {0: batch} for k in ins},
    )
    out = tmp_path / "b"
    code, _, err = run_cli([str(path), "-o", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["build"]["dynamic_batch"] is True
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(tmp_path / "s")], capsys)
    assert (
        json.loads((tmp_path / "s" / "manifest.json").read_text())["build"]["dynamic_batch"]
        is False
    )
