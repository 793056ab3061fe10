"""run_benchmark and the overhead check on real engines from both backends."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.bench.harness import (
    bare_loop_p50,
    compare_outputs,
    measure_overhead,
    run_benchmark,
)
from robopt_compile.errors import InputError
from robopt_compile.targets import Artifact, get_backend


def test_run_benchmark_figures_are_sane(bundle: Path) -> None:
    ticks: list[int] = []
    r = run_benchmark(
        bundle, runs=30, warmup=3, threads=1, control_rate=1000, progress=ticks.append
    )
    json.dumps(r, allow_nan=False)  # strict JSON, no NaN/inf
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert r["backend"] == manifest["backend"] and r["model"] == "tiny-policy"
    assert r["settings"]["runs"] == 30 and r["settings"]["threads"] == 1
    assert sum(ticks) == 30

    lat = r["latency"]
    assert lat["n"] == 30 and lat["batch"] == 1
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert lat["min_ms"] <= lat["mean_ms"] <= lat["max_ms"]
    assert lat["max_ms"] < 1000  # a 16x16 conv is not a second
    assert lat["throughput_per_s"] == pytest.approx(1000 / lat["mean_ms"])

    c = r["control"]
    assert c["runs"] == 30 and 0 <= c["misses"] <= 30 and c["deadline_ms"] == pytest.approx(1.0)

    fid = r["fidelity"]
    assert fid["passed"] is True
    assert set(fid["outputs"]) == {"action", "value"}
    for o in fid["outputs"].values():
        assert o["passed"] and o["cosine"] > 0.9999 and o["max_abs"] < 1e-4

    assert [i["name"] for i in r["inputs"]] == ["image", "state"]
    assert r["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert r["timing"]["engine_load_ms"] > 0 and r["timing"]["first_infer_ms"] > 0
    mem = r["memory"]
    assert mem["peak_rss_mib"] > 10
    if Path("/proc/self/statm").exists():
        assert mem["rss_after_runs_mib"] > 10 and mem["rss_increase_mib"] is not None
    m = r["machine"]
    assert m["cores_logical"] >= 1 and m["cpu_model"]
    assert m["runtime"] == manifest["backend"] and m["runtime_version"]


def test_no_control_rate_means_no_control_figures(ort_bundle: Path) -> None:
    r = run_benchmark(ort_bundle, runs=3, warmup=0, verify=False)
    assert r["control"] is None and r["settings"]["verify"] is False


def test_batch_inputs_are_timed_and_fidelity_stays_on_reference(ort_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = {
        "image": rng.standard_normal((1, 3, 16, 16), dtype=np.float32),
        "state": rng.standard_normal((1, 4), dtype=np.float32),
    }
    r = run_benchmark(ort_bundle, runs=3, warmup=1, batch_inputs=feeds)
    assert r["fidelity"]["passed"]
    with pytest.raises(InputError, match=r"lack input\(s\) \['state'\]"):
        run_benchmark(ort_bundle, runs=3, warmup=1, batch_inputs={"image": feeds["image"]})
    # The engine was exported with a static batch of 1: a batch of 2 is a clean error.
    big = {k: np.concatenate([v, v]) for k, v in feeds.items()}
    with pytest.raises(InputError, match="the engine failed on the given inputs"):
        run_benchmark(ort_bundle, runs=3, warmup=1, batch_inputs=big)


def test_bad_counts_are_input_errors(ort_bundle: Path) -> None:
    for kwargs in ({"runs": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(InputError):
            run_benchmark(ort_bundle, **kwargs)


def test_corrupted_reference_fails_fidelity(
    bundle: Path, bundle_copy: Callable[[Path], Path], rehash: Callable[[Path], None]
) -> None:
    b = bundle_copy(bundle)
    path = b / "reference" / "outputs.npz"
    with np.load(path) as z:
        outs = {k: z[k] for k in z.files}
    outs["action"] = -outs["action"]
    np.savez(path, **outs)
    rehash(b)
    r = run_benchmark(b, runs=2, warmup=0)
    fid = r["fidelity"]
    assert fid["passed"] is False
    assert fid["outputs"]["value"]["passed"] is True
    action = fid["outputs"]["action"]
    assert action["passed"] is False and action["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert "cosine" in action["reason"] and "exceeds atol" in action["reason"]


def test_compare_outputs_rules() -> None:
    tol = {"cosine_min": 0.99, "atol": 1e-3, "rtol": 1e-2}
    ref = {"y": np.array([1.0, 0.0, -2.0], dtype=np.float32)}
    ok = compare_outputs({"y": ref["y"] + np.float32(5e-4)}, ref, tol)
    assert ok["passed"] and ok["outputs"]["y"]["max_abs"] == pytest.approx(5e-4, rel=1e-3)
    # max_rel is max_abs over the reference's largest magnitude (numerics.compare)
    assert ok["outputs"]["y"]["max_rel"] == pytest.approx(2.5e-4, rel=1e-3)
    nan = compare_outputs({"y": np.array([1.0, math.nan, -2.0])}, ref, tol)
    assert not nan["passed"] and "non-finite" in nan["outputs"]["y"]["reason"]
    json.dumps(nan, allow_nan=False)
    shape = compare_outputs({"y": np.zeros((1, 3))}, ref, tol)
    assert not shape["passed"] and "shape" in shape["outputs"]["y"]["reason"]
    both_zero = compare_outputs({"y": np.zeros(3)}, {"y": np.zeros(3)}, tol)
    assert both_zero["passed"] and both_zero["outputs"]["y"]["cosine"] == 1.0
    with pytest.raises(InputError, match=r"output\(s\) \['y'\] that the engine does not produce"):
        compare_outputs({"z": np.zeros(3)}, ref, tol)


def test_overhead_compares_harness_with_bare_loop(bundle: Path) -> None:
    o = measure_overhead(bundle, runs=40, warmup=2, threads=1, blocks=4)
    assert o["runs_each"] == 40 and o["blocks"] == 4
    assert o["harness_p50_ms"] > 0 and o["bare_p50_ms"] > 0
    assert 0.2 < o["harness_p50_ms"] / o["bare_p50_ms"] < 5
    assert o["overhead_pct"] == pytest.approx(
        (o["harness_p50_ms"] - o["bare_p50_ms"]) / o["bare_p50_ms"] * 100
    )
    assert 0 < bare_loop_p50(bundle, runs=10, warmup=1, threads=1) < 1000


def _settings_of(backend: str, handle: object) -> dict[str, object]:
    if backend == "onnxruntime":
        so = handle.get_session_options()
        return {
            "intra": so.intra_op_num_threads,
            "inter": so.inter_op_num_threads,
            "level": so.graph_optimization_level,
            "mode": so.execution_mode,
            "providers": handle.get_providers(),
        }
    keys = ["INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS"]
    return {k: str(handle.get_property(k)) for k in keys}


@pytest.mark.parametrize("threads", [1, None])
def test_bare_loop_uses_the_runner_settings(bundle: Path, threads: int | None) -> None:
    """The overhead figure is only fair if both loops run the engine the same way."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["backend"]
    engine = manifest["engine"]
    artifact = Artifact.from_json(engine, bundle / engine["dir"])
    with np.load(bundle / "reference" / "inputs.npz") as z:
        feeds = {k: z[k] for k in z.files}
    loop = get_backend(name).bare_loop(artifact, feeds, threads)
    with get_backend(name).runner(artifact, threads) as runner:
        handle = runner.session if name == "onnxruntime" else runner.compiled
        bare = loop.session if name == "onnxruntime" else loop.compiled
        assert _settings_of(name, bare) == _settings_of(name, handle)
