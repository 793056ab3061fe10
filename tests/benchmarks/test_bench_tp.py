"""benchmarks_tp: the report renders from a result dict and the verdict follows the numbers."""

from __future__ import annotations

import copy

from benchmarks.tp import TITLE, report_lines, stage_rows, verdict


def _result(tp_ms: float, robopt_ms: float, tp_l2: float, robopt_l2: float) -> dict:
    def row(key, ms, l2, cc, prune_s):
        return {"key": key, "macs": 1.8e9 if key == "unpruned" else 0.67e9, "params": 11.4e6,
                "p50_ms": ms, "speedup": 25.0 / ms, "relative_l2": l2, "cosine": 1 - l2 / 2,
                "centred_cosine": cc, "prune_s": prune_s, "export_s": 2.0}  # fmt: skip

    layers = {
        "unpruned": {"trunk.conv1": 64, "trunk.layer2.0.conv2": 128, "head.0": 256},
        "torch-pruning": {"trunk.conv1": 64, "trunk.layer2.0.conv2": 64, "head.0": 128},
        "robopt": {"trunk.conv1": 64, "trunk.layer2.0.conv2": 72, "head.0": 128},
    }
    return {
        "model": "visuomotor-cnn", "ratio": 0.5, "round_to": 8, "threads": 1, "rounds": 2,
        "per_round": 2, "samples": 16, "versions": {"torch_pruning": "1.6.0"},
        "rows": [row("unpruned", 25.0, 0.0, 1.0, None),
                 row("torch-pruning", tp_ms, tp_l2, 0.9, 0.2),
                 row("robopt", robopt_ms, robopt_l2, 0.8, 0.1)],
        "layers": layers, "stages": stage_rows(layers), "tp_export_vs_eager": 2e-7,
    }  # fmt: skip


def test_report_and_verdict_follow_the_numbers() -> None:
    tp_wins = _result(tp_ms=8.0, robopt_ms=10.0, tp_l2=0.3, robopt_l2=0.6)
    v = verdict(tp_wins)
    assert v["faster"] == "torch-pruning" and v["more_accurate"] == "torch-pruning"
    assert len(v["torch_pruning_better_on"]) == 2 and "25%" in v["torch_pruning_better_on"][0]
    lines = report_lines(tp_wins)
    assert lines[0] == TITLE
    text = "\n".join(lines)
    assert "| torch-pruning | 0.670 | 11.40 | 8.00 | 3.12x | 0.3000 |" in text
    assert "stage-2 residual stream *" in text  # counts differ there: marked
    verdict_line = next(line for line in lines if line.startswith("**Verdict:**"))
    assert "torch-pruning gives the faster model" in verdict_line
    assert "torch-pruning stays closer" in verdict_line
    assert "ONNX files included; torch-pruning is better here on latency by 25%" in verdict_line

    robopt_wins = _result(tp_ms=10.0, robopt_ms=8.0, tp_l2=0.6, robopt_l2=0.3)
    v = verdict(robopt_wins)
    assert v == {"faster": "robopt", "more_accurate": "robopt", "torch_pruning_better_on": []}
    verdict_line = report_lines(robopt_wins)[-2]
    assert "robopt gives the faster model" in verdict_line
    assert "robopt stays closer" in verdict_line
    assert "torch-pruning is not better on any measured axis" in verdict_line

    tie = _result(tp_ms=9.0, robopt_ms=9.1, tp_l2=0.5, robopt_l2=0.505)
    assert verdict(tie) == {"faster": None, "more_accurate": None, "torch_pruning_better_on": []}
    same = copy.deepcopy(tie)
    same["layers"]["robopt"] = dict(same["layers"]["torch-pruning"])
    same["stages"] = stage_rows(same["layers"])
    assert "same architecture" in report_lines(same)[-2]

    assert report_lines({"error": "torch-pruning not installed"})[2] == (
        "Not measured: torch-pruning not installed."
    )
