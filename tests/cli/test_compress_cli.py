"""robopt-compile with --prune / --low-rank / --distill: the compression stage end to end, its
held-out guard, rollback, composition with int8, and one-line errors for bad specs."""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import assert_one_error_line, leftovers, run_cli
from onnx import numpy_helper

from robopt_compile.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def report(out):
    return json.loads((out / "report.json").read_text())


def weights(out) -> dict[str, tuple[int, ...]]:
    m = onnx.load(out / "model.onnx")
    return {t.name: tuple(t.dims) for t in m.graph.initializer}


def test_channel_pruning_bundle(policy_dir, calib_npz, tmp_path, capsys):
    out = tmp_path / "p"
    code, stdout, err = run_cli(
        ["tiny_policies:make_tiny", "--prune", "channels:0.5", "--calibration", str(calib_npz),
         "-o", str(out), "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    # conv is the first layer (protected), head writes the output: fc's 16 units lose 8
    assert weights(out)["fc.weight"] == (8, 12) and weights(out)["head.weight"] == (3, 8)
    c = report(out)["compression"]
    step = c["steps"][0]
    assert step["pass"] == "prune-channels" and step["rolled_back"] is False
    assert step["report"]["criterion"] == "activation"  # the default with real calibration data
    assert step["figures_before"]["drop"] == 0.0
    assert step["report"]["totals"]["channels_removed"] == 8
    held, cal = set(c["data"]["holdout_ids"]), set(c["data"]["calibration_ids"])
    assert held and cal and not held & cal
    assert step["figures"]["samples"] == len(held)
    assert step["figures"]["drop"] > 0  # a real change, measured
    # the engine reproduces the pruned model (fp32 tolerance), not the unpruned source
    m = manifest(out)
    assert m["parity"]["engine"]["passed"] is True
    assert m["reference"]["tolerance"]["cosine_min"] == 0.9999
    assert "prune-channels" in stdout and "MACs" in stdout


def test_bound_rolls_back_or_fails_strict(policy_dir, calib_npz, tmp_path, capsys):
    out = tmp_path / "rb"
    args = ["tiny_policies:make_tiny", "--prune", "channels:0.5", "--calibration",
            str(calib_npz), "--max-accuracy-drop", "1e-9", "--threads", "1"]  # fmt: skip
    code, _, err = run_cli([*args, "-o", str(out)], capsys)
    assert code == 0, err
    step = report(out)["compression"]["steps"][0]
    assert step["rolled_back"] is True and "breaks --max-accuracy-drop" in step["rollback_reason"]
    assert weights(out)["fc.weight"] == (16, 12)  # the bundle keeps the unpruned model
    assert "rolled back prune-channels" in err
    strict = tmp_path / "strict"
    code, _, err = run_cli([*args, "--strict", "-o", str(strict)], capsys)
    assert code == EXIT_CHECK_FAILED
    assert_one_error_line(err)
    assert not strict.exists() and not leftovers(tmp_path)


def test_prune_then_int8_compose(policy_dir, calib_npz, tmp_path, capsys):
    out = tmp_path / "pq"
    code, _, err = run_cli(
        ["tiny_policies:make_tiny", "--prune", "channels:0.5", "--precision", "int8",
         "--calibration", str(calib_npz), "-o", str(out), "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    r = report(out)
    assert r["compression"]["steps"][0]["rolled_back"] is False
    assert r["quantization"]["rolled_back"] is False
    ops = {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    assert "QuantizeLinear" in ops
    heads = [t for t in onnx.load(out / "model.onnx").graph.initializer
             if t.name.startswith("head.weight") and len(t.dims) == 2]  # fmt: skip
    assert heads and all(numpy_helper.to_array(t).shape == (3, 8) for t in heads)


def test_low_rank_rank_budget_and_energy_error(policy_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    code, _, err = run_cli(
        ["tiny_policies:make_mlp", "--low-rank", "rank=0.25", "-o", str(out), "--threads", "1"],
        capsys,
    )
    assert code == 0, err
    step = report(out)["compression"]["steps"][0]
    assert step["pass"] == "low-rank" and step["report"]["totals"]["factorized"] >= 1
    # A random 64x64 matrix needs nearly full rank for 99.9% energy: no saving, clear error.
    bad = tmp_path / "lr-bad"
    code, _, err = run_cli(
        ["tiny_policies:make_mlp", "--low-rank", "energy=0.999", "-o", str(bad)], capsys
    )
    assert code == EXIT_BAD_INPUT
    assert_one_error_line(err)
    assert "low-rank" in err and not bad.exists()


def test_distillation_recovers_on_held_out(policy_dir, tmp_path, capsys):
    out = tmp_path / "d"
    code, _, err = run_cli(
        ["tiny_policies:make_mlp", "--prune", "channels:0.5", "--distill", "steps=150",
         "-o", str(out), "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    step = report(out)["compression"]["steps"][0]
    assert step["report"]["criterion"] == "l1"  # no --calibration: data-free importance
    assert step["distillation"]["steps"] == 150
    before, after = step["figures_before_distillation"], step["figures"]
    assert after["relative_l2"] < before["relative_l2"]
    assert manifest(out)["parity"]["engine"]["passed"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prune", "foo:1"], "unknown kind"),
        (["--prune", "channels"], "needs a ratio"),
        (["--prune", "channels:0.5,criterion=taylor"], "unknown pruning criterion"),
        (["--prune", "channels:0.5,bogus=1"], "unknown option"),
        (["--prune", "channels:1.5"], "[0, 1)"),
        (["--distill", "steps=10"], "need --prune channels"),
        (["--prune", "2:4", "--prune-layer", "fc=0.2"], "add --prune channels"),
        (["--low-rank", "energy=0.9,rank=0.5"], "exactly one"),
        (["--prune", "channels:0.5", "--distill", "steps=x"], "not a number"),
        (["--prune", "channels:0.5,criterion=activation"], "needs calibration"),
    ],
)
def test_bad_specs_fail_fast_with_one_line(policy_dir, tmp_path, capsys, args, needle):
    out = tmp_path / "bad"
    code, _, err = run_cli(["tiny_policies:make_tiny", *args, "-o", str(out)], capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_error_line(err)
    assert needle in err
    assert "export" not in err  # refused before the slow export
    assert not out.exists()


def test_two_of_four_marks_bundle_for_tensorrt(policy_dir, tmp_path, capsys):
    from robopt_compile.passes.prune.semi_structured import check_pattern

    out = tmp_path / "s24"
    code, _, err = run_cli(
        ["tiny_policies:make_mlp", "--prune", "2:4", "-o", str(out), "--threads", "1"], capsys
    )
    assert code == 0, err
    rep = report(out)["compression"]["steps"][0]["report"]
    eligible = [r for r in rep["rows"] if r["eligible"]]
    assert eligible and all(r["pattern_verified"] for r in eligible)
    assert rep["note"].startswith("no speedup on dense CPU backends")
    assert manifest(out)["build"]["sparsity"] == "2:4"
    m = onnx.load(out / "model.onnx")
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for r in eligible:
        assert check_pattern(w[r["weight"]], r["axis"])


def test_unstructured_bundle_is_stored_compressed_and_benchmarks(policy_dir, tmp_path, capsys):
    from robopt_compile.bench.cli import main as bench_main

    out = tmp_path / "u"
    code, _, err = run_cli(
        ["tiny_policies:make_mlp", "--prune", "unstructured:0.8,scope=layer", "-o", str(out),
         "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    eng = manifest(out)["engine"]
    assert eng["compressed"]["method"] in ("lzma", "gzip")
    stored = list((out / "engine").iterdir())
    assert stored and all(p.suffix in (".xz", ".gz") for p in stored)
    raw = sum(f["original_bytes"] for f in eng["compressed"]["files"].values())
    assert sum(p.stat().st_size for p in stored) < 0.6 * raw
    try:
        bench_main([str(out), "--runs", "20", "--json"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["fidelity"]["passed"] is True
