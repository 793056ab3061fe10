"""Report details a newcomer tripped on (issue 19): a pass that ran twice says which run each
row is, a single-graph bundle has no multi-graph section."""

from __future__ import annotations

from pathlib import Path

from robopt_compile.report.data import BundleData
from robopt_compile.report.html import sections_of
from robopt_compile.report.plots import Plots
from robopt_compile.report.sections_build import section_passes


def test_a_pass_that_ran_twice_is_labelled_per_run() -> None:
    rec = {"seconds": 0.5, "modified": True, "nodes_before": 11, "nodes_after": 28}
    report = {"exporter": "dynamo", "source": "x", "passes": [
        {"name": "simplify", **rec}, {"name": "int8-nncf", **rec}, {"name": "int8-nncf", **rec}],
        "quantization": {"surgery_requantization": {"options": {}}}}  # fmt: skip
    html = section_passes(BundleData(Path("b"), {}, report, None, {}), Plots())
    assert "int8-nncf (run 1 of 2)" in html and "int8-nncf (run 2 of 2)" in html
    assert "simplify (run" not in html and "ran twice" in html


def test_only_a_multi_graph_bundle_has_the_multi_graph_section() -> None:
    assert "graphs" not in dict(sections_of({"backend": "onnxruntime"}))
    assert "graphs" in dict(sections_of({"graphs": [{"name": "vision"}]}))


def test_the_guard_line_says_how_two_outputs_combine_and_counts_layers() -> None:
    from robopt_compile.cli.tables import quant_line

    outs = {"action": {"relative_l2": 0.002}, "value": {"relative_l2": 0.0075}}
    final = {"drop": 0.0021, "cosine": 0.99998, "samples": 8, "per_output": outs}
    q = {"pass": "int8-static-ort", "metric": "relative_l2", "max_accuracy_drop": 0.01,
         "data": {"random": False}, "mixed_precision": {"fp32_nodes": ["n1"]},
         "final": final}  # fmt: skip
    line = quant_line(q)
    assert "2 outputs: relative L2 pooled over all of them" in line
    assert "worst alone value 0.0075" in line and "kept 1 layer fp32" in line
    q["final"]["per_output"] = {"action": outs["action"]}
    q["mixed_precision"]["fp32_nodes"] = ["n1", "n2"]
    line = quant_line(q)
    assert "pooled" not in line and "kept 2 layers fp32" in line
