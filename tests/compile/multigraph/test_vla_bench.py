"""OpenVLA-style bundles on the robot side (bench/manifest.py, bench/driver.py, bench/serve/):
the driver loop reproducing the torch model's actions, manifest validation of inconsistent
multi-graph bundles, and ``robopt-bench serve`` running the driver loop with every graph's
paths confined."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error_line

from robopt_compile.bench.manifest import load_manifest
from robopt_compile.errors import EXIT_BAD_INPUT, InputError

pytest.importorskip("transformers")


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


def test_manifest_rejects_an_inconsistent_multi_graph_bundle(
    fp32_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edited_copy: Callable[..., Path],
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
        bad = edited_copy(fp32_bundle, tmp_path / name, fn)
        with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")) as info:  # fmt: skip
            load_manifest(bad, verify=False)
        assert "\n" not in str(info.value)
    from robopt_compile.bench.cli import main as bench_main

    with pytest.raises(SystemExit) as exit_:
        bench_main([str(tmp_path / "layers"), "--runs", "2"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err.replace("robopt-bench", "robopt-compile"))


def test_manifest_knows_every_runtime() -> None:
    from robopt_compile.bench.manifest import RUNTIMES
    from robopt_compile.targets import TARGETS

    assert set(RUNTIMES) == set(TARGETS)


def test_remote_benchmark_of_a_multi_graph_bundle(
    fp32_bundle: Path, tmp_path: Path, edited_copy: Callable[..., Path]
) -> None:
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

        bad = edited_copy(fp32_bundle, tmp_path / "bad", escape)
        with pytest.raises(InputError, match=r"graphs\[llm\]\.engine\.config\.model"):
            remote_benchmark(bad, srv.url, token, runs=2, retries=0, verify=False)
    finally:
        srv.close(grace_s=5)


def test_runtime_api_is_one_control_step(fp32_bundle: Path) -> None:
    """``load_bundle`` on a VLA bundle: one call = vision, prefill and the decode steps; the
    tokens are the reference's, a wrong observation is one line."""
    from robopt_compile import load_bundle
    from robopt_compile.errors import InputError

    with np.load(fp32_bundle / "reference" / "inputs.npz") as z:
        obs = [{k: z[k][i] for k in z.files} for i in range(2)]
    with np.load(fp32_bundle / "reference" / "outputs.npz") as z:
        tokens = z["tokens"]
    with load_bundle(fp32_bundle) as policy:
        assert policy.outputs == ["actions", "tokens"]
        for i, o in enumerate(obs):
            got = policy(o)
            np.testing.assert_array_equal(got["tokens"], tokens[i])
            assert got["actions"].shape == (7,)
        with pytest.raises(InputError, match="pixel_values"):
            policy({"input_ids": obs[0]["input_ids"]})
