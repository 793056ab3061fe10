"""A latency model of a policy's sub-networks, measured in the target runtime (issue 21 part 2).

NetAdapt's lookup table: every weighted layer (Conv, Gemm, MatMul with a constant weight) is
timed alone, as a one-node ONNX model, at each input and output channel count the search
space (``space.py``) can give it, in ONNX Runtime with the robot's thread count. A
sub-network's latency is then predicted from the sum of its layers' entries, calibrated on
two whole networks measured (below), which also covers the rest of the network (activations,
pooling, normalizations, the runtime's per-call cost). ``check`` measures whole
sub-networks and reports the table's prediction error.

Entries are kept in the store's build cache (stage ``latency-lut``, keyed by the runtime and
its version, this machine's CPU, the thread count and the layer's op, attributes and shapes),
so a second search on this machine, or another model with the same layers, measures nothing
again. Timings are medians of ``RUNS`` calls after ``WARMUP``.

What it does not model: a layer's time depending on its neighbours (fusion, cache reuse) and
runtimes other than ONNX Runtime; the check says how far off that leaves it. The sum is
calibrated on two whole networks (the full one and the narrowest): ``predict`` is
``scale * sum + rest_ms`` (below the narrowest network's sum, e.g. with blocks dropped too,
the line through the origin and the narrowest point: never a negative time); the check's
samples are other sub-networks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

RUNS = 60
WARMUP = 10


@dataclass
class Layer:
    """A weighted node and the groups that set its channel counts (None: fixed)."""

    node: str
    op: str
    in_group: str | None
    out_group: str | None
    cin: int
    cout: int
    depthwise: bool


@dataclass
class LatencyTable:
    layers: list[Layer]
    entries: dict[str, dict[tuple[int, int], float]]  # node -> (cin, cout) -> ms
    rest_ms: float = 0.0  # the network's time outside its weighted layers
    scale: float = 1.0  # whole-network ms per ms of layers timed alone (calibrated)
    full_ms: float = 0.0
    narrow_ms: float = 0.0
    narrow_sum: float = 0.0  # the narrowest network's layer sum (below it: through the origin)
    full_sum: float = 0.0  # the full network's layer sum
    measured: int = 0  # entries timed now (the rest came from the store)
    reused: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, widths: Mapping[str, int], dropped: Sequence[str] = ()) -> float:
        """Predicted ms of the sub-network with ``widths`` (group -> channels) and the layers
        of dropped blocks (node names in ``dropped``) gone: ``scale`` x the layers' entries
        + ``rest_ms``."""
        total = self.layer_sum(widths, dropped)
        if self.narrow_sum == 0 and self.full_sum > 0:  # no width choices: proportional
            return total * self.full_ms / self.full_sum
        if 0 < total < self.narrow_sum and self.narrow_ms > 0:
            # below the calibration's range (blocks dropped from the narrowest network): the
            # line through the origin and the narrowest point, never a negative time
            return total * self.narrow_ms / self.narrow_sum
        return self.scale * total + self.rest_ms

    def layer_sum(self, widths: Mapping[str, int], dropped: Sequence[str] = ()) -> float:
        """The table's entries for those layers, summed (ms, each layer timed alone)."""
        gone = set(dropped)
        total = 0.0
        for la in self.layers:
            if la.node in gone:
                continue
            cin = widths.get(la.in_group, la.cin) if la.in_group else la.cin
            cout = widths.get(la.out_group, la.cout) if la.out_group else la.cout
            if la.depthwise:
                cin = cout
            total += self.entries[la.node][(cin, cout)]
        return total


def layers_of(model: ir.Model, space: Any) -> list[Layer]:
    """Every weighted layer with its input and output groups in ``space``."""
    from robopt_compile.passes.prune.groups import Analysis

    analysis = Analysis(model)
    searchable = {w.group for w in space.widths}
    producer_group = {}
    for g in analysis.final_groups():
        if g.producers and g.name in searchable:
            for p in g.producers:
                producer_group[p.node.name] = g.name
    group_of_value: dict[int, str] = {}
    for node in model.graph:
        if node.name in producer_group:
            group_of_value[id(node.outputs[0])] = producer_group[node.name]
    out = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None or node.inputs[0].shape is None:
            continue
        shape = w.const_value.shape
        if node.op_type == "Conv":
            groups = node.attributes.get_int("group", 1)
            cout, cin = shape[0], shape[1] * groups
            depthwise = groups > 1 and groups == shape[0]
        else:
            trans = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
            cin, cout = (shape[1], shape[0]) if trans else (shape[0], shape[1])
            depthwise = False
        src = _channel_source(node.inputs[0], group_of_value)
        out.append(Layer(node.name, node.op_type, src, producer_group.get(node.name), int(cin),
                         int(cout), depthwise))  # fmt: skip
    return out


_PASS = {"Relu", "Clip", "BatchNormalization", "MaxPool", "AveragePool", "Add", "Sigmoid",
         "Mul", "Tanh", "HardSwish", "Identity", "Flatten", "GlobalAveragePool"}  # fmt: skip


def _channel_source(v: ir.Value, group_of_value: Mapping[int, str]) -> str | None:
    """The group whose channels reach ``v`` through channel-preserving ops, if any."""
    seen = 0
    while v is not None and seen < 32:
        if id(v) in group_of_value:
            return group_of_value[id(v)]
        node = v.producer()
        if node is None or node.op_type not in _PASS:
            return None
        v = next((i for i in node.inputs if i is not None and i.const_value is None), None)
        seen += 1
    return None


def _one_layer(model: ir.Model, layer: Layer, cin: int, cout: int) -> tuple[bytes, dict]:
    """A one-node ONNX model of ``layer`` at (cin, cout) and a feed for it."""
    import onnx
    from onnx import helper

    node = next(n for n in model.graph if n.name == layer.node)
    x = node.inputs[0]
    xshape = [d if isinstance(d, int) else 1 for d in x.shape]
    wshape = list(node.inputs[1].const_value.shape)
    attrs = {a.name: a.value for a in node.attributes.values()}
    if layer.op == "Conv":
        xshape[1] = cin
        groups = cin if layer.depthwise else attrs.get("group", 1)
        attrs["group"] = groups
        wshape[0], wshape[1] = cout, cin // groups
    else:
        xshape[-1] = cin
        trans = layer.op == "Gemm" and attrs.get("transB", 0)
        wshape = [cout, cin] if trans else [cin, cout]
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, wshape,
                           rng.standard_normal(wshape).astype(np.float32).ravel())  # fmt: skip
    n = helper.make_node(layer.op, ["x", "w"], ["y"], **attrs)
    g = helper.make_graph([n], "layer", [helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, xshape)], [helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, None)], [w])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m.SerializeToString(), {"x": rng.standard_normal(xshape).astype(np.float32)}


def _model_digest(model: ir.Model) -> str:
    import hashlib

    from robopt_compile import ir as rir

    return hashlib.sha256(rir.to_proto(model).SerializeToString()).hexdigest()


def time_onnx(model: bytes | ir.Model, feeds: Mapping[str, np.ndarray], threads: int = 1,
              runs: int = RUNS, warmup: int = WARMUP) -> float:  # fmt: skip
    """Median ms of ``runs`` ONNX Runtime calls (``threads`` intra-op threads)."""
    import onnxruntime as ort

    from robopt_compile import ir as rir
    from robopt_compile.bench.harness import timed_loop  # the harness's loop, gc paused

    data = model if isinstance(model, bytes) else rir.to_proto(model).SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    feeds = dict(feeds)
    for _ in range(warmup):
        sess.run(None, feeds)
    return float(np.median(timed_loop(lambda: sess.run(None, feeds), runs))) / 1e6


def build_table(
    model: ir.Model,
    space: Any,
    feeds: Mapping[str, np.ndarray],
    threads: int = 1,
    memo: Any = None,
    progress: Callable[[str], None] | None = None,
    deadline: float | None = None,  # time.perf_counter(); past it: netadapt.OutOfTime
) -> LatencyTable:
    """Time every layer at each width the space allows (``memo``: the store's ``UnitMemo``
    for stage ``latency-lut``, or None), and the full network for the rest's share."""
    import onnxruntime as ort

    from robopt_compile.bench.machine import machine_profile

    t0 = time.perf_counter()
    options = {w.group: w.widths for w in space.widths}
    layers = layers_of(model, space)
    table = LatencyTable(layers, {})
    base = {"runtime": "onnxruntime", "version": ort.__version__, "cpu": machine_profile(),
            "threads": threads, "runs": RUNS}  # fmt: skip
    for i, la in enumerate(layers):
        if deadline is not None and time.perf_counter() > deadline:
            from robopt_compile.archsearch.netadapt import OutOfTime

            raise OutOfTime(f"latency table, layer {i + 1}/{len(layers)}")
        cins = options.get(la.in_group, (la.cin,)) if la.in_group else (la.cin,)
        couts = options.get(la.out_group, (la.cout,)) if la.out_group else (la.cout,)
        pairs = [(c, c) for c in couts] if la.depthwise else [(a, b) for a in cins for b in couts]
        node = next(n for n in model.graph if n.name == la.node)
        attrs = sorted((a.name, str(a.value)) for a in node.attributes.values())
        sig = {"op": la.op, "x": [str(d) for d in node.inputs[0].shape],
               "w": list(node.inputs[1].const_value.shape), "attrs": attrs}  # fmt: skip
        table.entries[la.node] = {}
        for cin, cout in pairs:
            parts = {**base, **sig, "cin": cin, "cout": cout}
            hit = memo.get(parts) if memo is not None else None
            if hit is not None:
                table.entries[la.node][(cin, cout)] = float(hit["ms"])
                table.reused += 1
                continue
            data, f = _one_layer(model, la, cin, cout)
            ms = time_onnx(data, f, threads)
            table.entries[la.node][(cin, cout)] = ms
            table.measured += 1
            if memo is not None:
                memo.put(parts, {"ms": ms})
        if progress is not None:
            progress(f"latency table: layer {i + 1}/{len(layers)} ({len(pairs)} widths)")
    # Calibrate on two whole networks, the full one and the narrowest: alone, a layer also
    # pays the runtime's per-call cost and its layout changes (ONNX Runtime's blocked NCHWc
    # reorders), which a network pays once; measured here, the raw sum overestimated
    # sub-networks of visuomotor-cnn by 17-38%.
    from robopt_compile.archsearch.space import apply

    full = {w.group: w.size for w in space.widths}
    narrow = {w.group: w.widths[0] for w in space.widths}

    def whole(kind: str, m: Callable[[], ir.Model]) -> float:
        # kept too, so a rerun (``--resume``) predicts exactly what the first run did
        parts = {**base, "whole": kind, "model": _model_digest(model)}
        hit = memo.get(parts) if memo is not None else None
        if hit is not None:
            return float(hit["ms"])
        ms = time_onnx(m(), feeds, threads)
        if memo is not None:
            memo.put(parts, {"ms": ms})
        return ms

    table.full_ms = whole("full", lambda: model)
    narrow_ms = whole("narrow", lambda: apply(model, space, narrow)) if narrow != full else 0.0
    s_full, s_narrow = table.layer_sum(full), table.layer_sum(narrow)
    if narrow != full and s_full > s_narrow:
        table.scale = (table.full_ms - narrow_ms) / (s_full - s_narrow)
    table.rest_ms = table.full_ms - table.scale * s_full
    table.narrow_ms, table.narrow_sum = narrow_ms, (s_narrow if narrow != full else 0.0)
    table.full_sum = s_full
    table.seconds = time.perf_counter() - t0
    table.meta = {**base, "layers": len(layers)}
    return table


def check(
    table: LatencyTable,
    model: ir.Model,
    space: Any,
    feeds: Mapping[str, np.ndarray],
    samples: int = 4,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Measure ``samples`` random sub-networks whole; the table's prediction error on them."""
    from robopt_compile.archsearch.space import apply
    from robopt_compile.errors import PassError

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples * 3):
        if len(rows) == samples:
            break
        widths = {w.group: int(rng.choice(w.widths)) for w in space.widths}
        drop = [d.add for d in space.depths if rng.random() < 0.5]
        try:
            sub = apply(model, space, widths, drop)
        except PassError:  # a width whose group a dropped block changed: draw again
            continue
        gone = [n for d in space.depths if d.add in drop for n in d.body]
        predicted = table.predict(widths, gone)
        measured = time_onnx(sub, feeds, threads)
        rows.append({"widths": widths, "dropped": drop, "predicted_ms": predicted,
                     "measured_ms": measured, "error": predicted / measured - 1.0})  # fmt: skip
    errs = [abs(r["error"]) for r in rows]
    return {"samples": rows, "mean_abs_error": float(np.mean(errs)),
            "max_abs_error": float(np.max(errs))}  # fmt: skip
