"""Compiling OpenVLA-style models (robopt_compile/compile/multigraph/vla.py): weight compression and
its token bound, static int8 for the vision encoder, bf16 activations, the default recipe
without ``-b``, the build cache, a local model folder, refusals in one line, and the 7B
estimates."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error_line, run_cli

from robopt_compile.bench.manifest import load_manifest
from robopt_compile.errors import EXIT_BAD_INPUT, InputError

pytest.importorskip("transformers")


def test_int8_weight_bundle_is_smaller_and_its_token_bound_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compile_vla: Callable[..., dict]
) -> None:
    """INT8 weights shrink every graph; the bundle is written only when the action tokens
    agree with fp32 at least 1 - --max-accuracy-drop (default 95%), else one line, exit 4."""
    args = ["zoo:openvla-tiny", "--threads", "1", "--precision", "int8-weight", "-b", "onnxruntime"]
    code, _, err = run_cli([*args, "-o", str(tmp_path / "strict")], capsys)
    if code == 0:
        rep = json.loads((tmp_path / "strict" / "report.json").read_text())
        assert rep["fidelity"]["token_agreement"] >= 0.95
    else:
        assert code == 4 and "of the action tokens agree" in err, err
        assert_one_error_line(err)
        assert not (tmp_path / "strict").exists()
    m = compile_vla(tmp_path / "q", "-b", "onnxruntime", "--precision", "int8-weight",
                 "--max-accuracy-drop", "0.5")  # fmt: skip
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    fp = {g: report["graphs"][g]["weight_bytes_fp32"] for g in ("vision", "embed", "llm")}
    got = {g["name"]: g["weight_bytes"] for g in m["graphs"]}
    assert {g["precision"] for g in m["graphs"]} == {"int8-weight"}
    # The tiny ViT keeps its patch convolution and position table in fp32.
    assert got["llm"] < 0.3 * fp["llm"] and got["embed"] < 0.3 * fp["embed"]
    assert sum(got.values()) < 0.6 * sum(fp.values())
    assert report["fidelity"]["token_agreement"] >= 0.5


def test_int8_quantizes_the_vision_encoder_statically(
    tmp_path: Path, compile_vla: Callable[..., dict]
) -> None:
    m = compile_vla(tmp_path / "s", "--precision", "int8", "--max-accuracy-drop", "0.5")
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    vision = report["graphs"]["vision"]
    assert vision["pass"].startswith("static int8") and "quantization" in vision
    q = vision["quantization"]
    assert q["final"]["drop"] <= 0.01 or q["rolled_back"]  # the guard's bound on image_embeds
    precisions = {g["name"]: g["precision"] for g in m["graphs"]}
    assert precisions == {"vision": "fp32" if q["rolled_back"] else "int8",
                          "embed": "int8-weight", "llm": "int8-weight"}  # fmt: skip


def _host_has_bf16() -> bool:
    from robopt_compile.hwprofiles.host import detect_host

    return "bf16" in detect_host().precisions


@pytest.mark.may_skip  # CI's CPU changes between runs; some have no bf16
@pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no bf16 arithmetic")
def test_bf16_activations_reach_every_engine_and_are_judged_by_the_actions(
    tmp_path: Path, compile_vla: Callable[..., dict]
) -> None:
    """--activations bf16 (OpenVINO): INT8 weights, bf16 arithmetic in every graph's engine
    (the hint travels in the manifest), judged like a quantized bundle on the actions;
    --precision bf16 for the diffusion policy computes both graphs in bf16 within its bound."""
    m = compile_vla(tmp_path / "vla", "-b", "openvino", "--precision", "int8-weight",
                 "--activations", "bf16", "--max-accuracy-drop", "0.5")  # fmt: skip
    assert m["build"]["activations"] == "bf16" and m["precision"] == "int8-weight"
    assert {g["engine"]["config"]["inference_precision_hint"] for g in m["graphs"]} == {"bf16"}
    assert m["parity"]["actions"]["passed"]
    from robopt_compile.cli import main

    out = tmp_path / "dp"
    try:
        main(["zoo:diffusion-policy", "-b", "openvino", "--precision", "bf16", "--threads", "1",
              "-o", str(out), "--json"])  # fmt: skip
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    d = load_manifest(out)
    assert d["precision"] == "bf16" and d["build"]["activations"] == "bf16"
    assert {g["engine"]["config"]["inference_precision_hint"] for g in d["graphs"]} == {"bf16"}
    fid = d["parity"]["actions"]
    # bf16 is not exact (fp32 must match within 1e-3) but stays inside the 5% default bound.
    assert fid["passed"] and 0 < fid["relative_l2"] <= 0.05


def test_without_a_backend_a_compressed_vla_gets_the_measured_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No -b and a weight-only precision: OpenVINO, bf16 arithmetic where the target has it,
    the decode steps on ONNX Runtime, said in a note; what the user chose is kept, and fp32
    or an explicit backend is left alone."""
    from robopt_compile.compile.multigraph.vla import default_recipe
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.resolve import resolve_backend
    from robopt_compile.hwprofiles import load_profile

    host = load_profile("host")
    ort = resolve_backend(host, "onnxruntime")
    bf16 = "bf16" if "bf16" in host.precisions else None
    opts, backend, note = default_recipe(CompileOptions(precision="int4-weight"), host, ort)
    assert (backend.name, opts.backend, opts.activations, opts.decode_backend) == (
        "openvino", "openvino", bf16, "auto")  # fmt: skip
    assert "decode steps on onnxruntime if they measure faster here" in note
    kept, _, _ = default_recipe(
        CompileOptions(precision="int8-weight", activations="fp32", decode_backend="openvino"),
        host, ort)  # fmt: skip
    assert (kept.backend, kept.activations, kept.decode_backend) == ("openvino", "fp32",
                                                                      "openvino")  # fmt: skip
    for untouched in (CompileOptions(precision="fp32"),
                      CompileOptions(precision="int4-weight", backend="onnxruntime")):  # fmt: skip
        assert default_recipe(untouched, host, ort) == (untouched, ort, None)
    no_ov = replace(host, backends=("onnxruntime",))
    assert default_recipe(CompileOptions(precision="int4-weight"), no_ov, ort)[2] is None
    # auto adds the second runtime only where it can be timed: this machine, not a Jetson.
    from robopt_compile.compile.multigraph.vla import validate

    auto = CompileOptions(precision="int4-weight", decode_backend="auto")
    assert validate(auto, host, resolve_backend(host, "openvino"))[2].name == "onnxruntime"
    nano = load_profile("jetson-orin-nano-8gb")
    assert validate(auto, nano, resolve_backend(nano, "onnxruntime"))[2] is None
    # From the command line: the bundle is what the note says.
    args = ["zoo:openvla-tiny", "--threads", "1", "--precision", "int4-weight"]
    code, _, err = run_cli([*args, "--max-accuracy-drop", "1", "-o", str(tmp_path / "v")], capsys)
    assert code == 0, err
    assert "if they measure faster here" in err and "decode step here: onnxruntime" in err
    m = load_manifest(tmp_path / "v")
    assert m["backend"] == "openvino" and m["build"].get("activations") == (bf16 or "f32")
    choice = json.loads((tmp_path / "v" / "report.json").read_text())["decode_choice"]
    assert set(choice["ms_per_step"]) == {"llm", "llm-decode"} and choice["rounds"] >= 5
    names = [g["name"] for g in m["graphs"]]
    assert ("llm-decode" in names) == choice["kept"]
    assert (tmp_path / "v" / "graphs" / "llm-decode").exists() == choice["kept"]


def test_unchanged_multi_graph_rebuild_restores_the_checked_bundle(
    tmp_path: Path, compile_vla: Callable[..., dict]
) -> None:
    """A second identical VLA compile restores the stored bundle from the build cache (every
    file's hash verified) instead of exporting, building and checking again; a changed
    option is a new build."""
    import time

    args = ("--precision", "int8-weight", "--seed", "7", "--max-accuracy-drop", "0.6")
    first = compile_vla(tmp_path / "a", *args)
    assert "cache" not in json.loads((tmp_path / "a" / "report.json").read_text())
    t = time.perf_counter()
    again = compile_vla(tmp_path / "b", *args)
    took = time.perf_counter() - t
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["cache"]["bundle"]["cache"] == "hit", rep.get("cache")
    assert rep["cache"]["bundle"]["reused"] == ["graph checks", "action fidelity", "report"]
    assert "export" not in rep["stage_seconds"] and "reuse" in rep["stage_seconds"]
    assert took < 10, took  # a cold tiny compile exports two graphs (~15 s here)
    same = {k: v for k, v in first["files"].items() if k != "report.json"}
    assert {k: v for k, v in again["files"].items() if k != "report.json"} == same
    load_manifest(tmp_path / "b", verify=True)  # the restored files hash right
    compile_vla(tmp_path / "c", *args[:-1], "0.7")  # another bound: built afresh
    assert "cache" not in json.loads((tmp_path / "c" / "report.json").read_text())


def test_a_local_model_folder_compiles_like_the_zoo_model(
    fp32_bundle: Path, tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robopt_compile.zoo.vla import save_folder

    folder = tmp_path / "hf"
    save_folder(tiny, folder)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    code, _, err = run_cli([str(folder), "--threads", "1", "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["model"]["source_kind"] == "folder" and m["parity"]["actions"]["token_agreement"] == 1
    with np.load(tmp_path / "b" / "reference" / "outputs.npz") as a, \
            np.load(fp32_bundle / "reference" / "outputs.npz") as b:  # fmt: skip
        assert a["tokens"].tolist() == b["tokens"].tolist()  # the same weights, the same actions
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    code, _, err = run_cli([str(other), "-o", str(tmp_path / "c")], capsys)
    assert code == EXIT_BAD_INPUT and "LlamaForCausalLM" in err and not (tmp_path / "c").exists()
    assert_one_error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli([str(empty), "-o", str(tmp_path / "d")], capsys)
    assert code == EXIT_BAD_INPUT and "without config.json" in err


def test_vla_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra, msg in ((["--precision", "int8-dynamic"], "not built for a VLA"),
                       (["-b", "tvm"], "onnxruntime or openvino"),
                       (["-b", "onnxruntime", "--activations", "bf16"], "pass -b openvino"),
                       (["-b", "onnxruntime", "--precision", "bf16"], "does not build 'bf16'"),
                       (["-b", "openvino", "--precision", "bf16", "--decode-backend",
                         "onnxruntime"], "not bf16: drop --decode-backend"),
                       (["--target", "jetson-orin-nano-8gb", "-b", "onnxruntime", "--precision",
                         "int4-weight", "--decode-backend", "openvino"],
                        "does not list openvino among its backends"),
                       ):  # fmt: skip
        code, _, err = run_cli(["zoo:openvla-tiny", "-o", str(tmp_path / "x"), *extra], capsys)
        # a host CPU without bf16 arithmetic refuses bf16 first, and as plainly
        no_bf16 = "bf16" in extra and "does not support precision 'bf16'" in err
        assert code == EXIT_BAD_INPUT and (msg in err or no_bf16), err
        assert_one_error_line(err)
        assert not (tmp_path / "x").exists()
    # --activations is for multi-graph bundles; a single-graph policy has --precision bf16.
    code, _, err = run_cli(["zoo:state-mlp", "-b", "openvino", "--activations", "bf16", "-o",
                            str(tmp_path / "y")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "use --precision bf16" in err, err
    assert_one_error_line(err)
    assert not (tmp_path / "y").exists()
    for source, msg in (("zoo:state-mlp", "drop it for a single-graph policy"),
                        ("zoo:diffusion-policy", "has no decode steps")):  # fmt: skip
        code, _, err = run_cli([source, "--decode-backend", "onnxruntime", "-o",
                                str(tmp_path / "z")], capsys)  # fmt: skip
        assert code == EXIT_BAD_INPUT and msg in err, err
        assert_one_error_line(err)
        assert not (tmp_path / "z").exists()
    from robopt_compile.zoo import load_zoo

    with pytest.raises(InputError, match="multi-graph vla model"):
        load_zoo("openvla-tiny")


def test_missing_transformers_is_one_line_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "transformers" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    code, _, err = run_cli(["zoo:openvla-tiny", "-o", str(tmp_path / "x")], capsys)
    assert code == 3 and "[vla] extra" in err and not (tmp_path / "x").exists()
    assert_one_error_line(err)


def test_7b_estimates_are_labelled_and_follow_the_roofline() -> None:
    from robopt_compile.compile.multigraph.estimates import estimate, jetson_table, weight_bytes
    from robopt_compile.hwprofiles import load_profile
    from robopt_compile.zoo.vla import OPENVLA_7B

    n = OPENVLA_7B.parameter_counts()
    assert 7.3e9 < n["total"] < 7.7e9  # OpenVLA-7B has 7.5B parameters
    bf16, int4 = weight_bytes(OPENVLA_7B, "bf16"), weight_bytes(OPENVLA_7B, "int4-weight")
    assert 14e9 < bf16["total"] < 16e9 and 4.5e9 < int4["total"] < 6e9
    nano = load_profile("jetson-orin-nano-8gb")
    e = estimate(OPENVLA_7B, nano, "int4-weight")
    assert e["estimate"] is True and e["fits_in_memory"]
    bw = nano.memory_bandwidth_gbs.value * 1e9
    head = int4["lm_head"] * 256 / OPENVLA_7B.vocab_size
    assert e["decode_ms_min"] == pytest.approx((int4["llm_layers"] + head) / bw * 1e3)
    assert not estimate(OPENVLA_7B, nano, "bf16")["fits_in_memory"]  # 15 GB on an 8 GB board
    rows = jetson_table(OPENVLA_7B)
    assert {r["profile"] for r in rows} >= {"jetson-orin-nano-8gb", "jetson-agx-orin-64gb"}
    with pytest.raises(ValueError, match="estimates"):
        from robopt_compile.zoo.vla import make_vla

        make_vla("openvla-7b")


def test_weight_passes_run_through_the_pass_runner(compile_vla, tmp_path: Path) -> None:
    """Issue 16: the VLA's weight passes get what single graphs get: --dump-ir, pass timing."""
    pytest.importorskip("transformers")
    dump = tmp_path / "ir"
    out = tmp_path / "w8"
    compile_vla(out, "-b", "onnxruntime", "--precision", "int8-weight", "--dump-ir", str(dump),
                "--max-accuracy-drop", "1")  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    llm = report["graphs"]["llm"]
    assert llm["pass"] == "weight-only-ort" and llm["pass_seconds"] > 0
    assert (dump / "llm" / "00-input.onnx").is_file()
    assert (dump / "llm" / "01-weight-only-ort.onnx").is_file()
