"""Mixed precision by measured layer sensitivity.

Given a fully quantized Q/DQ model and its fp32 source, ``dequantize_nodes`` returns the model
with chosen compute nodes back in floating point: their weight inputs take the fp32 source's
tensors and their activation inputs bypass the QuantizeLinear -> DequantizeLinear pair. This is
graph surgery on the already calibrated model, so keeping a layer in fp32 costs no
re-calibration, and one sensitivity sweep over N layers costs N evaluations, not N
quantizations. It works on the Q/DQ graphs of every quantizer here (ONNX Runtime's, NNCF's,
the TensorRT placement), because all of them feed a compute node through DequantizeLinear.

``search`` measures each layer's sensitivity (how much the held-out error falls when only that
layer goes back to fp32), then keeps the most sensitive layers in fp32, fewest first, until the
error is within the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import PassError

Score = Callable[[ir.Model], dict[str, Any]]  # model -> accuracy figures with "drop"


def _producer_op(value: ir.Value | None) -> str | None:
    node = value.producer() if value is not None else None
    return node.op_type if node is not None else None


def quantized_compute_nodes(model: ir.Model) -> list[str]:
    """Names of non-Q/DQ nodes with at least one input coming from a DequantizeLinear."""
    names = []
    for node in model.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(_producer_op(v) == "DequantizeLinear" for v in node.inputs):
            names.append(node.name)
    return names


def dequantize_nodes(qmodel: ir.Model, float_model: ir.Model, names: Iterable[str]) -> ir.Model:
    """A copy of ``qmodel`` with the nodes ``names`` computing in floating point again."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    wanted = set(names)
    if not wanted:
        return qmodel
    model = qmodel.clone()
    float_nodes = {n.name: n for n in float_model.graph}
    found = set()
    restored: dict[str, ir.Value] = {}
    for node in model.graph:
        if node.name not in wanted or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        found.add(node.name)
        ref = float_nodes.get(node.name)
        for i, value in enumerate(node.inputs):
            dq = value.producer() if value is not None else None
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.inputs[0]
            if src is not None and src.const_value is not None:
                # A quantized weight: use the fp32 source's tensor when the quantizer only
                # rounded it; keep the dequantized values when it also rescaled it (NNCF's
                # SmoothQuant moves scales between activations and weights).
                fv = None
                if ref is not None and i < len(ref.inputs) and ref.inputs[i] is not None:
                    fv = ref.inputs[i] if ref.inputs[i].const_value is not None else None
                tensor = _float_weight(dq, fv)
                new = ir.Value(name=f"{node.name}_fp32_in{i}", const_value=tensor)
                model.graph.register_initializer(new)
                node.replace_input_with(i, new)
                continue
            q = src.producer() if src is not None else None
            if q is not None and q.op_type == "QuantizeLinear":
                # bypass the activation's Q/DQ pair
                # one restored Relu/Clip per value, however many fp32 nodes read it (a
                # bottleneck block's input feeds its first conv and its shortcut)
                value = q.inputs[0]
                if value.name not in restored:
                    restored[value.name] = _restore_activation(model, value, float_model)
                node.replace_input_with(i, restored[value.name])
    # A graph output quantized after an fp32 node goes back to fp32 too.
    for idx, out in enumerate(model.graph.outputs):
        dq = out.producer()
        q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        v = q.inputs[0]
        if v.producer() is not None and v.producer().name in wanted:
            name = out.name
            out.name = f"{name}_quantized_output"
            v.name = name
            model.graph.outputs[idx] = v
    missing = wanted - found
    if missing:
        raise PassError(
            f"mixed precision: node(s) {sorted(missing)[:5]} are not in the quantized model."
        )
    RemoveUnusedNodesPass()(model)
    dups = rir.duplicate_names(model)
    if dups:
        raise PassError(f"mixed precision made an invalid graph ({'; '.join(dups[:3])}): a bug.")
    return model


def _dequantized(dq: ir.Node) -> np.ndarray:
    """The float values a constant DequantizeLinear produces (per-tensor or per-axis)."""
    x = dq.inputs[0].const_value.numpy().astype(np.float64)
    scale = dq.inputs[1].const_value.numpy().astype(np.float64)
    zp = (
        dq.inputs[2].const_value.numpy().astype(np.float64)
        if len(dq.inputs) > 2 and dq.inputs[2] is not None and dq.inputs[2].const_value is not None
        else np.zeros_like(scale)
    )
    if scale.ndim == 1 and x.ndim > 1:
        axis = dq.attributes.get_int("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (x - zp) * scale


def _float_weight(dq: ir.Node, source: ir.Value | None) -> ir.TensorProtocol:
    """The source's fp32 weight if the quantized one is just its rounding, else dequantized."""
    deq = _dequantized(dq)
    if source is not None:
        src = source.const_value.numpy()
        step = float(np.max(np.abs(dq.inputs[1].const_value.numpy())))
        if src.shape == deq.shape and np.all(np.abs(src - deq) <= 0.51 * step + 1e-12):
            return source.const_value
    dtype = dq.outputs[0].dtype.numpy() if dq.outputs[0].dtype is not None else np.float32
    return ir.tensor(deq.astype(dtype))


# Activations a quantizer may drop because an unsigned Q clips at zero (ORT's QDQ quantizer
# removes Relu/Clip after Conv): bypassing that Q must put them back.
_REMOVABLE = ("Relu", "Clip")


def _restore_activation(model: ir.Model, value: ir.Value, float_model: ir.Model) -> ir.Value:
    """``value``, or a copy of the float model's Relu/Clip applied to it if one was folded."""
    fvalue = next((v for n in float_model.graph for v in n.outputs if v.name == value.name), None)
    fnode = fvalue.producer() if fvalue is not None else None
    qnode = value.producer()
    if fnode is None or fnode.op_type not in _REMOVABLE:
        return value
    if qnode is not None and qnode.op_type == fnode.op_type:
        return value
    extra = []
    for v in fnode.inputs[1:]:  # Clip's min/max constants
        if v is None:
            extra.append(None)
            continue
        c = ir.Value(name=f"{value.name}_restored_{v.name}", const_value=v.const_value)
        model.graph.register_initializer(c)
        extra.append(c)
    restored = ir.node(
        fnode.op_type,
        inputs=[value, *extra],
        attributes=dict(fnode.attributes),
        name=f"{fnode.name}_restored",
    )
    restored.outputs[0].name = f"{value.name}_restored"
    restored.outputs[0].shape, restored.outputs[0].type = value.shape, value.type
    producer = value.producer()
    if producer is not None:
        model.graph.insert_after(producer, restored)
    else:
        model.graph.insert_before(next(iter(model.graph)), restored)
    return restored.outputs[0]


@dataclass
class LayerRow:
    node: str
    op_type: str
    precision: str = "int8"
    drop_with_only_this_fp32: float | None = None
    sensitivity: float | None = None  # fall in drop when this layer alone is fp32

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "precision": self.precision,
            "drop_with_only_this_fp32": self.drop_with_only_this_fp32,
            "sensitivity": self.sensitivity,
        }


@dataclass
class SearchResult:
    model: ir.Model
    figures: dict[str, Any]
    fp32_nodes: list[str]
    met: bool
    rows: list[LayerRow] = field(default_factory=list)
    evaluations: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows]


def sensitivities(
    qmodel: ir.Model,
    float_model: ir.Model,
    score: Score,
    full_drop: float,
    candidates: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerRow]:
    """Each layer's sensitivity: the fall in drop when only that layer is back in fp32."""
    ops = {n.name: n.op_type for n in qmodel.graph}
    names = list(candidates) if candidates is not None else quantized_compute_nodes(qmodel)
    rows = [LayerRow(n, ops.get(n, "?")) for n in names]
    for i, row in enumerate(rows):
        fig = score(dequantize_nodes(qmodel, float_model, [row.node]))
        row.drop_with_only_this_fp32 = fig["drop"]
        row.sensitivity = full_drop - fig["drop"]
        if progress:
            progress(i + 1, len(rows))
    return rows


def search(
    qmodel: ir.Model,
    float_model: ir.Model,
    score: Score,
    bound: float,
    *,
    full_figures: dict[str, Any] | None = None,
    candidates: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Keep the fewest, most sensitive layers in fp32 so that the drop is <= ``bound``."""
    full = full_figures or score(qmodel)
    steps = [{"fp32_nodes": 0, "drop": full["drop"]}]
    if full["drop"] <= bound:
        return SearchResult(qmodel, full, [], True, [], 1, steps)
    rows = sensitivities(qmodel, float_model, score, full["drop"], candidates, progress)
    evals = 1 + len(rows)
    order = sorted(rows, key=lambda r: -(r.sensitivity or 0.0))
    # Grow the fp32 set 1, 2, 4, ... then bisect between the last failing and first passing k.
    best: tuple[int, ir.Model, dict[str, Any]] | None = None
    lo, k = 0, 1
    while best is None and k <= len(order):
        cand = dequantize_nodes(qmodel, float_model, [r.node for r in order[:k]])
        fig = score(cand)
        evals += 1
        steps.append({"fp32_nodes": k, "drop": fig["drop"]})
        if fig["drop"] <= bound:
            best = (k, cand, fig)
        else:
            lo = k
            k = len(order) if k < len(order) < 2 * k else 2 * k
    if best is None:
        return SearchResult(qmodel, full, [], False, rows, evals, steps)
    hi = best[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cand = dequantize_nodes(qmodel, float_model, [r.node for r in order[:mid]])
        fig = score(cand)
        evals += 1
        steps.append({"fp32_nodes": mid, "drop": fig["drop"]})
        if fig["drop"] <= bound:
            hi, best = mid, (mid, cand, fig)
        else:
            lo = mid
    keep = [r.node for r in order[: best[0]]]
    for r in rows:
        if r.node in keep:
            r.precision = "fp32"
    return SearchResult(best[1], best[2], keep, True, rows, evals, steps)
