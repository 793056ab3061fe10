"""Low-rank factorization of weight matrices by truncated SVD.

Why: a layer that multiplies by a weight W of m x n costs m*n multiply-accumulates (MACs) per row
it transforms. Writing W ~ (U_r S_r) V_r with U_r S_r of m x r and V_r of r x n and running the
two products in sequence costs r*(m+n) MACs and r*(m+n) parameters, which is less only when
r < m*n / (m+n); a square 512 x 512 layer must drop below rank 256 just to break even. The rank
comes from an ``energy`` target (the smallest r whose squared singular values reach that
fraction of the total, so by Eckart-Young the relative Frobenius error is at most
sqrt(1 - energy)) or from a ``rank_ratio`` budget (r = ceil(ratio * min(m, n))), rounded up to
``round_to`` so the new inner dimension suits GEMM kernels.

Factorized: ``Gemm`` with a constant B (transA=0; transB, alpha, beta and the bias C stay on
the second Gemm), ``MatMul`` with a constant 2-D B (A of any rank) and 1x1 ``Conv`` with group=1
and no padding (the first Conv keeps the stride, the second holds the bias). The original node
becomes the second factor and keeps its output value and name, so consumers and graph outputs
are untouched; the first factor is a new node named ``<node>_lowrank_0``.

Skipped, each with its reason in ``report["rows"]``: layers whose rank saves less than
``min_saving`` of the MACs (too little gain for a second kernel call), layers with
min(m, n) < ``min_dim`` (they cost little, and a second kernel call has its own overhead),
excluded nodes, weights shared by several nodes or fed as graph inputs (rewriting one user would
duplicate or detach the weight), Gemm with transA=1, grouped or padded 1x1 Conv, non-float
weights, and nodes whose activation input is constant too (runtimes fold them at load time).
Convs with a larger kernel are not matrix products of the weight and are not candidates.

This is a pure ONNX graph rewrite: it works on a model from any exporter or framework. It only
reports the weight error; the accuracy a policy loses is recovered outside this pass, by
distilling the factorized model against the dense one. Only the main graph is rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile.errors import PassError
from robopt_compile.passes.analysis.flops import node_name
from robopt_compile.passes.quantize.base import UnknownNodeError

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_CONV_SPATIAL = ("strides", "pads", "auto_pad", "dilations")


def _energy_and_error(s: np.ndarray, r: int) -> tuple[float, float]:
    """Energy kept by rank ``r`` and the relative Frobenius error ||W - W_r|| / ||W||."""
    sq = s.astype(np.float64) ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1.0, 0.0
    return float(sq[:r].sum() / total), math.sqrt(float(sq[r:].sum()) / total)


def rank_table(weight: np.ndarray, ranks: Iterable[int]) -> list[dict[str, Any]]:
    """Cost and error of truncating ``weight`` to each rank (FLOPs and error per rank).

    ``weight`` is 2-D (m x n) or a conv weight, taken as ``weight.reshape(shape[0], -1)``.
    Per rank: ``params_ratio`` and ``macs_ratio`` = r*(m+n) / (m*n) (below 1 saves),
    ``energy_kept`` and ``relative_error`` = ||W - W_r||_F / ||W||_F.
    """
    w = np.asarray(weight)
    if w.ndim < 2:
        raise ValueError(f"rank_table needs a matrix, got shape {w.shape}")
    w = w.reshape(w.shape[0], -1)
    m, n = w.shape
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    rows = []
    for r in ranks:
        if not 1 <= r <= min(m, n):
            raise ValueError(f"rank {r} is outside 1..{min(m, n)} for a {m} x {n} weight")
        kept, error = _energy_and_error(s, r)
        ratio = r * (m + n) / (m * n)
        rows.append(
            {"rank": int(r), "params_ratio": ratio, "macs_ratio": ratio,
             "energy_kept": kept, "relative_error": error}
        )  # fmt: skip
    return rows


class LowRankPass(ir.passes.InPlacePass):
    """Replace Gemm/MatMul/1x1-Conv weights by two truncated-SVD factors.

    Args:
        energy: Keep the smallest rank whose squared singular values reach this fraction of
            the total (0 < energy <= 1). Exactly one of ``energy`` and ``rank_ratio``.
        rank_ratio: Rank budget: ceil(rank_ratio * min(m, n)) (0 < rank_ratio <= 1).
        min_dim: Skip weights with min(m, n) below this.
        exclude: Node names left dense (unnamed nodes are ``<op_type>_<index>``).
        round_to: Round ranks up to a multiple of this, capped at min(m, n).
        min_saving: Skip a layer unless r*(m+n) < m*n * (1 - min_saving).

    After ``call``, ``self.report`` holds one row per candidate node: ``node``, ``op_type``,
    ``shape`` [m, n] (the weight as stored; a Conv weight as [out, in]), ``rank``,
    ``energy_kept``, ``weight_relative_error`` (None where no SVD was done), ``params_before``
    and ``params_after`` (weight elements; the bias is unchanged and not counted),
    ``macs_before`` and ``macs_after`` (per row of A for Gemm/MatMul, per output position
    for Conv), ``applied`` and ``reason`` (why it was skipped, else None). ``*_after`` figures
    are the model's after the pass, so a skipped row keeps its dense cost. ``totals`` sums
    params and MACs over the rows and counts ``candidates`` and ``factorized``.
    """

    name = "low-rank"

    def __init__(
        self,
        energy: float | None = None,
        rank_ratio: float | None = None,
        min_dim: int = 32,
        exclude: Sequence[str] = (),
        round_to: int = 8,
        min_saving: float = 0.1,
    ) -> None:
        super().__init__()
        if (energy is None) == (rank_ratio is None):
            raise PassError("low-rank: give exactly one of energy (e.g. 0.95) and rank_ratio.")
        if energy is not None and not 0.0 < energy <= 1.0:
            raise PassError(f"low-rank: energy must be in (0, 1], not {energy}.")
        if rank_ratio is not None and not 0.0 < rank_ratio <= 1.0:
            raise PassError(f"low-rank: rank_ratio must be in (0, 1], not {rank_ratio}.")
        if round_to < 1 or min_dim < 1 or not 0.0 <= min_saving < 1.0:
            raise PassError("low-rank: round_to and min_dim must be >= 1, min_saving in [0, 1).")
        self.energy, self.rank_ratio = energy, rank_ratio
        self.min_dim, self.exclude, self.round_to = min_dim, tuple(exclude), round_to
        self.min_saving = min_saving
        self.report: dict[str, Any] = {}

    def _rank(self, s: np.ndarray) -> int:
        k = s.size
        if self.energy is not None:
            cum = np.cumsum(s.astype(np.float64) ** 2)
            r = int(np.count_nonzero(cum < self.energy * cum[-1] * (1 - 1e-12))) + 1
        else:
            r = math.ceil(self.rank_ratio * k - 1e-9)  # 0.1 * 40 is 4.000000000000001
        r = min(max(r, 1), k)
        return min(k, math.ceil(r / self.round_to) * self.round_to)

    def _max_rank(self, m: int, n: int) -> int:
        """Largest rank that still saves ``min_saving`` of the MACs."""
        return math.ceil(m * n * (1 - self.min_saving) / (m + n)) - 1

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = [node_name(n, i) for i, n in enumerate(graph)]
        missing = [x for x in self.exclude if x not in set(names)]
        if missing:
            raise UnknownNodeError("node in low-rank exclude", missing[0], names)
        rows, plans = [], []
        for node, name in zip(list(graph), names, strict=True):
            found = _weight(node)
            if found is not None:
                row, factors = self._plan(name, node.op_type, *found)
                rows.append(row)
                if factors is not None:
                    plans.append((node, name, found[0], found[1], *factors))
        self.report = self._report(rows)
        if not plans:  # raised before any change: the model is left as it came
            raise PassError(self._failure(rows))
        taken = _names(graph)
        for plan in plans:
            _rewrite(graph, *plan, taken)
        return ir.passes.PassResult(model, modified=True)

    def _plan(
        self, name: str, op_type: str, weight: ir.Value, w: np.ndarray, reason: str | None
    ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
        """The report row of one candidate and its factors (U_r S_r, V_r), or None if skipped."""
        matrix = w.reshape(w.shape[0], w.shape[1])
        m, n = matrix.shape
        row: dict[str, Any] = {
            "node": name, "op_type": op_type, "shape": [m, n], "rank": None,
            "energy_kept": None, "weight_relative_error": None, "params_before": m * n,
            "params_after": m * n, "macs_before": m * n, "macs_after": m * n,
            "applied": False, "reason": reason,
        }  # fmt: skip
        if reason is None and name in self.exclude:
            row["reason"] = "excluded"
        elif reason is None and min(m, n) < self.min_dim:
            row["reason"] = f"min(m, n) = {min(m, n)} is below min_dim = {self.min_dim}"
        if row["reason"] is not None:
            return row, None
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        if not s.any():
            row["reason"] = "the weight is all zeros"
            return row, None
        r = self._rank(s)
        row["rank"] = r
        row["energy_kept"], row["weight_relative_error"] = _energy_and_error(s, r)
        if r * (m + n) >= m * n * (1 - self.min_saving):
            row["reason"] = (
                f"rank {r} needs {r * (m + n)} MACs vs {m * n} dense, saving less than "
                f"min_saving={self.min_saving:g} (needs rank <= {self._max_rank(m, n)})"
            )
            return row, None
        row.update(applied=True, params_after=r * (m + n), macs_after=r * (m + n))
        return row, (u[:, :r] * s[:r], vt[:r])

    def _report(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        totals: dict[str, Any] = {
            k: sum(r[k] for r in rows)
            for k in ("params_before", "params_after", "macs_before", "macs_after")
        }
        totals.update(candidates=len(rows), factorized=sum(r["applied"] for r in rows))
        config = {
            "energy": self.energy, "rank_ratio": self.rank_ratio, "min_dim": self.min_dim,
            "exclude": list(self.exclude), "round_to": self.round_to,
            "min_saving": self.min_saving,
        }  # fmt: skip
        macs_unit = "per row of A (Gemm, MatMul) / per output position (Conv)"
        return {"config": config, "macs_unit": macs_unit, "rows": rows, "totals": totals}

    def _failure(self, rows: list[dict[str, Any]]) -> str:
        """The one-line PassError message when no layer is factorized."""
        if not rows:
            return (
                "low-rank: the model has no Gemm/MatMul/1x1-Conv node with a constant weight "
                "to factorize; drop --low-rank."
            )
        costly = [r for r in rows if r["rank"] is not None]
        if not costly:
            why = "; ".join(f"{r['node']!r}: {r['reason']}" for r in rows[:3])
            more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
            return (
                f"low-rank: no weight can be factorized ({why}{more}); adjust min_dim or "
                "exclude, or drop --low-rank."
            )
        best = min(costly, key=lambda r: r["rank"] / max(self._max_rank(*r["shape"]), 1))
        limit = self._max_rank(*best["shape"])
        setting = (
            f"energy={self.energy:g}"
            if self.energy is not None
            else f"rank_ratio={self.rank_ratio:g}"
        )
        step = self.round_to
        ok = max((self._max_rank(*r["shape"]) // step) * step / min(r["shape"]) for r in costly)
        fix = (
            f"use rank={math.floor(ok * 1000) / 1000:g} (rank_ratio)"
            if ok > 0
            else f"lower round_to={self.round_to}"
        )
        lower = "lower the energy, " if self.energy is not None else ""
        return (
            f"low-rank: no Gemm/MatMul/1x1-Conv weight of this model gets "
            f"{self.min_saving:.0%} fewer MACs at {setting} (closest: {best['node']!r} "
            f"{best['shape'][0]}x{best['shape'][1]} needs rank {best['rank']}, a saving needs "
            f"rank <= {limit}); {lower}{fix}, or drop --low-rank."
        )


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's tensor if it is an initializer or a Constant node's output."""
    return None if value is None else ir.convenience.get_const_tensor(value)


def _weight(node: ir.Node) -> tuple[ir.Value, np.ndarray, str | None] | None:
    """(weight value, its array, reason to skip or None) for a candidate node, else None."""
    op = node.op_type
    if op not in ("Gemm", "MatMul", "Conv") or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    weight = node.inputs[1]
    tensor = _const(weight)
    if tensor is None:
        return None
    w = tensor.numpy()
    attrs = node.attributes
    if op == "Conv":
        if w.ndim < 3 or any(d != 1 for d in w.shape[2:]):
            return None  # a k x k kernel is not a matrix product of its weight
    elif w.ndim != 2:
        return None
    reason = None
    if tensor.dtype not in FLOAT_TYPES:
        reason = f"weight dtype {tensor.dtype.name} is not floating point"
    elif weight.is_graph_input() or weight.is_graph_output():
        reason = f"weight {weight.name!r} is a graph input or output"
    elif len(weight.uses()) > 1:
        reason = f"weight {weight.name!r} is shared by {len(weight.uses())} uses"
    elif _const(node.inputs[0]) is not None:
        reason = "its input is constant too (runtimes fold this node at load time)"
    elif op == "Gemm" and attrs.get_int("transA", 0):
        reason = "Gemm with transA=1"
    elif op == "Conv" and attrs.get_int("group", 1) != 1:
        reason = f"Conv with group={attrs.get_int('group', 1)}"
    elif op == "Conv" and any(attrs.get_ints("pads", [])):
        reason = "1x1 Conv with non-zero pads"
    return weight, w, reason


def _names(graph: ir.Graph) -> set[str]:
    taken = {n.name for n in graph if n.name} | set(graph.initializers)
    taken |= {v.name for v in graph.inputs if v.name}
    taken |= {v.name for n in graph for v in n.outputs if v.name}
    return taken


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _rewrite(
    graph: ir.Graph,
    node: ir.Node,
    name: str,
    weight: ir.Value,
    w: np.ndarray,
    us: np.ndarray,
    v: np.ndarray,
    taken: set[str],
) -> None:
    """Insert ``x -> first factor -> node(second factor)``; ``node`` keeps its output."""
    op, r = node.op_type, v.shape[0]
    x, dtype = node.inputs[0], ir.DataType.from_numpy(w.dtype)
    # Weights stored [out, in] (Conv, Gemm transB=1) run V first; [in, out] ones run U S first.
    out_major = op == "Conv" or (op == "Gemm" and node.attributes.get_int("transB", 0) == 1)
    first, second = (v, us) if out_major else (us, v)
    if op == "Conv":
        ones = (1,) * (w.ndim - 2)
        first, second = first.reshape(*first.shape, *ones), second.reshape(*second.shape, *ones)
    wname = weight.name or f"{name}_weight"
    inits = []
    for i, arr in enumerate((first, second)):
        arr = np.ascontiguousarray(arr.astype(w.dtype))
        iname = _unique(f"{wname}_lowrank_{i}", taken)
        init = ir.Value(
            name=iname,
            shape=ir.Shape(arr.shape),
            type=ir.TensorType(dtype),
            const_value=ir.tensor(arr, dtype=dtype, name=iname),
        )
        graph.register_initializer(init)
        inits.append(init)
    mid = ir.Value(
        name=_unique(f"{name}_lowrank_0_out", taken),
        shape=_mid_shape(node, x, r),
        type=ir.TensorType(dtype),
    )
    attrs: list[ir.Attr] = []
    if op == "Gemm" and out_major:
        attrs = [ir.AttrInt64("transB", 1)]
    elif op == "Conv":
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    first_node = ir.Node(
        "", op, [x, inits[0]], attrs, outputs=[mid], name=_unique(f"{name}_lowrank_0", taken)
    )
    graph.insert_before(node, first_node)
    if not node.name:
        node.name = name
    node.replace_input_with(0, mid)
    node.replace_input_with(1, inits[1])
    if op == "Conv":  # the stride was applied by the first Conv; 1x1 without pads from here on
        for key in _CONV_SPATIAL:
            node.attributes.pop(key, None)
    if weight.uses():
        return
    producer = weight.producer()
    if weight.is_initializer():
        graph.initializers.pop(weight.name)
    elif producer is not None and producer.op_type == "Constant":
        graph.remove(producer, safe=True)


def _mid_shape(node: ir.Node, x: ir.Value, r: int) -> ir.Shape | None:
    """Shape of the value between the factors, where the graph knows it."""
    if node.op_type == "Conv":
        out = node.outputs[0].shape
        return ir.Shape([out[0], r, *out[2:]]) if out is not None and len(out) >= 2 else None
    if x.shape is None or len(x.shape) < 1:
        return None
    return ir.Shape([*x.shape[:-1], r])
