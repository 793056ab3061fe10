"""OpenVLA-style models as multi-graph bundles (robopt_compile/multigraph/vla.py, bench/driver.py):
the key/value cache against recomputation, token-by-token parity of the exported graphs with
torch, the driver loop reproducing the torch model's actions, weight compression, manifest
validation of inconsistent bundles, and the 7B estimates."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error_line, run_cli

from robopt_compile.bench.driver import bin_centers, tokens_to_actions
from robopt_compile.bench.manifest import load_manifest
from robopt_compile.errors import EXIT_BAD_INPUT, InputError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    from robopt_compile.zoo.vla import make_vla

    return make_vla("openvla-tiny")


def _compile(out: Path, *extra: str) -> dict:
    from robopt_compile.cli.main import main

    try:
        main(["zoo:openvla-tiny", "--threads", "1", "-o", str(out), "--force", "--json", *extra])
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vla") / "fp32"
    _compile(out)
    return out


def test_detokenization_follows_openvla() -> None:
    cfg = {"vocab_size": 32000, "n_bins": 256, "q01": [-1.0] * 6 + [0.0],
           "q99": [1.0] * 6 + [1.0], "normalized": [True] * 6 + [False]}  # fmt: skip
    centers = bin_centers(256)
    assert centers.shape == (255,) and centers[0] == pytest.approx(-1 + 1 / 255)
    # Token 31999 (the last id) is bin 0; 31744 (vocab - 256) would be bin 255, clipped to 254.
    got = tokens_to_actions(np.array([31999, 31744, 31871, 31999, 31999, 31999, 31744]), cfg)
    assert got[0] == pytest.approx(centers[0]) and got[1] == pytest.approx(centers[254])
    assert got[6] == pytest.approx(centers[254])  # the gripper is not rescaled
    half = tokens_to_actions(np.array([31871] * 7), {**cfg, "q01": [0.0] * 7, "q99": [2.0] * 7})
    assert half[0] == pytest.approx(centers[128] + 1.0)


def test_kv_cache_changes_nothing(tiny) -> None:
    """Greedy decoding with the cache equals recomputing the whole sequence for each token."""
    for seed in range(3):
        obs = tiny.example_inputs(seed)
        with_cache, _ = tiny.predict_action(**obs)
        without, _ = tiny.predict_action(**obs, use_cache=False)
        assert with_cache.tolist() == without.tolist()
    assert len({tuple(tiny.predict_action(**tiny.example_inputs(s))[0]) for s in range(4)}) > 1


def test_llm_graph_token_by_token_against_torch(fp32_bundle: Path, tiny) -> None:
    """The bundle's llm graph in ONNX Runtime: prefill (empty cache) then each decode step,
    logits and cache against torch's, and the same greedy token at every step."""
    import onnxruntime as ort
    import torch

    from robopt_compile.zoo.vla import LlmStep, prompt_embeds

    sess = ort.InferenceSession(str(fp32_bundle / "graphs" / "llm" / "model.onnx"))
    step = LlmStep(tiny)
    obs = tiny.example_inputs(77)
    names = [f"past.{i}.{kv}" for i in range(tiny.config.llm_layers) for kv in "kv"]
    with torch.no_grad():
        x = prompt_embeds(tiny.llm.model.embed_tokens, obs["input_ids"],
                          tiny.vision(obs["pixel_values"]))  # fmt: skip
        ref = step(x, *step.empty_cache())
        empty = {n: t.numpy() for n, t in zip(names, step.empty_cache(), strict=True)}
        feeds = {"inputs_embeds": x.numpy(), **empty}
        for _ in range(7):
            got = sess.run(None, feeds)
            np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-4, rtol=1e-3)
            for g, r in zip(got[1:], ref[1:], strict=True):
                np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=1e-3)
            assert int(np.argmax(got[0])) == int(ref[0].argmax())
            tok = torch.tensor([[tiny.config.vocab_size - 256 + int(ref[0].argmax())]])
            e = tiny.llm.model.embed_tokens(tok)
            feeds = {"inputs_embeds": e.numpy(), **dict(zip(names, got[1:], strict=True))}
            ref = step(e, *ref[1:])


def test_bundle_driver_reproduces_torch_actions(fp32_bundle: Path, tiny) -> None:
    from robopt_compile.bench.harness import run_benchmark

    m = load_manifest(fp32_bundle)
    assert [g["name"] for g in m["graphs"]] == ["vision", "embed", "llm"]
    assert m["driver"]["kind"] == "vla-greedy" and m["parity"]["actions"]["token_agreement"] == 1
    report = json.loads((fp32_bundle / "report.json").read_text())
    assert all(c["passed"] for c in report["graph_checks"].values())
    assert set(report["graph_checks"]) == {"vision", "embed", "llm", "llm-decode"}
    # The stored reference is the torch model's own output on held-out observations.
    with np.load(fp32_bundle / "reference" / "inputs.npz") as i, \
            np.load(fp32_bundle / "reference" / "outputs.npz") as o:  # fmt: skip
        import torch

        tok, act = tiny.predict_action(torch.from_numpy(i["pixel_values"][3]),
                                       torch.from_numpy(i["input_ids"][3]))  # fmt: skip
        assert tok.tolist() == o["tokens"][3].tolist()
        np.testing.assert_allclose(act, o["actions"][3])
    r = run_benchmark(fp32_bundle, runs=5, warmup=1, threads=1)
    assert r["fidelity"]["passed"] and r["fidelity"]["token_agreement"] == 1.0
    assert r["actions_per_s"] > 0 and set(r["graph_ms_p50"]) == {"vision", "embed", "llm"}
    mem = r["memory"]
    if mem["rss_before_load_mib"] is not None:  # Linux: /proc/self/statm
        # In a process that already holds torch and earlier bundles, loading the tiny engines
        # may reuse freed pages: only that every figure is there and sane is checked.
        assert min(mem["rss_before_load_mib"], mem["rss_after_load_mib"]) > 0
        # The kernel's high-water mark lags the current RSS by a few pages.
        assert mem["peak_rss_mib"] >= 0.95 * mem["rss_after_runs_mib"] > 0


def test_int8_weight_bundle_is_smaller_and_its_token_bound_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
    m = _compile(tmp_path / "q", "-b", "onnxruntime", "--precision", "int8-weight",
                 "--max-accuracy-drop", "0.5")  # fmt: skip
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    fp = {g: report["graphs"][g]["weight_bytes_fp32"] for g in ("vision", "embed", "llm")}
    got = {g["name"]: g["weight_bytes"] for g in m["graphs"]}
    assert {g["precision"] for g in m["graphs"]} == {"int8-weight"}
    # The tiny ViT keeps its patch convolution and position table in fp32.
    assert got["llm"] < 0.3 * fp["llm"] and got["embed"] < 0.3 * fp["embed"]
    assert sum(got.values()) < 0.6 * sum(fp.values())
    assert report["fidelity"]["token_agreement"] >= 0.5


def _edit(bundle: Path, dest: Path, fn) -> Path:
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    fn(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_manifest_rejects_an_inconsistent_multi_graph_bundle(
    fp32_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def more_layers(m):
        m["driver"]["config"]["layers"] = 3

    def no_embed(m):
        m["graphs"] = [g for g in m["graphs"] if g["name"] != "embed"]

    def wide_vision(m):
        m["graphs"][0]["outputs"][0]["shape"][-1] += 1

    def unknown_driver(m):
        m["driver"]["kind"] = "beam-search"

    def odd_decode(m):  # an llm-decode graph that does not take what the llm takes
        llm = next(g for g in m["graphs"] if g["name"] == "llm")
        m["graphs"].append({**llm, "name": "llm-decode", "inputs": llm["inputs"][:1]})

    def unknown_runtime(m):
        m["graphs"][0]["backend"] = "coreml"

    cases = {
        "decode": (odd_decode, "graph 'llm-decode' has other inputs than 'llm'"),
        "runtime": (unknown_runtime, "graph 'vision' names an unknown backend 'coreml'"),
        "layers": (more_layers, "llm input 'past.2.k' is missing (driver.config.layers is 3)"),
        "embed": (no_embed, "needs graph(s) ['embed']"),
        "width": (wide_vision, "embedding widths differ"),
        "driver": (unknown_driver, "driver 'beam-search' is not known"),
    }
    for name, (fn, msg) in cases.items():
        bad = _edit(fp32_bundle, tmp_path / name, fn)
        with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")) as info:  # fmt: skip
            load_manifest(bad, verify=False)
        assert "\n" not in str(info.value)
    from robopt_compile.bench.cli import main as bench_main

    with pytest.raises(SystemExit) as exit_:
        bench_main([str(tmp_path / "layers"), "--runs", "2"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err.replace("robopt-bench", "robopt-compile"))


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
        assert code == EXIT_BAD_INPUT and msg in err, err
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


def test_7b_estimates_are_labelled_and_follow_the_roofline() -> None:
    from robopt_compile.hwprofiles import load_profile
    from robopt_compile.multigraph.estimates import estimate, jetson_table, weight_bytes
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


# --- diffusion policy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddim_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robopt_compile.cli.main import main

    out = tmp_path_factory.mktemp("ddim") / "fp32"
    try:
        main(["zoo:diffusion-policy", "--threads", "1", "-o", str(out), "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    return out


def test_ddim_schedule_and_the_unet_shapes() -> None:
    from robopt_compile.bench.driver import ddim_config
    from robopt_compile.zoo.diffusion import make_diffusion

    cfg = ddim_config(100, 10, 16, 7)
    assert cfg["timesteps"] == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    acp = cfg["alpha_cumprod"]
    assert all(a < b for a, b in itertools.pairwise(acp)) and acp[-1] < 1
    assert cfg["alpha_cumprod_prev"][-1] == 1.0  # the last step lands on the clean sample
    with pytest.raises(InputError, match="DDIM steps"):
        ddim_config(100, 0, 16, 7)
    m = make_diffusion()
    r = m.eager_driver().step(m.example_inputs(1))
    assert r.actions.shape == (16, 7) and np.all(np.abs(r.actions) <= 1.0)
    again = m.eager_driver().step(m.example_inputs(1))
    np.testing.assert_array_equal(r.actions, again.actions)  # fixed noise: deterministic


def test_diffusion_bundle_reproduces_the_torch_policy(ddim_bundle: Path) -> None:
    from robopt_compile.bench.harness import run_benchmark

    m = load_manifest(ddim_bundle)
    assert [g["name"] for g in m["graphs"]] == ["encoder", "denoiser"]
    assert m["driver"]["kind"] == "ddim" and m["parity"]["actions"]["action_max_abs"] < 1e-3
    r = run_benchmark(ddim_bundle, runs=3, warmup=1, threads=1)
    assert r["fidelity"]["passed"] and r["fidelity"]["action_max_abs"] < 1e-3
    assert set(r["graph_ms_p50"]) == {"encoder", "denoiser"}
    bad = _edit(ddim_bundle, ddim_bundle.parent / "bad",
                lambda d: d["driver"]["config"]["timesteps"].pop())  # fmt: skip
    with pytest.raises(InputError, match="schedule's lists differ"):
        load_manifest(bad, verify=False)


def test_diffusion_refuses_weight_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["zoo:diffusion-policy", "--precision", "int4-weight", "-o",
                            str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "convolutions" in err and not (tmp_path / "x").exists()


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


def test_diffusion_builds_with_openvino_despite_its_mish_gap(tmp_path: Path) -> None:
    """OpenVINO 2026.4's CPU code generator has no Mish kernel for the encoder's graph: the
    build retries without snippets, records it, and the runner uses the same setting."""
    from robopt_compile.cli.main import main

    out = tmp_path / "ov"
    try:
        main(["zoo:diffusion-policy", "-b", "openvino", "--threads", "1", "-o", str(out),
              "--json"])  # fmt: skip
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    m = load_manifest(out)
    assert m["parity"]["actions"]["action_max_abs"] < 1e-3
    enc = next(g for g in m["graphs"] if g["name"] == "encoder")["engine"]["config"]
    if "snippets_mode" in enc:  # only where the installed OpenVINO lacks the kernel
        assert enc["snippets_mode"] == "DISABLE" and "Mish" in enc["snippets_note"]


def test_remote_benchmark_of_a_multi_graph_bundle(fp32_bundle: Path, tmp_path: Path) -> None:
    """robopt-bench serve runs the driver loop on the robot side; every graph's engine path
    is confined to the bundle (422 before anything runs)."""
    from robopt_compile.bench.remote import remote_benchmark
    from robopt_compile.bench.serve import BenchServer

    token = "vla-test-token-0123456789abcdef"
    srv = BenchServer(token, port=0, work_dir=tmp_path / "work", log=lambda line: None).start()
    try:
        r = remote_benchmark(fp32_bundle, srv.url, token, runs=2, warmup=0, threads=1)
        assert r["driver"] == "vla-greedy" and r["fidelity"]["passed"]

        def escape(m: dict) -> None:
            m["graphs"][2]["engine"]["config"]["model"] = "../../x.onnx"

        bad = _edit(fp32_bundle, tmp_path / "bad", escape)
        with pytest.raises(InputError, match=r"graphs\[llm\]\.engine\.config\.model"):
            remote_benchmark(bad, srv.url, token, runs=2, retries=0, verify=False)
    finally:
        srv.close(grace_s=5)


def test_int8_quantizes_the_vision_encoder_statically(tmp_path: Path) -> None:
    m = _compile(tmp_path / "s", "--precision", "int8", "--max-accuracy-drop", "0.5")
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    vision = report["graphs"]["vision"]
    assert vision["pass"].startswith("static int8") and "quantization" in vision
    q = vision["quantization"]
    assert q["final"]["drop"] <= 0.01 or q["rolled_back"]  # the guard's bound on image_embeds
    precisions = {g["name"]: g["precision"] for g in m["graphs"]}
    assert precisions == {"vision": "fp32" if q["rolled_back"] else "int8",
                          "embed": "int8-weight", "llm": "int8-weight"}  # fmt: skip


def test_missing_transformers_is_one_line_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "transformers" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    code, _, err = run_cli(["zoo:openvla-tiny", "-o", str(tmp_path / "x")], capsys)
    assert code == 3 and "robopt-compile[vla]" in err and not (tmp_path / "x").exists()
    assert_one_error_line(err)


def _host_has_bf16() -> bool:
    from robopt_compile.hwprofiles.host import detect_host

    return "bf16" in detect_host().precisions


@pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no bf16 arithmetic")
def test_bf16_activations_reach_every_engine_and_are_judged_by_the_actions(
    tmp_path: Path,
) -> None:
    """--activations bf16 (OpenVINO): INT8 weights, bf16 arithmetic in every graph's engine
    (the hint travels in the manifest), judged like a quantized bundle on the actions;
    --precision bf16 for the diffusion policy computes both graphs in bf16 within its bound."""
    m = _compile(tmp_path / "vla", "-b", "openvino", "--precision", "int8-weight",
                 "--activations", "bf16", "--max-accuracy-drop", "0.5")  # fmt: skip
    assert m["build"]["activations"] == "bf16" and m["precision"] == "int8-weight"
    assert {g["engine"]["config"]["inference_precision_hint"] for g in m["graphs"]} == {"bf16"}
    assert m["parity"]["actions"]["passed"]
    from robopt_compile.cli.main import main

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


def test_unchanged_multi_graph_rebuild_restores_the_checked_bundle(tmp_path: Path) -> None:
    """A second identical VLA compile restores the stored bundle from the build cache (every
    file's hash verified) instead of exporting, building and checking again; a changed
    option is a new build."""
    import time

    args = ("--precision", "int8-weight", "--seed", "7", "--max-accuracy-drop", "0.6")
    first = _compile(tmp_path / "a", *args)
    assert "cache" not in json.loads((tmp_path / "a" / "report.json").read_text())
    t = time.perf_counter()
    again = _compile(tmp_path / "b", *args)
    took = time.perf_counter() - t
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["cache"]["bundle"]["cache"] == "hit", rep.get("cache")
    assert rep["cache"]["bundle"]["reused"] == ["graph checks", "action fidelity", "report"]
    assert "export" not in rep["stage_seconds"] and "reuse" in rep["stage_seconds"]
    assert took < 10, took  # a cold tiny compile exports two graphs (~15 s here)
    same = {k: v for k, v in first["files"].items() if k != "report.json"}
    assert {k: v for k, v in again["files"].items() if k != "report.json"} == same
    load_manifest(tmp_path / "b", verify=True)  # the restored files hash right
    _compile(tmp_path / "c", *args[:-1], "0.7")  # another bound: built afresh
    assert "cache" not in json.loads((tmp_path / "c" / "report.json").read_text())


def test_manifest_knows_every_runtime() -> None:
    from robopt_compile.bench.manifest import RUNTIMES
    from robopt_compile.targets import TARGETS

    assert set(RUNTIMES) == set(TARGETS)


def test_decode_steps_on_a_second_runtime(tmp_path: Path) -> None:
    """--decode-backend: the prefill on OpenVINO, the decode steps on an ONNX Runtime build of
    the same llm graph (llm-decode). At fp32 both reproduce torch: every token, every graph
    check; robopt-bench loads each graph with its own runtime and runs the decode on it."""
    from robopt_compile.bench.harness import run_benchmark

    out = tmp_path / "hybrid"
    m = _compile(out, "-b", "openvino", "--decode-backend", "onnxruntime")
    graphs = {g["name"]: g for g in m["graphs"]}
    assert list(graphs) == ["vision", "embed", "llm", "llm-decode"]
    assert {g: graphs[g]["backend"] for g in graphs} == {
        "vision": "openvino", "embed": "openvino", "llm": "openvino",
        "llm-decode": "onnxruntime"}  # fmt: skip
    assert graphs["llm-decode"]["engine"]["backend"] == "onnxruntime"
    assert graphs["llm-decode"]["inputs"] == graphs["llm"]["inputs"]
    assert m["parity"]["actions"]["token_agreement"] == 1.0
    report = json.loads((out / "report.json").read_text())
    assert all(c["passed"] for c in report["graph_checks"].values())
    assert report["graphs"]["llm-decode"]["backend"] == "onnxruntime"
    r = run_benchmark(out, runs=3, warmup=1, threads=1)
    assert r["fidelity"]["passed"] and r["fidelity"]["token_agreement"] == 1.0
    assert set(r["graph_ms_p50"]) == {"vision", "embed", "llm", "llm-decode"}
    assert r["graph_ms_p50"]["llm-decode"] > 0
    assert r["machine"]["runtime"] == "openvino" and "onnxruntime" in r["machine"]["other_runtimes"]
    # A robot without the decode graph's runtime is told so before the upload.
    import time

    from robopt_compile.bench.remote import remote_benchmark
    from robopt_compile.bench.serve import BenchServer
    from robopt_compile.errors import BackendUnavailableError

    token = "vla-test-token-0123456789abcdef"
    srv = BenchServer(token, port=0, work_dir=tmp_path / "work", log=lambda line: None).start()
    try:
        srv._runtimes = (
            time.monotonic(),
            {
                "openvino": {"available": True},
                "onnxruntime": {"available": False, "reason": "onnxruntime is not installed"},
            },
        )
        with pytest.raises(BackendUnavailableError, match="cannot run backend 'onnxruntime'"):
            remote_benchmark(out, srv.url, token, runs=2, retries=0)
    finally:
        srv.close(grace_s=5)
    # Weight-only: the decode graph gets ONNX Runtime's MatMulNBits (accuracy level 4).
    q = _compile(tmp_path / "int4", "-b", "openvino", "--decode-backend", "onnxruntime",
                 "--precision", "int4-weight", "--max-accuracy-drop", "1")  # fmt: skip
    rep = json.loads((tmp_path / "int4" / "report.json").read_text())
    dec = rep["graphs"]["llm-decode"]
    assert dec["pass"] == "weight-only-ort" and dec["precision"] == "int4-weight"
    assert rep["graphs"]["llm"]["pass"] == "weight-only-nncf"
    import onnx

    nodes = onnx.load(str(tmp_path / "int4" / "graphs" / "llm-decode" / "model.onnx")).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert nbits and all(onnx.helper.get_attribute_value(a) == 4 for n in nbits
                         for a in n.attribute if a.name == "accuracy_level")  # fmt: skip
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nbits)
    assert {g["name"]: g["backend"] for g in q["graphs"]}["llm-decode"] == "onnxruntime"


def test_without_a_backend_a_compressed_vla_gets_the_measured_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No -b and a weight-only precision: OpenVINO, bf16 arithmetic where the target has it,
    the decode steps on ONNX Runtime, said in a note; what the user chose is kept, and fp32
    or an explicit backend is left alone."""
    from robopt_compile.compile.pipeline import CompileOptions, resolve_backend
    from robopt_compile.hwprofiles import load_profile
    from robopt_compile.multigraph.vla import default_recipe

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
    from robopt_compile.multigraph.vla import validate

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


class _Sleeper:
    def __init__(self, ms: float) -> None:
        self.ms, self.calls = ms, 0

    def infer(self, feeds: dict) -> dict:
        import time

        self.calls += 1
        time.sleep(self.ms / 1e3)
        return {}


def test_decode_auto_keeps_the_second_runtime_only_when_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """choose_decode times both runners interleaved (one warm-up each) and keeps llm-decode
    at <= 0.9x the llm's step; a dropped decode graph leaves no file and no manifest entry."""
    from robopt_compile.multigraph import vla as vla_compile
    from robopt_compile.multigraph.vla import choose_decode

    fast, slow = _Sleeper(2), _Sleeper(12)
    got = choose_decode({"llm": slow, "llm-decode": fast}, {}, rounds=3)
    assert got["kept"] and fast.calls == slow.calls == 4
    assert got["ms_per_step"]["llm-decode"] < got["ms_per_step"]["llm"]
    assert not choose_decode({"llm": fast, "llm-decode": slow}, {}, rounds=3)["kept"]
    same = _Sleeper(5)
    assert not choose_decode({"llm": same, "llm-decode": same}, {}, rounds=3)["kept"]
    # Through the compiler: a second runtime that never pays is dropped after measuring.
    monkeypatch.setattr(vla_compile, "DECODE_KEEP_RATIO", 0.0)
    m = _compile(tmp_path / "d", "-b", "openvino", "--decode-backend", "auto")
    assert [g["name"] for g in m["graphs"]] == ["vision", "embed", "llm"]
    assert not (tmp_path / "d" / "graphs" / "llm-decode").exists()
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    assert rep["decode_choice"]["kept"] is False and "llm-decode" not in rep["graphs"]
    assert m["parity"]["actions"]["token_agreement"] == 1.0
    load_manifest(tmp_path / "d", verify=True)  # the hashed files are the bundle's
