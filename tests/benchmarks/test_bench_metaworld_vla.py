"""benchmarks.metaworld_vla: the three goals follow the numbers; the report renders from a
result dict."""

from __future__ import annotations

from benchmarks.metaworld_vla import EAGER, claim, report_lines


def _engine(label: str, ms: float, rate: float, agreement: float | None) -> dict:
    success = {"rate": rate, "count": int(rate * 100), "ci95": [rate - 0.1, rate]}
    build = None
    if agreement is not None:
        fid = {"token_agreement": agreement, "all_tokens_equal": agreement**4}
        build = {"graphs": {"vision": "openvino", "embed": "openvino", "llm": "openvino"},
                 "weight_bytes": 8_000_000, "activations": "bf16", "fidelity": fid}  # fmt: skip
    return {"label": label, "p50_ms": ms, "success": success, "build": build}


def _pair(label: str, verdict: str, diff: float) -> dict:
    return {"candidate": label, "verdict": verdict, "p_value": 0.5,
            "success_diff": {"mean": diff, "ci95": [diff - 0.05, diff + 0.05], "lost": 3,
                             "gained": 2}}  # fmt: skip


def _result(w8: float, w4_rate: float, w4_verdict: str, w4_ms: float = 3.0) -> dict:
    engines = [
        _engine(EAGER, 12.0, 0.60, None),
        _engine("robopt fp32 (onnxruntime)", 6.0, 0.60, 1.0),
        _engine("robopt int8-weight", 4.5, 0.60, w8),
        _engine("robopt int4-weight", w4_ms, w4_rate, 0.8),
    ]
    pairs = [_pair(engines[1]["label"], "no detectable change", 0.0),
             _pair(engines[2]["label"], "no detectable change", 0.0),
             _pair(engines[3]["label"], w4_verdict, w4_rate - 0.6)]  # fmt: skip
    return {"episodes": 100, "rounds": 2, "per_round": 2, "holdout": 200,
            "holdout_seed": 2_000_000, "seeds": [3_000_000, 3_000_099], "engines": engines,
            "paired": pairs}  # fmt: skip


def test_goals_follow_agreement_success_and_speed() -> None:
    c = claim(_result(0.97, 0.60, "no detectable change"))
    assert c["agreement_met"] and c["fastest_kept"] == "robopt int4-weight"
    assert c["speed_met"] and abs(c["speedup"] - 4.0) < 1e-9
    # int4 loses success: the fastest bundle that keeps it is int8-weight, 12 / 4.5 < 3x.
    c = claim(_result(0.90, 0.40, "worse"))
    assert not c["agreement_met"] and c["fastest_kept"] == "robopt int8-weight"
    assert not c["speed_met"] and not c["success_kept"]["robopt int4-weight"]


def test_report_renders_the_table_goals_and_guard_agreement() -> None:
    text = "\n".join(report_lines(_result(0.97, 0.40, "worse")))
    assert "| torch eager fp32 | torch |" in text and "83 | 1.00x" in text
    assert "int8-weight token agreement >= 95%: met (97.0%)" in text
    assert "int4-weight NOT kept" in text
    # The token guard rejects int4 (80%) and so does the task; both accept fp32 and int8.
    assert "They agree on 3 of 3 bundles." in text
