"""robopt-compile for boards this machine cannot run: TensorRT deferred builds, OpenVINO
devices, --list-targets saying what builds and runs here."""

from __future__ import annotations

import json

import pytest
from helpers import assert_one_error_line, run_cli

from robopt_compile.errors import EXIT_BAD_INPUT


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_jetson_bundle_is_a_checked_deferred_build(policy_dir, tmp_path, capsys, precision):
    out = tmp_path / f"orin-{precision}"
    args = ["tiny_policies:make_tiny", "--target", "jetson-orin-nano", "--precision", precision,
            "-o", str(out), "--threads", "1"]  # fmt: skip
    if precision == "int8":
        args += ["--calibration", "random"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    m = manifest(out)
    assert m["backend"] == "tensorrt" and m["precision"] == precision
    assert m["target"]["profile"] == "jetson-orin-nano-8gb"
    eng = m["engine"]
    assert eng["config"]["deferred"] is True and eng["config"]["strongly_typed"] is True
    assert {"model.onnx", "build.json", "trtexec.sh"} <= set(eng["files"])
    recipe = json.loads((out / "engine" / "build.json").read_text())
    assert recipe["precision"] == precision
    parity = m["parity"]["engine"]
    assert parity["engine_checked"] is False and parity["checked_in"] == "onnxruntime"
    assert parity["passed"] is True
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["evaluated_in"] == "onnxruntime" and "tensorrt cannot run here" in q["evaluation_note"]
    assert "ONNX fidelity" in stdout and "on the device" in stdout


def test_deferred_bundle_refuses_to_bench_here_with_one_line(policy_dir, tmp_path, capsys):
    from robopt_compile.bench.cli import main as bench_main

    out = tmp_path / "orin"
    code, _, err = run_cli(["tiny_policies:make_tiny", "--target", "jetson-orin-nano",
                            "--precision", "fp16", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    try:
        bench_main([str(out), "--runs", "5"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "deferred TensorRT build" in lines[0] and "trtexec" in lines[0]


def test_dla_core_needs_tensorrt_and_a_dla(policy_dir, tmp_path, capsys):
    code, _, err = run_cli(["tiny_policies:make_tiny", "--dla-core", "0", "-o",
                            str(tmp_path / "a")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "--dla-core needs the tensorrt backend" in err
    assert_one_error_line(err)
    code, _, err = run_cli(["tiny_policies:make_tiny", "--target", "jetson-orin-nano",
                            "--precision", "fp16", "--dla-core", "0", "-o",
                            str(tmp_path / "b")], capsys)  # fmt: skip
    assert code != 0 and "DLA" in err
    assert_one_error_line(err)
    assert not (tmp_path / "b").exists()


def test_list_targets_says_what_builds_and_runs_here(capsys):
    code, out, err = run_cli(["--list-targets", "--json"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["targets"]}
    orin = rows["jetson-agx-orin-64gb"]["backends"]["tensorrt"]
    assert orin["build"] == "deferred" and orin["run"] is False
    assert rows["host"]["backends"]["onnxruntime"] == {
        "build": "yes",
        "run": True,
        "reason": rows["host"]["backends"]["onnxruntime"]["reason"],
    }
    code, out, _ = run_cli(["--list-targets"], capsys)
    assert "jetson-orin-nano-8gb" in out and "build here / run here" in out


def test_two_of_four_bundle_for_orin_enables_sparse_weights(policy_dir, tmp_path, capsys):
    out = tmp_path / "sparse"
    code, _, err = run_cli(["tiny_policies:make_mlp", "--target", "jetson-orin-agx", "--prune",
                            "2:4", "--precision", "fp16", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    cfg = manifest(out)["engine"]["config"]
    assert cfg["sparse_weights"] is True and "SPARSE_WEIGHTS" in cfg["builder_flags"]
    assert "--sparsity=enable" in (out / "engine" / "trtexec.sh").read_text()


def test_host_tvm_build_runs_here(policy_dir, tmp_path, capsys):
    out = tmp_path / "tvm"
    code, _, err = run_cli(["tiny_policies:make_mlp", "--backend", "tvm", "--tune-trials", "0",
                            "--threads", "1", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    m = manifest(out)
    assert m["backend"] == "tvm" and m["engine"]["config"]["cross_compiled"] is False
    assert m["parity"]["engine"]["passed"] is True
    assert m["parity"]["engine"].get("engine_checked", True) is True  # ran here, not a proxy


def test_tvm_runner_leaves_the_process_affinity_alone(policy_dir, tmp_path, capsys):
    import os

    from robopt_compile.targets import Artifact, get_backend

    before = os.sched_getaffinity(0)
    out = tmp_path / "tvm-aff"
    code, _, err = run_cli(["tiny_policies:make_mlp", "--backend", "tvm", "--threads", "1",
                            "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    m = manifest(out)
    art = Artifact.from_json(m["engine"], out / "engine")
    with get_backend("tvm").runner(art, threads=1) as r:
        r.infer({"input": __import__("numpy").zeros((1, 12), "float32")})
    assert os.sched_getaffinity(0) == before


def test_a_deferred_bundle_says_what_was_checked_everywhere(policy_dir, tmp_path, capsys):
    """Issue 15, defect 10: ONNX checked in ONNX Runtime is not an engine PASS."""
    from robopt_compile.bench.results import save_result
    from robopt_compile.report import load_bundle, verdict, write_reports

    out = tmp_path / "orin"
    args = ["tiny_policies:make_tiny", "--target", "jetson-orin", "-o", str(out)]  # an alias
    code, stdout, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    v = json.loads(stdout)["verdict"]
    assert v == {"status": "pending-device", "engine_checked": False, "checked": (
        "ONNX checked in ONNX Runtime; tensorrt engine not built yet: built and checked on the "
        "device by robopt-bench")}  # fmt: skip
    head = (out / "report.md").read_text().splitlines()[0]
    assert head.startswith("⏳ **PENDING") and "tensorrt engine not built yet" in head
    assert "PASS" not in head
    html = (out / "report.html").read_text()
    assert 'class="verdict pending"' in html and "engine not built yet" in html
    code, stdout, err = run_cli([*args, "--force"], capsys)
    assert code == 0 and "PENDING-DEVICE: ONNX checked in ONNX Runtime" in stdout
    # CI that needs a checked engine: exit 4, the bundle is kept for the device
    code, _, err = run_cli([*args, "--force", "--require-engine-check"], capsys)
    assert code == 4 and "engine not checked" in err and (out / "manifest.json").is_file()
    # once robopt-bench has checked the engine on the device, the verdict is the device's
    save_result(out, "bench-orin", {"kind": "bench", "fidelity": {"passed": True, "cosine": 1.0},
                                    "latency": {"p50_ms": 1.0}})  # fmt: skip
    write_reports(out)
    assert verdict(load_bundle(out))[0] == "PASS"
    # a host build is checked here
    host = tmp_path / "host"
    code, stdout, err = run_cli(["tiny_policies:make_tiny", "-o", str(host), "--json"], capsys)
    assert json.loads(stdout)["verdict"]["status"] == "pass"
    assert (host / "report.md").read_text().startswith("✅ **PASS")
    code, _, err = run_cli(["tiny_policies:make_tiny", "-o", str(host), "--force",
                            "--require-engine-check"], capsys)  # fmt: skip
    assert code == 0, err


def test_list_targets_names_the_aliases(capsys):
    code, stdout, _ = run_cli(["--list-targets"], capsys)
    assert code == 0 and "also: jetson-agx-orin, jetson-orin, jetson-orin-agx" in stdout
    code, stdout, _ = run_cli(["--list-targets", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(stdout)["targets"]}
    assert "jetson-orin" in rows["jetson-agx-orin-64gb"]["aliases"]
