"""robopt-compile with quantization: calibration, the accuracy guard, mixed precision, rollback,
quant-report; every accuracy figure must come from held-out samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_one_error_line, leftovers, run_cli

from robopt_compile.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def report(out):
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_static_with_calibration(policy_dir, calib_npz, tmp_path, capsys, backend):
    out = tmp_path / "q"
    code, stdout, err = run_cli(
        ["tiny_policies:make_tiny", "-b", backend, "--precision", "int8",
         "--calibration", str(calib_npz), "-o", str(out), "--threads", "1"], capsys)  # fmt: skip
    assert code == 0, err
    m, q = manifest(out), report(out)["quantization"]
    assert m["precision"] == "int8" and q["rolled_back"] is False
    assert q["pass"] == {"onnxruntime": "int8-static-ort", "openvino": "int8-nncf"}[backend]
    ops = {n.op_type for n in __import__("onnx").load(out / "model.onnx").graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert q["final"]["drop"] <= q["max_accuracy_drop"]
    # every accuracy figure comes from held-out samples, never from calibration samples
    held, cal = set(q["data"]["holdout_ids"]), set(q["data"]["calibration_ids"])
    assert held and cal and not held & cal
    assert set(q["final"]["holdout_ids"]) == held
    # the engine is judged against the fp32 model within the quality it was measured at
    assert m["parity"]["engine"]["passed"] is True
    assert m["reference"]["tolerance"]["rtol"] == 0.0  # quantized: measured-quality bound
    assert "quantization" in stdout


def test_accuracy_is_measured_on_holdout_only(policy_dir, calib_npz, tmp_path, monkeypatch):
    """Fails if any scored sample is a calibration sample."""
    from robopt_compile.compile import accuracy
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model

    scored: list[dict] = []
    real = accuracy.Evaluator.outputs

    def spy(self, model):
        scored.extend(self.holdout)
        return real(self, model)

    monkeypatch.setattr(accuracy.Evaluator, "outputs", spy)
    calibrated: list[dict] = []
    from robopt_compile.passes.quantize import base

    real_init = base.QuantizePass.__init__

    def spy_init(self, calibration=None, *args, **kw):
        calibrated.extend(calibration or [])
        real_init(self, calibration, *args, **kw)

    monkeypatch.setattr(base.QuantizePass, "__init__", spy_init)
    compile_model(
        "tiny_policies:make_tiny", tmp_path / "q",
        CompileOptions(precision="int8", threads=1, quant=QuantOptions(calibration=str(calib_npz))),
    )  # fmt: skip
    assert scored and calibrated
    for s in scored:
        assert not any(np.array_equal(s["image"], c["image"]) for c in calibrated)


def test_int8_needs_calibration(policy_dir, tmp_path, capsys):
    code, _, err = run_cli(
        ["tiny_policies:make_tiny", "--precision", "int8", "-o", str(tmp_path / "q")], capsys
    )
    assert code == EXIT_BAD_INPUT and "needs calibration data" in err
    assert_one_error_line(err)
    assert not (tmp_path / "q").exists() and leftovers(tmp_path) == []


def test_random_calibration_warns(policy_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code, _, err = run_cli(["tiny_policies:make_tiny", "--precision", "int8", "--calibration",
                            "random", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert "meaningless" in err
    assert report(out)["quantization"]["data"]["random"] is True


def test_bad_calibration_data_is_refused(policy_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((4, 1, 3, 16, 16), np.float64), state=np.zeros((4, 1, 4)))
    code, _, err = run_cli(["tiny_policies:make_tiny", "--precision", "int8", "--calibration",
                            str(bad), "-o", str(tmp_path / "q")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "float64" in err
    assert not (tmp_path / "q").exists()


def test_unmeetable_bound_rolls_back_or_fails_strict(policy_dir, tmp_path, capsys):
    out = tmp_path / "w"
    args = ["tiny_policies:make_mlp", "--precision", "int8-dynamic", "--max-accuracy-drop",
            "1e-12"]  # fmt: skip
    code, _, err = run_cli([*args, "-o", str(out)], capsys)
    assert code == 0, err
    assert "rolled back to fp32" in err
    m, q = manifest(out), report(out)["quantization"]
    assert m["precision"] == "fp32" and m["requested_precision"] == "int8-dynamic"
    assert q["rolled_back"] is True and "1e-12" in q["rollback_reason"]
    ops = {n.op_type for n in __import__("onnx").load(out / "model.onnx").graph.node}
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    strict = tmp_path / "s"
    code, _, err = run_cli([*args, "--strict", "-o", str(strict)], capsys)
    assert code == EXIT_CHECK_FAILED and "--strict" in err
    assert not strict.exists() and leftovers(tmp_path) == []


def test_mixed_precision_meets_a_tight_bound(policy_dir, calib_npz, tmp_path, capsys):
    out = tmp_path / "mp"
    code, _, err = run_cli(
        ["tiny_policies:make_tiny", "--precision", "int8", "--calibration", str(calib_npz),
         "--max-accuracy-drop", "0.005", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    q = report(out)["quantization"]
    assert q["full_quantization"]["drop"] > 0.005  # full int8 breaks the bound ...
    mp = q["mixed_precision"]
    assert mp["met"] and mp["fp32_nodes"]  # ... some layers back in fp32 meet it
    assert len(mp["fp32_nodes"]) < len(q["layers"])  # ... and some stay int8
    assert q["final"]["drop"] <= 0.005 and not q["rolled_back"]
    assert any(r["sensitivity"] is not None for r in q["layers"])
    code, text, err = run_cli(["quant-report", str(out)], capsys)
    assert code == 0, err
    assert "sensitivity" in text and "fp32" in text
    code, text, _ = run_cli(["quant-report", str(out), "--json"], capsys)
    assert json.loads(text)["mixed_precision"]["met"] is True


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int4_weight_only(policy_dir, tmp_path, capsys, backend):
    out = tmp_path / "w4"
    code, _, err = run_cli(["tiny_policies:make_mlp", "-b", backend, "--precision", "int4-weight",
                            "--max-accuracy-drop", "0.5", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    m, q = manifest(out), report(out)["quantization"]
    assert m["precision"] == "int4-weight" and not q["rolled_back"]
    assert q["data"]["random"] is True and "random held-out" in q["data_note"]
    ops = {n.op_type for n in __import__("onnx").load(out / "model.onnx").graph.node}
    assert "MatMulNBits" in ops
    assert m["parity"]["engine"]["passed"] is True


def test_dynamic_int8_refuses_conv_nets(policy_dir, tmp_path, capsys):
    code, _, err = run_cli(["tiny_policies:make_tiny", "--precision", "int8-dynamic", "-o",
                            str(tmp_path / "d")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "conv net" in err and "slower" in err
    assert not (tmp_path / "d").exists()


def test_quant_report_on_fp32_bundle(policy_dir, tmp_path, capsys):
    out = tmp_path / "f"
    assert run_cli(["tiny_policies:make_tiny", "-o", str(out)], capsys)[0] == 0
    code, _, err = run_cli(["quant-report", str(out)], capsys)
    assert code == EXIT_BAD_INPUT and "without quantization" in err
    code, _, err = run_cli(["quant-report", str(tmp_path / "nope")], capsys)
    assert code == EXIT_BAD_INPUT


def test_all_layers_fp32_is_a_rollback(policy_dir, calib_npz, tmp_path, capsys):
    out = tmp_path / "z"
    code, _, err = run_cli(["tiny_policies:make_tiny", "--precision", "int8", "--calibration",
                            str(calib_npz), "--max-accuracy-drop", "0", "-o", str(out)],
                           capsys)  # fmt: skip
    assert code == 0, err
    q = report(out)["quantization"]
    assert q["rolled_back"] and manifest(out)["precision"] == "fp32"
    assert all(r["precision"] == "fp32" for r in q["layers"])


def test_bad_user_metrics(policy_dir, calib_npz, tmp_path, capsys, monkeypatch):
    (policy_dir / "badmetrics.py").write_text(
        "def nan(ref, got, inputs):\n    return float('nan')\n"
        "def boom(ref, got, inputs):\n    raise ValueError('boom')\n"
    )
    base = ["tiny_policies:make_tiny", "--precision", "int8", "--calibration", str(calib_npz)]
    # a NaN drop must break the bound, never pass it
    code, _, err = run_cli([*base, "--metric", "badmetrics:nan", "--strict", "-o",
                            str(tmp_path / "n")], capsys)  # fmt: skip
    assert code == EXIT_CHECK_FAILED, err
    code, _, err = run_cli([*base, "--metric", "badmetrics:boom", "-o", str(tmp_path / "b")],
                           capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "--metric badmetrics:boom failed" in err
    assert_one_error_line(err)
    assert leftovers(tmp_path) == []
