"""The decode loop of OpenVLA-style bundles (compile/multigraph/vla.py, bench/driver.py):
token-to-action detokenization, the key/value cache against recomputation, the llm graph token
by token against torch, and the decode steps on a second runtime (``--decode-backend``, timed
by ``choose_decode``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.bench.driver import bin_centers, tokens_to_actions
from robopt_compile.bench.manifest import load_manifest

pytest.importorskip("transformers")


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


def test_decode_steps_on_a_second_runtime(tmp_path: Path, compile_vla: Callable[..., dict]) -> None:
    """--decode-backend: the prefill on OpenVINO, the decode steps on an ONNX Runtime build of
    the same llm graph (llm-decode). At fp32 both reproduce torch: every token, every graph
    check; robopt-bench loads each graph with its own runtime and runs the decode on it."""
    from robopt_compile.bench.harness import run_benchmark

    out = tmp_path / "hybrid"
    m = compile_vla(out, "-b", "openvino", "--decode-backend", "onnxruntime")
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
    q = compile_vla(tmp_path / "int4", "-b", "openvino", "--decode-backend", "onnxruntime",
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


class _Sleeper:
    """A runner taking ``ms`` per call: really asleep, or (``clock`` given) advancing that fake
    clock, so that equal runners time exactly equal on a loaded machine."""

    def __init__(self, ms: float, clock: _Clock | None = None) -> None:
        self.ms, self.calls, self.clock = ms, 0, clock

    def infer(self, feeds: dict) -> dict:
        import time

        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.ms / 1e3
        else:
            time.sleep(self.ms / 1e3)
        return {}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_decode_auto_keeps_the_second_runtime_only_when_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile_vla: Callable[..., dict]
) -> None:
    """choose_decode times both runners interleaved (one warm-up each) and keeps llm-decode
    at <= 0.9x the llm's step; a dropped decode graph leaves no file and no manifest entry."""
    from robopt_compile.compile.multigraph import vla as vla_compile
    from robopt_compile.compile.multigraph.vla import choose_decode

    fast, slow = _Sleeper(2), _Sleeper(12)
    got = choose_decode({"llm": slow, "llm-decode": fast}, {}, rounds=3)
    assert got["kept"] and fast.calls == slow.calls == 4
    assert got["ms_per_step"]["llm-decode"] < got["ms_per_step"]["llm"]
    assert not choose_decode({"llm": fast, "llm-decode": slow}, {}, rounds=3)["kept"]
    # Equal runners on the fake clock (real sleeps of equal length jitter apart under load:
    # CI once timed 5 ms sleeps more than 10% apart over 3 rounds).
    clock = _Clock()
    with monkeypatch.context() as mp:
        mp.setattr(vla_compile, "time", clock)
        same, less = _Sleeper(5, clock), _Sleeper(4.4, clock)
        assert not choose_decode({"llm": same, "llm-decode": same}, {}, rounds=3)["kept"]
        assert choose_decode({"llm": same, "llm-decode": less}, {}, rounds=3)["kept"]
    # Through the compiler: a second runtime that never pays is dropped after measuring.
    monkeypatch.setattr(vla_compile, "DECODE_KEEP_RATIO", 0.0)
    m = compile_vla(tmp_path / "d", "-b", "openvino", "--decode-backend", "auto")
    assert [g["name"] for g in m["graphs"]] == ["vision", "embed", "llm"]
    assert not (tmp_path / "d" / "graphs" / "llm-decode").exists()
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    assert rep["decode_choice"]["kept"] is False and "llm-decode" not in rep["graphs"]
    assert m["parity"]["actions"]["token_agreement"] == 1.0
    load_manifest(tmp_path / "d", verify=True)  # the hashed files are the bundle's
