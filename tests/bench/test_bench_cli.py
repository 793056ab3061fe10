"""robopt-bench as a user meets it: exit codes, one-line errors, JSON, start-up, imports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from robopt_compile.bench.cli import main

HEAVY = ("torch", "onnx", "onnx_ir", "openvino", "matplotlib")
SCRIPT = Path(sys.executable).with_name("robopt-bench")


def bench(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(r: Result, code: int, match: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("robopt-bench: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in r.output


def test_table_for_people(ort_bundle: Path) -> None:
    r = bench(ort_bundle, "--runs", "5", "--warmup", "1", "--threads", "1", "--control-rate", "50")
    assert r.exit_code == 0, r.output
    for word in ("latency ", "p99", "jitter", "throughput", "control     50 Hz", "memory",
                 "fidelity    PASS", "action", "value"):  # fmt: skip
        assert word in r.stdout, word
    assert "latency ms" in r.stdout and "latency us" not in r.stdout  # ms like every figure
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_json_is_the_only_stdout(bundle: Path) -> None:
    r = bench(bundle, "--runs", "5", "--warmup", "1", "--json", "--control-rate", "100")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["latency"]["n"] == 5 and data["fidelity"]["passed"] is True
    assert data["control"]["rate_hz"] == 100


def test_explicit_run_subcommand_is_the_default(ort_bundle: Path) -> None:
    r = bench("run", ort_bundle, "--runs", "2", "--warmup", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["latency"]["n"] == 2
    r = bench("--runs", "2", ort_bundle, "--json")  # options before the bundle
    assert r.exit_code == 0 and json.loads(r.stdout)["latency"]["n"] == 2


def test_fidelity_failure_prints_results_then_exits_4(
    bundle: Path, bundle_copy: Callable[[Path], Path], rehash: Callable[[Path], None]
) -> None:
    b = bundle_copy(bundle)
    path = b / "reference" / "outputs.npz"
    with np.load(path) as z:
        outs = {k: z[k] for k in z.files}
    np.savez(path, action=outs["action"] + 1.0, value=outs["value"])
    rehash(b)
    r = bench(b, "--runs", "2", "--warmup", "0")
    assert_one_line_error(r, 4, "engine fidelity check failed")
    assert "fidelity    FAIL" in r.stdout and "'action'" in r.stderr
    r = bench(b, "--runs", "2", "--warmup", "0", "--json")
    assert r.exit_code == 4 and json.loads(r.stdout)["fidelity"]["passed"] is False


def test_tampered_engine_is_a_verify_error(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path]
) -> None:
    b = bundle_copy(ort_bundle)
    engine = b / "engine" / "model.ort-opt.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    assert_one_line_error(bench(b, "--runs", "2"), 2, "does not match its sha256")


def test_no_verify_skips_hashing(ort_bundle: Path, bundle_copy: Callable[[Path], Path]) -> None:
    b = bundle_copy(ort_bundle)
    (b / "model.onnx").write_bytes(b"edited after compile")  # the engine does not read it
    assert bench(b, "--runs", "2").exit_code == 2
    assert bench(b, "--runs", "2", "--no-verify").exit_code == 0


def test_missing_engine_file(ort_bundle: Path, bundle_copy: Callable[[Path], Path]) -> None:
    b = bundle_copy(ort_bundle)
    (b / "engine" / "model.ort-opt.onnx").unlink()
    assert_one_line_error(bench(b, "--no-verify"), 2, "missing from")


def test_missing_folder_and_not_a_bundle(tmp_path: Path) -> None:
    assert_one_line_error(bench(tmp_path / "nope"), 2, "does not exist")
    assert_one_line_error(bench(tmp_path), 2, "not a robopt bundle")


def test_newer_schema(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path], edit_manifest: Callable[..., None]
) -> None:
    b = bundle_copy(ort_bundle)
    edit_manifest(b, schema_version=2)
    assert_one_line_error(bench(b), 2, "newer than this robopt-bench reads")


def test_unknown_backend_suggests(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path], edit_manifest: Callable[..., None]
) -> None:
    b = bundle_copy(ort_bundle)
    manifest = json.loads((b / "manifest.json").read_text())
    edit_manifest(b, backend="onnxruntme", engine={**manifest["engine"], "backend": "onnxruntme"})
    assert_one_line_error(bench(b), 2, "Did you mean 'onnxruntime'")


def test_missing_runtime_names_the_pip_extra(
    ort_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robopt_compile.targets.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "runtime_module", "onnxruntime_not_installed_here")
    assert_one_line_error(bench(ort_bundle), 3, "robopt's [onnxruntime] extra")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = bench(tmp_path, "--debug")
    assert r.exit_code == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("robopt-bench: error: ")


def test_bad_option_is_exit_2(ort_bundle: Path) -> None:
    assert bench(ort_bundle, "--runs", "0").exit_code == 2


def test_overhead_mode(bundle: Path) -> None:
    r = bench(bundle, "--overhead", "--runs", "20", "--warmup", "1", "--threads", "1", "--json")
    assert r.exit_code == 0, r.output
    o = json.loads(r.stdout)
    assert o["harness_p50_ms"] > 0 and o["bare_p50_ms"] > 0 and "overhead_pct" in o
    r = bench(bundle, "--overhead", "--runs", "20", "--warmup", "1", "--threads", "1")
    assert r.exit_code == 0 and "harness p50" in r.stdout and "bare p50" in r.stdout


# --- subprocesses: what the robot sees -------------------------------------------------------


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    ("fixture", "runtime", "other"),
    [
        ("ort_bundle", "onnxruntime", "openvino"),
        pytest.param("ov_bundle", "openvino", "onnxruntime", marks=pytest.mark.openvino),
    ],
)
def test_benchmark_imports_only_numpy_click_and_its_runtime(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, runtime: str, other: str
) -> None:
    bundle = str(request.getfixturevalue(fixture))
    heavy = [m for m in HEAVY if m != runtime] + [other]
    code = f"""
import sys, json
from robopt_compile.bench.harness import run_benchmark
r = run_benchmark({bundle!r}, runs=3, warmup=1, threads=1)
assert r["fidelity"]["passed"]
from robopt_compile.bench.cli import main
main([{bundle!r}, "--runs", "3", "--json"], standalone_mode=False)
assert {runtime!r} in sys.modules, "the benchmark did not run the runtime"
print("LOADED=" + json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""
    p = _python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    loaded = json.loads(p.stdout.strip().splitlines()[-1].removeprefix("LOADED="))
    assert loaded == [], f"robopt-bench imported {loaded}"


def test_help_imports_no_numpy_or_runtime(tmp_path: Path) -> None:
    code = """
import sys
from robopt_compile.bench.cli import main
main(["--help"], standalone_mode=False)
print("LOADED=" + ",".join(m for m in ("numpy", "onnxruntime", "openvino") if m in sys.modules))
"""
    p = _python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "BUNDLE" in p.stdout and "--control-rate" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "LOADED="


def _cmd() -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT)]
    return [sys.executable, "-c", "from robopt_compile.bench.cli import main; main()"]


def test_help_starts_fast(tmp_path: Path) -> None:
    subprocess.run([*_cmd(), "--help"], capture_output=True, cwd=tmp_path)  # warm disk caches
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        p = subprocess.run([*_cmd(), "--help"], capture_output=True, text=True, cwd=tmp_path)
        best = min(best, time.perf_counter() - t0)
        assert p.returncode == 0 and "Usage:" in p.stdout
    print(f"robopt-bench --help: {best * 1e3:.0f} ms")
    assert best < 2.0, f"robopt-bench --help took {best:.2f} s (goal: well under 1 s)"


def test_console_script_error_exit_code(tmp_path: Path) -> None:
    p = subprocess.run([*_cmd(), str(tmp_path / "nope")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"robopt-bench: error: bundle folder {str(tmp_path / 'nope')!r} does not exist."
    ]
