"""Structured channel pruning on the ONNX graph: physically fewer channels, so dense kernels
on every backend do less work (unlike unstructured sparsity, which dense kernels ignore).

Which channels may go together comes from ``groups.Analysis`` (residual adds couple producers,
concats keep offsets, attention and graph outputs block). This pass scores channels, picks the
ones to keep and slices every weight, per-channel parameter and hard-coded shape the analysis
listed, then updates the intermediate shapes. It works on any ONNX model, whatever its source.

Importance criteria:

- ``l1`` / ``l2``: norm of each output channel's producer weights, normalised per producer so
  coupled producers weigh equally (data-free; the usual magnitude criterion).
- ``activation``: for each channel, sum over the weighted consumers reading it of
  ``rms(activation_c) * ||W_consumer[:, c]||`` on calibration inputs: the size of the change in
  the next layer's input if channel ``c`` disappears, so channels that are large in weight but
  silent on real data (or dead after a ReLU) go first. Needs calibration samples.

First-order Taylor (``|a * dL/da|``) needs gradients of a loss, which an ONNX graph does not
give; the distillation step (``robopt_compile.distill``) is where gradients are used.

Ratios: a layer ratio (each group loses ``ratio`` of its channels), ``scope="global"`` (the
lowest ``ratio`` of all candidate channels, scores normalised per group, at least
``min_keep_fraction`` kept per group), and per-group overrides by producer node name. Kept
counts are rounded *up* to ``multiple`` (8 by default: SIMD/tensor-core friendly widths) when a
group has at least ``2 * multiple`` channels. The first weighted layers (those reading the
graph inputs) are protected by default; the last ones write graph outputs, whose shape never
changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile.errors import InputError, PassError
from robopt_compile.passes.prune.groups import WEIGHTED, Analysis, Group, Slice
from robopt_compile.passes.prune.unshare import reshare, unshare_small_initializers

CRITERIA = ("l1", "l2", "activation")
SCOPES = ("layer", "global")


class ChannelPrunePass(ir.passes.InPlacePass):
    """Remove a fraction of the output channels of every prunable channel group."""

    name = "prune-channels"

    def __init__(
        self,
        ratio: float,
        *,
        criterion: str = "l1",
        scope: str = "layer",
        layer_ratios: Mapping[str, float] | None = None,
        protect: Sequence[str] | None = None,
        multiple: int = 8,
        min_keep_fraction: float = 0.1,
        calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise InputError(f"channel pruning ratio must be in [0, 1), got {ratio}.")
        if criterion not in CRITERIA:
            raise InputError(f"unknown pruning criterion {criterion!r}; use one of {CRITERIA}.")
        if scope not in SCOPES:
            raise InputError(f"unknown pruning scope {scope!r}; use one of {SCOPES}.")
        if criterion == "activation" and not calibration:
            raise InputError(
                "criterion=activation needs calibration inputs (not random): "
                "add --calibration DIR|FILE.npz."
            )
        for name, r in (layer_ratios or {}).items():
            if not 0.0 <= r < 1.0:
                raise InputError(f"pruning ratio for {name!r} must be in [0, 1), got {r}.")
        self.ratio = ratio
        self.criterion = criterion
        self.scope = scope
        self.layer_ratios = dict(layer_ratios or {})
        self.protect = None if protect is None else list(protect)
        self.multiple = max(1, int(multiple))
        self.min_keep_fraction = min_keep_fraction
        self.calibration = list(calibration or [])
        self.report: dict[str, Any] = {}

    # ---- pass --------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_ir.passes.common import LiftConstantsToInitializersPass

        if any(n.op_type == "Constant" for n in model.graph):
            LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        unshared = unshare_small_initializers(model)
        try:
            self._prune(model, unshared)
        except Exception:
            reshare(model, unshared)
            raise
        return ir.passes.PassResult(model, modified=True)

    def _prune(self, model: ir.Model, unshared: list) -> None:
        analysis = Analysis(model)
        groups = analysis.final_groups()
        by_producer = {p.node.name: g for g in groups for p in g.producers}
        protected = self._protected(model, by_producer)
        unknown = [n for n in self.layer_ratios if n not in by_producer]
        if unknown:
            raise InputError(
                f"no prunable layer named {unknown[0]!r}; layers that own channels: "
                f"{sorted(by_producer)[:12]}"
            )
        status: dict[int, str] = {}
        for g in groups:
            if g.blocked:
                status[g.id] = "blocked: " + g.blocked[0]
            elif any(p.node.name in protected for p in g.producers):
                status[g.id] = "protected"
            elif g.size < 2:
                status[g.id] = "blocked: a single channel"
        candidates = [g for g in groups if g.id not in status]
        if not candidates:
            raise PassError(
                "channel pruning: nothing in this model can be pruned safely ("
                + _top_reasons(groups, status)
                + "). Use --low-rank, or unprotect layers with --prune channels:R,protect=."
            )
        scores = self._scores(model, analysis, candidates)
        keep = self._choose(candidates, scores, by_producer)
        if not any((~k).any() for k in keep.values()):
            raise PassError(
                f"channel pruning at ratio {self.ratio} removes no channel after rounding kept "
                f"counts to multiples of {self.multiple}; raise the ratio or set multiple=1."
            )
        before = _layer_stats(model)
        _apply(model, analysis, groups, keep)
        after = _layer_stats(model)
        self.report = self._report(groups, status, keep, before, after)
        self.report["unshared_constants"] = len(unshared)

    # ---- choices -----------------------------------------------------------------------------

    def _protected(self, model: ir.Model, by_producer: Mapping[str, Group]) -> set[str]:
        if self.protect is not None:
            known = {n.name for n in model.graph}
            for name in self.protect:
                if name not in known:
                    raise InputError(
                        f"protected layer {name!r} is not a node of this model; layers that "
                        f"own channels: {sorted(by_producer)[:12]}"
                    )
            return set(self.protect)
        return first_layers(model)

    def _scores(
        self, model: ir.Model, analysis: Analysis, groups: Sequence[Group]
    ) -> dict[int, np.ndarray]:
        scores = {g.id: np.zeros(g.size) for g in groups}
        if self.criterion in ("l1", "l2"):
            order = 1 if self.criterion == "l1" else 2
            for g in groups:
                for p in g.producers:
                    w = np.moveaxis(p.weight.const_value.numpy(), p.axis, 0).reshape(g.size, -1)
                    n = np.linalg.norm(w.astype(np.float64), ord=order, axis=1)
                    scores[g.id] += n / (n.mean() or 1.0)
            return scores
        return _activation_scores(model, analysis, groups, self.calibration)

    def _choose(
        self,
        groups: Sequence[Group],
        scores: Mapping[int, np.ndarray],
        by_producer: Mapping[str, Group],
    ) -> dict[int, np.ndarray]:
        ratios = {g.id: self.ratio for g in groups}
        overrides = {by_producer[n].id: r for n, r in self.layer_ratios.items()}
        if self.scope == "global":
            pooled = np.concatenate([scores[g.id] / (scores[g.id].mean() or 1.0) for g in groups])
            thr = np.quantile(pooled, self.ratio) if self.ratio > 0 else -np.inf
            for g in groups:
                s = scores[g.id] / (scores[g.id].mean() or 1.0)
                ratios[g.id] = float(np.mean(s < thr))
        ratios.update(overrides)
        keep = {}
        for g in groups:
            n = g.size
            min_keep = (
                max(1, math.ceil(n * self.min_keep_fraction)) if self.scope == "global" else 1
            )
            n_keep = max(min_keep, n - round(n * ratios[g.id]))
            if self.multiple > 1 and n >= 2 * self.multiple:
                n_keep = min(n, math.ceil(n_keep / self.multiple) * self.multiple)
            order = np.argsort(-scores[g.id], kind="stable")
            mask = np.zeros(n, bool)
            mask[order[:n_keep]] = True
            keep[g.id] = mask
        return keep

    def _report(self, groups, status, keep, before, after) -> dict[str, Any]:
        rows = []
        for g in groups:
            k = keep.get(g.id)
            kept = int(k.sum()) if k is not None else g.size
            rows.append({
                "group": g.name,
                "producers": [p.node.name for p in g.producers],
                "channels_before": g.size,
                "channels_after": kept,
                "ratio": round(1 - kept / g.size, 4) if g.size else 0.0,
                "status": status.get(g.id, "pruned" if kept < g.size else "unchanged"),
            })  # fmt: skip
        layers = []
        for name, b in before.items():
            a = after.get(name, b)
            layers.append({"node": name, **{f"{k}_before": v for k, v in b.items()},
                           **{f"{k}_after": v for k, v in a.items()}})  # fmt: skip
        tot = {
            k: sum(row[k] for row in layers)
            for k in ("params_before", "params_after", "macs_before", "macs_after")
        }
        tot["channels_removed"] = sum(r["channels_before"] - r["channels_after"] for r in rows)
        tot["groups_pruned"] = sum(r["status"] == "pruned" for r in rows)
        return {
            "kind": "channels",
            "criterion": self.criterion,
            "scope": self.scope,
            "ratio": self.ratio,
            "multiple": self.multiple,
            "groups": rows,
            "layers": layers,
            "totals": tot,
        }


def first_layers(model: ir.Model) -> set[str]:
    """Weighted nodes whose activation input is computed from the graph inputs alone (no
    other weighted node in between): the layers that read raw observations."""
    raw = {v for v in model.graph.inputs}
    first: set[str] = set()
    for node in model.graph:
        data = [v for v in node.inputs if v is not None and v.const_value is None]
        if not data or not all(v in raw for v in data):
            continue
        if node.op_type in WEIGHTED and _has_const_weight(node):
            first.add(node.name)
            continue
        raw.update(node.outputs)
    return first


def _has_const_weight(node: ir.Node) -> bool:
    return (
        len(node.inputs) > 1
        and node.inputs[1] is not None
        and (node.inputs[1].const_value is not None)
    )


def _top_reasons(groups: Sequence[Group], status: Mapping[int, str]) -> str:
    reasons: dict[str, int] = {}
    for g in groups:
        r = status.get(g.id, "")
        reasons[r] = reasons.get(r, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return "; ".join(f"{n} group(s) {r}" for r, n in top)


def _activation_scores(
    model: ir.Model,
    analysis: Analysis,
    groups: Sequence[Group],
    calibration: Sequence[Mapping[str, np.ndarray]],
) -> dict[int, np.ndarray]:
    """Consumer-weighted activation RMS per channel (see module docstring)."""
    wanted = {g.id for g in groups}
    consumers = [
        s for s in analysis.slices
        if s.role == "consumer" and any(analysis.root(gid) in wanted for gid in s.space.groups())
    ]  # fmt: skip
    probe: list[tuple[Slice | None, ir.Value, int, Group | None]] = []
    covered: set[int] = set()
    for s in consumers:
        probe.append((s, s.node.inputs[0], s.space.axis, None))
        covered.update(analysis.root(g) for g in s.space.groups())
    for g in groups:  # no weighted consumer: the producer's own output activation
        if g.id not in covered:
            out = g.producers[0].node.outputs[0]
            probe.append((None, out, analysis.spaces[out].axis, g))
    rms = _channel_rms(model, [v for _, v, _, _ in probe], [a for _, _, a, _ in probe], calibration)
    scores = {g.id: np.zeros(g.size) for g in groups}
    for (s, _v, _, g), r in zip(probe, rms, strict=True):
        if s is None:
            scores[g.id] += r / (r.mean() or 1.0)
            continue
        w = np.moveaxis(s.value.const_value.numpy(), s.axis, 0).reshape(len(r), -1)
        contrib = r * np.linalg.norm(w.astype(np.float64), axis=1)
        for pos, e in enumerate(s.space.entries):
            if e.group is not None and analysis.root(e.group) in scores:
                scores[analysis.root(e.group)][e.index] += contrib[pos]
    return scores


def _channel_rms(
    model: ir.Model,
    values: Sequence[ir.Value],
    axes: Sequence[int],
    calibration: Sequence[Mapping[str, np.ndarray]],
) -> list[np.ndarray]:
    import onnx

    from robopt_compile.numerics import run_onnx_many

    proto = ir.to_proto(model)
    names = list(dict.fromkeys(v.name for v in values))
    have = {o.name for o in proto.graph.output}
    for name in names:
        if name not in have:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sums: dict[str, np.ndarray] = {}
    count = 0
    outs = run_onnx_many(ir.from_proto(proto), calibration, threads=None)
    for out in outs:
        count += 1
        for v, axis in zip(values, axes, strict=True):
            a = np.moveaxis(np.asarray(out[v.name], np.float64), axis, 0)
            sq = (a.reshape(a.shape[0], -1) ** 2).mean(axis=1)
            key = f"{v.name}:{axis}"
            sums[key] = sums.get(key, 0.0) + sq
    return [
        np.sqrt(sums[f"{v.name}:{a}"] / max(count, 1)) for v, a in zip(values, axes, strict=True)
    ]


def _apply(
    model: ir.Model, analysis: Analysis, groups: Sequence[Group], keep: Mapping[int, np.ndarray]
) -> None:
    arrays: dict[ir.Value, np.ndarray] = {}

    def cur(v: ir.Value) -> np.ndarray:
        if v not in arrays:
            arrays[v] = v.const_value.numpy()
        return arrays[v]

    for g in groups:
        mask = keep.get(g.id)
        if mask is None or mask.all():
            continue
        idx = np.flatnonzero(mask)
        for p in g.producers:
            arrays[p.weight] = np.take(cur(p.weight), idx, axis=p.axis)
            if p.bias is not None:
                arrays[p.bias] = np.take(cur(p.bias), idx, axis=p.bias_axis)
    for s in analysis.slices:
        mask = analysis.kept_mask(s.space, keep)
        if mask.all():
            continue
        if s.role == "group":
            s.node.attributes["group"] = ir.AttrInt64("group", int(mask.sum()))
        elif s.role == "shape":
            a = cur(s.value).copy()
            a[s.axis] = int(mask.sum())
            arrays[s.value] = a
        else:
            arrays[s.value] = np.take(cur(s.value), np.flatnonzero(mask), axis=s.axis)
    for v, a in arrays.items():
        v.const_value = ir.tensor(np.ascontiguousarray(a), name=v.name)
        v.shape = ir.Shape(a.shape)
    for v, space in analysis.spaces.items():
        if v.is_initializer() or v.shape is None:
            continue
        mask = analysis.kept_mask(space, keep)
        if not mask.all():
            dims = list(v.shape)
            dims[space.axis] = int(mask.sum())
            v.shape = ir.Shape(dims)


def _layer_stats(model: ir.Model) -> dict[str, dict[str, int]]:
    """Output/input channels, parameters and MACs of every weighted node (static shapes)."""
    stats = {}
    for node in model.graph:
        if node.op_type not in WEIGHTED or not _has_const_weight(node):
            continue
        w = node.inputs[1].const_value
        wshape = list(w.shape)
        params = int(np.prod(wshape))
        if (
            len(node.inputs) > 2
            and node.inputs[2] is not None
            and node.inputs[2].const_value is not None
        ):
            params += int(np.prod(list(node.inputs[2].const_value.shape)))
        out = node.outputs[0].shape
        macs = 0
        if out is not None and all(isinstance(d, int) for d in out):
            if node.op_type == "Conv":
                macs = int(np.prod(list(out))) * int(np.prod(wshape[1:]))
                oc, ic = wshape[0], wshape[1]
            else:
                trans_b = node.op_type == "Gemm" and any(
                    a.name == "transB" and a.value for a in node.attributes.values()
                )
                k, n_ = (wshape[1], wshape[0]) if trans_b else (wshape[0], wshape[1])
                macs = int(np.prod(list(out))) * k
                oc, ic = n_, k
        else:
            oc, ic = wshape[0], wshape[1] if len(wshape) > 1 else 1
        stats[node.name] = {
            "out_channels": int(oc),
            "in_channels": int(ic),
            "params": params,
            "macs": macs,
        }
    return stats
