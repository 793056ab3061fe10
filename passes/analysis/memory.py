"""Activation memory: all tensors' bytes and a peak-live estimate from a liveness scan.

A board's RAM must hold the weights plus the activations alive at the same time. The scan walks
the nodes in topological order; a tensor is live from its producer (graph inputs: from the
start) to its last consumer (graph outputs: to the end). Views (Reshape, Squeeze, ...) share
their input's buffer. Runtimes also reuse buffers in place and fuse ops, so this is an
estimate, not a measurement.
"""

from __future__ import annotations

import heapq
from typing import Any

import onnx_ir as ir

from robopt_compile.passes.analysis.flops import (
    METADATA_ONLY,
    StaticShapes,
    infer_static_shapes,
    node_name,
)
from robopt_compile.passes.analysis.op_histogram import norm_domain
from robopt_compile.passes.analysis.params import is_weight, iter_weights
from robopt_compile.passes.base import AnalysisPass

_TOP_LIVE = 10


def topological_order(graph: ir.Graph) -> list[ir.Node]:
    """Nodes in dependency order, keeping graph order among ready nodes (stable Kahn).

    Values captured by If/Loop bodies count as inputs of the node that owns the body.
    """
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    owner = _owners(nodes)
    deps: list[set[int]] = [set() for _ in nodes]
    users: list[set[int]] = [set() for _ in nodes]
    for i, node in enumerate(nodes):
        for value in node.outputs:
            for use in value.uses():
                j = owner.get(id(use.node), index.get(id(use.node)))
                if j is not None and j != i:
                    deps[j].add(i)
                    users[i].add(j)
    ready = [i for i, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order: list[int] = []
    remaining = [len(d) for d in deps]
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            remaining[j] -= 1
            if remaining[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):  # a cycle: keep graph order rather than fail an estimate
        return nodes
    return [nodes[i] for i in order]


def _owners(nodes: list[ir.Node]) -> dict[int, int]:
    """Map every node inside a subgraph to the index of the top-level node that holds it."""
    owner: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for attr in node.attributes.values():
            graphs: list[ir.Graph] = []
            if attr.type == ir.AttributeType.GRAPH:
                graphs = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs = list(attr.value)
            for g in graphs:
                for inner in g.all_nodes():
                    owner[id(inner)] = i
    return owner


class _Buffers:
    """Union-find over values, so a view and its input are one buffer."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def liveness(model: ir.Model, shapes: StaticShapes) -> tuple[dict[str, Any], list[ir.Value]]:
    """Peak live activation facts over a topological scan of the main graph, and the
    activation values it counted (graph inputs and node outputs, not weights)."""
    graph = model.graph
    nodes = topological_order(graph)
    step = {id(n): i for i, n in enumerate(nodes)}
    graph_index = {id(n): i for i, n in enumerate(graph)}  # names follow graph order
    owner = _owners(nodes)
    end = len(nodes)
    values: dict[int, ir.Value] = {}
    born: dict[int, int] = {}
    for value in graph.inputs:
        if not is_weight(value):
            values[id(value)] = value
            born[id(value)] = -1
    buffers = _Buffers()
    for i, node in enumerate(nodes):
        if node.op_type == "Constant" and norm_domain(node.domain) == "":
            continue
        for out in node.outputs:
            if out.name:
                values[id(out)] = out
                born[id(out)] = i
        view = norm_domain(node.domain) == "" and node.op_type in METADATA_ONLY
        src = node.inputs[0] if node.inputs else None
        if view and src is not None and id(src) in values and node.outputs:
            buffers.union(id(node.outputs[0]), id(src))
    # Buffer = a set of aliased values: live from the first birth to the last use.
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    size: dict[int, int] = {}
    names: dict[int, str] = {}
    unknown: list[str] = []
    for key, value in values.items():
        uses = [owner.get(id(u.node), step.get(id(u.node), -1)) for u in value.uses()]
        died = max([born[key], *uses])
        if value.is_graph_output():
            died = end
        nbytes = shapes.of(value).nbytes
        if nbytes is None:
            unknown.append(value.name or "")
            nbytes = 0
        root = buffers.find(key)
        first[root] = min(first.get(root, born[key]), born[key])
        last[root] = max(last.get(root, died), died)
        if nbytes >= size.get(root, -1):
            size[root] = nbytes
            names[root] = value.name or ""
    # Difference array over steps -1 .. end.
    delta = [0] * (end + 3)
    for root, start in first.items():
        delta[start + 1] += size[root]
        delta[last[root] + 2] -= size[root]
    live, peak, peak_step = 0, 0, -1
    for s in range(-1, max(end, 1)):
        live += delta[s + 1]
        if live > peak:
            peak, peak_step = live, s
    at_peak = sorted((r for r in first if first[r] <= peak_step <= last[r]), key=lambda r: -size[r])
    return {
        "peak_live_bytes": peak,
        "peak_at_node": (
            node_name(nodes[peak_step], graph_index[id(nodes[peak_step])])
            if peak_step >= 0
            else None
        ),
        "peak_live_tensors": [{"name": names[r], "bytes": size[r]} for r in at_peak[:_TOP_LIVE]],
        "unknown_tensors": unknown,
        "buffers": len(first),
        "tensors": len(values),
    }, list(values.values())


class ActivationMemoryPass(AnalysisPass):
    """Estimates activation bytes (total and peak live) and the weights + activations footprint."""

    name = "memory"

    def __init__(self, batch: int = 1) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch = batch

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        shapes = infer_static_shapes(model, self.batch)
        scan, values = liveness(model, shapes)
        inputs = outputs = intermediate = 0
        for value in values:
            nbytes = shapes.of(value).nbytes or 0
            if value.is_graph_input():
                inputs += nbytes
            elif value.is_graph_output():
                outputs += nbytes
            else:
                intermediate += nbytes
        weight_bytes = sum(w.nbytes or 0 for w in iter_weights(model))
        return {
            "estimate": True,
            "method": "liveness scan in topological order: a tensor is live from its producer "
            "(graph inputs: from the start) to its last consumer (graph outputs: to the end); "
            "views share their input's buffer; no in-place reuse or fusion is modelled",
            "batch": self.batch,
            "input_bytes": inputs,
            "output_bytes": outputs,
            "intermediate_bytes": intermediate,
            "activation_bytes_total": inputs + outputs + intermediate,
            **scan,
            "peak_is_lower_bound": bool(scan["unknown_tensors"]),
            "weight_bytes": weight_bytes,
            "footprint_bytes": weight_bytes + scan["peak_live_bytes"],
        }
