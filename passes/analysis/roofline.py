"""Roofline latency estimate per node on a hardware profile.

``time = max(flops / peak, bytes_moved / bandwidth)`` with ``bytes_moved = inputs + weights +
outputs`` (views move nothing). It ignores caches, fusion, launch overheads and kernel
efficiency, so it ranks nodes and bounds latency from below; it is labelled an estimate
everywhere and the planner measures before it decides.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from robopt_compile.errors import PassError
from robopt_compile.hwprofiles import HardwareProfile
from robopt_compile.passes.analysis.flops import NodeCost, node_costs
from robopt_compile.passes.base import AnalysisPass
from robopt_compile.precision import COMPUTE_FORMATS

METHOD = (
    "roofline: time = max(flops / peak_compute, bytes_moved / bandwidth) per node, "
    "bytes_moved = activation inputs + weights + outputs (views: 0); sum over nodes; "
    "no caches, fusion, overheads or kernel efficiency"
)


def node_roofline(cost: NodeCost, peak_ops_s: float, bandwidth_b_s: float) -> dict[str, Any]:
    """One node's roofline figures; ``bound`` is "compute", "memory", "none" or "unknown"."""
    row: dict[str, Any] = {"name": cost.name, "op_type": cost.op_type, "domain": cost.domain}
    if not cost.known:
        return {**row, "bound": "unknown", "time_ms": None, "reason": cost.reason}
    flops, moved = cost.flops or 0, cost.bytes_moved or 0
    compute_s, memory_s = flops / peak_ops_s, moved / bandwidth_b_s
    if flops == 0 and moved == 0:
        bound = "none"
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return {
        **row,
        "flops": flops,
        "bytes_moved": moved,
        "intensity_flops_per_byte": flops / moved if moved else None,
        "compute_ms": compute_s * 1e3,
        "memory_ms": memory_s * 1e3,
        "time_ms": max(compute_s, memory_s) * 1e3,
        "bound": bound,
    }


class RooflinePass(AnalysisPass):
    """Estimates per-node time and whether it is compute- or memory-bound on ``profile``."""

    name = "roofline"

    def __init__(
        self, profile: HardwareProfile, precision: str = "fp32", threads: int = 1, batch: int = 1
    ) -> None:
        super().__init__()
        if precision not in COMPUTE_FORMATS:
            raise PassError(
                f"roofline: unknown precision {precision!r}; use one of {list(COMPUTE_FORMATS)}."
            )
        if threads < 1 or batch < 1:
            raise PassError(f"roofline: threads and batch must be >= 1 (got {threads}, {batch}).")
        self.profile = profile
        self.precision = precision
        self.threads = threads
        self.batch = batch

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        costs, _ = node_costs(model, self.batch)
        peak_gops = self.profile.peak_gops(self.precision, self.threads)
        bandwidth_gbs = self.profile.bandwidth_gbs(self.threads)
        rows = [node_roofline(c, peak_gops * 1e9, bandwidth_gbs * 1e9) for c in costs]
        known = [r for r in rows if r["bound"] != "unknown"]
        latency_ms = sum(r["time_ms"] for r in known)
        return {
            "estimate": True,
            "method": METHOD,
            "profile": self.profile.name,
            "precision": self.precision,
            # The profile may lack this precision's peak; then fp32's is used.
            "peak_precision": (
                self.precision if self.precision in self.profile.compute_gops else "fp32"
            ),
            "threads": self.threads,
            "batch": self.batch,
            "peak_gops": peak_gops,
            "bandwidth_gbs": bandwidth_gbs,
            "ridge_flops_per_byte": peak_gops / bandwidth_gbs,
            "latency_ms": latency_ms,
            # False when some nodes' costs are unknown and left out of latency_ms.
            "complete": len(known) == len(rows),
            "compute_bound_nodes": sum(1 for r in known if r["bound"] == "compute"),
            "memory_bound_nodes": sum(1 for r in known if r["bound"] == "memory"),
            "unknown_nodes": [r["name"] for r in rows if r["bound"] == "unknown"],
            "nodes": rows,
        }
