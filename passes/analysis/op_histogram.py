"""Operator histogram: which ops a model uses, how often, and under which opsets.

The planner and the backend check both start from this: an op a backend lacks, or a custom
domain, is visible here before anything is built.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx_ir as ir

from robopt_compile.passes.base import AnalysisPass


def norm_domain(domain: str) -> str:
    """``ai.onnx`` and ``""`` name the same default domain."""
    return "" if domain == "ai.onnx" else domain


def op_key(domain: str, op_type: str) -> str:
    """``Conv`` for the default domain, ``com.microsoft::Attention`` otherwise."""
    domain = norm_domain(domain)
    return f"{domain}::{op_type}" if domain else op_type


class OpHistogramPass(AnalysisPass):
    """Counts nodes per (domain, op_type), including If/Loop/Scan bodies and local functions."""

    name = "op-histogram"

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        counts: Counter[tuple[str, str]] = Counter()
        top_level = len(model.graph)
        total = 0
        for node in model.graph.all_nodes():
            counts[(norm_domain(node.domain), node.op_type)] += 1
            total += 1
        function_nodes: Counter[tuple[str, str]] = Counter()
        for function in model.functions.values():
            for node in function.all_nodes():
                function_nodes[(norm_domain(node.domain), node.op_type)] += 1
        opsets = {norm_domain(d): v for d, v in model.opset_imports.items()}

        def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {
                    "domain": domain,
                    "op_type": op,
                    "key": op_key(domain, op),
                    "count": n,
                    "opset": opsets.get(domain),
                }
                for (domain, op), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            ]

        return {
            "total_nodes": total,
            "top_level_nodes": top_level,
            "subgraph_nodes": total - top_level,
            "distinct_ops": len(counts),
            "ops": rows(counts),
            "by_op": {op_key(d, o): n for (d, o), n in counts.most_common()},
            "function_nodes": sum(function_nodes.values()),
            "function_ops": rows(function_nodes),
            "opset_imports": dict(sorted(opsets.items())),
        }
