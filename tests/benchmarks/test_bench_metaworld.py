"""benchmarks.metaworld: the claim follows the numbers; the report renders from a result dict."""

from __future__ import annotations

import copy

from benchmarks.metaworld import claim, report_lines


def _engine(label: str, ms: float, rate: float, l2: float) -> dict:
    success = {"rate": rate, "count": int(rate * 100), "ci95": [rate - 0.1, rate]}
    return {"label": label, "p50_ms": ms, "holdout_relative_l2": l2, "success": success}


def _pair(label: str, verdict: str, diff: float) -> dict:
    return {"candidate": label, "verdict": verdict, "p_value": 0.5,
            "success_diff": {"mean": diff, "ci95": [diff - 0.05, diff + 0.05], "lost": 3,
                             "gained": 2}}  # fmt: skip


def _result(robopt_ms: float, robopt_rate: float, verdict: str) -> dict:
    engines = [
        _engine("ONNX Runtime fp32", 20.0, 0.90, 0.0),
        _engine("OpenVINO default", 9.0, 0.90, 0.004),
        _engine("OpenVINO + NNCF int8", 6.0, 0.89, 0.02),
        _engine("ORT QDQ int8", 10.0, 0.70, 0.2),
        _engine("robopt planner (openvino int8 + prune 50%)", robopt_ms, robopt_rate, 0.08),
    ]
    pairs = [_pair("OpenVINO default", "no detectable change", 0.0),
             _pair("OpenVINO + NNCF int8", "no detectable change", -0.01),
             _pair("ORT QDQ int8", "worse", -0.2),
             _pair(engines[-1]["label"], verdict, robopt_rate - 0.9)]  # fmt: skip
    planner = {"measured": [], "failed": [], "accuracy_measure": "task:success"}
    return {"episodes": 100, "rounds": 2, "per_round": 2, "seeds": [3_000_000, 3_000_099],
            "openvino_default_precision": "bf16", "engines": engines, "paired": pairs,
            "planner": {"seconds": 600.0, "result": planner}}  # fmt: skip


def test_the_claim_compares_with_the_fastest_vendor_recipe_that_keeps_success() -> None:
    c = claim(_result(2.5, 0.90, "no detectable change"))
    assert c["vendor"] == "OpenVINO + NNCF int8" and c["met"] and abs(c["speedup"] - 2.4) < 1e-9
    # Faster but losing success: robopt's engine does not count, the goal is not met.
    assert not claim(_result(2.5, 0.80, "no detectable change"))["met"]
    assert claim(_result(2.5, 0.90, "worse"))["robopt"] is None
    assert not claim(_result(4.0, 0.90, "no detectable change"))["met"]  # 1.5x only


def test_report_renders_the_table_the_verdict_and_the_guard_agreement() -> None:
    r = _result(2.5, 0.90, "no detectable change")
    text = "\n".join(report_lines(copy.deepcopy(r)))
    assert "met" in text and "OpenVINO + NNCF int8" in text and "2.40x" in text
    # Output bound 0.01 accepts only OpenVINO default; the task rejects only ORT QDQ int8.
    assert "They agree on 2 of 4 engines." in text
    bad = "\n".join(report_lines(_result(4.0, 0.90, "no detectable change")))
    assert "NOT met" in bad


def _rows(kind: str, path: str, seeds: list[int]) -> list[tuple[int, float, bool, int]]:
    """A stand-in engine's episodes (run in the pool's spawned workers)."""
    return [(s, float(s % 7), (s + len(path)) % 3 != 0, 5) for s in seeds]


def test_closed_loop_pairs_every_engine_on_the_same_seeds() -> None:
    from benchmarks.metaworld import EVAL_SEED, _closed_loop

    lines: list[str] = []
    got = _closed_loop({"ref": ("x", "a"), "cand": ("x", "bb")}, 25, lines.append, _rows)
    ref, cand = got["engines"]
    assert got["seeds"] == [EVAL_SEED, EVAL_SEED + 24]
    seeds = range(EVAL_SEED, EVAL_SEED + 25)
    assert ref["success"]["count"] == sum((s + 1) % 3 != 0 for s in seeds)
    assert cand["success"]["count"] == sum((s + 2) % 3 != 0 for s in seeds)
    assert ref["role"] == "reference"
    assert got["paired"][0]["candidate"] == "cand"
    assert lines[-1].startswith("[bench] metaworld: 50/50 episodes")
