"""2:4 semi-structured sparsity for the sparse tensor cores of Ampere-class GPUs (Jetson Orin).

TensorRT's rule (Developer Guide, "Structured Sparsity": 8.x
https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/developer-guide/index.html#structured-sparsity,
10.x/11.x https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/data-formats-tensors.html):
"the convolution kernel weights and the fully connected weights" qualify when, "for each output
channel and for each spatial pixel in the kernel weights, every four input channels must have at
least two zeros", i.e. for a ``[K, C, R, S]`` kernel with ``C % 4 == 0`` every
``weights[k, 4j:4j+4, r, s]`` holds at most two non-zeros. The pattern runs along the *reduction*
(input-channel) dimension. The engine uses it only when built with ``BuilderFlag.SPARSE_WEIGHTS``
(``trtexec --sparsity=enable``) together with fp16 or int8, and even then "tactics with structured
sparsity can be slower than normal tactics and TensorRT will choose normal tactics in these
cases"; its build log lists "Layers eligible for sparse math" and the ones it picked.

What this pass does, per node (top-level graph):

- Conv with ``group=1``: weight ``[K, C, *kernel]``, pattern along C (axis 1).
- Gemm with a constant 2-D B: along B's reduction axis (1 with ``transB=1``, else 0).
- MatMul with a constant 2-D B (a fully connected layer; TensorRT 10 dropped
  ``IFullyConnectedLayer`` and treats these MatMuls as FC): along axis 0.

In every run of ``m`` consecutive weights along that axis it keeps the ``n`` largest magnitudes
and zeroes the rest, checks every rewritten tensor with :func:`check_pattern`, and sets model
metadata ``robopt.sparsity = "2:4"`` so a TensorRT build recipe knows to enable SPARSE_WEIGHTS.

Not rewritten, with the reason in the report: grouped/depthwise Conv (not the dense
``[K, C, R, S]`` case of the rule), a reduction dim that is not a multiple of ``m``, a
reduction dim or output-channel count below ``min_channels`` (small layers are launch-bound;
NVIDIA's own ASP pruner also skips layers unless ``K % 8 == 0`` and ``C % 16 == 0``, see
apex/contrib/sparsity/asp.py), weights that are not constant initializers, shared weights (one
tensor cannot carry two layers' masks) and excluded nodes.

One-shot magnitude pruning costs accuracy; NVIDIA's recipe fine-tunes afterwards (ASP). Run it
before fp16/int8 passes: zeros stay exactly zero in fp16 and in symmetric int8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile.errors import PassError

SPARSITY_KEY = "robopt.sparsity"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
TENSORRT_CONDITION = (
    "TensorRT uses sparse tensor cores only with BuilderFlag.SPARSE_WEIGHTS (trtexec "
    "--sparsity=enable) and fp16 or int8 on an Ampere-or-newer GPU, and only where its sparse "
    'tactic is faster: "In some cases, tactics with structured sparsity can be slower than '
    'normal tactics and TensorRT will choose normal tactics in these cases."'
)


@dataclass(frozen=True)
class WeightSite:
    """The constant weight of a Conv/Gemm/MatMul and why it cannot be rewritten (or None)."""

    node: ir.Node
    name: str  # the node's report name: its name, or <op_type>_<index>
    weight: ir.Value | None
    shape: tuple[int, ...] | None
    reduce_axis: int | None  # the input-channel axis of the weight
    reason: str | None


def weight_sites(model: ir.Model, exclude: Sequence[str] = ()) -> list[WeightSite]:
    """Every Conv/Gemm/MatMul of the top-level graph with its weight and the common rules.

    The common rules: the weight is a float constant initializer (not a graph input), used by
    this node only, and neither the node nor the weight is in ``exclude``. ``exclude`` names
    that match no node or weight raise ``PassError`` (a typo must not prune a layer).
    """
    nodes = list(model.graph)
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(nodes)]
    known = set(names) | set(model.graph.initializers)
    unknown = [e for e in exclude if e not in known]
    if unknown:
        from robopt_compile.passes.quantize.base import UnknownNodeError

        raise UnknownNodeError("node or weight in the prune exclude list", unknown[0], names)
    sites = []
    for node, name in zip(nodes, names, strict=True):
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        tensor = None if w is None else w.const_value
        shape = None if tensor is None else tuple(int(d) for d in tensor.shape)
        reason = None
        if w is None or tensor is None or w.is_graph_input():
            reason = "weight is not a constant initializer"
        elif tensor.dtype not in FLOAT_TYPES:
            reason = f"weight dtype {tensor.dtype.name} is not floating point"
        elif len(w.uses()) > 1 or w.is_graph_output():
            reason = f"shared weight {w.name!r} (read by {len(w.uses())} nodes)"
        elif name in exclude or w.name in exclude:
            reason = "excluded"
        sites.append(WeightSite(node, name, w, shape, _reduce_axis(node, shape), reason))
    return sites


def _reduce_axis(node: ir.Node, shape: tuple[int, ...] | None) -> int | None:
    if shape is None:
        return None
    if node.op_type == "Conv":
        return 1 if len(shape) >= 3 else None
    if len(shape) != 2:
        return None
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transB", 0) else 0
    return 0  # MatMul: X[..., C] @ B[C, K]


def check_pattern(weight: np.ndarray, axis: int, n: int = 2, m: int = 4) -> bool:
    """True when every ``m`` consecutive values along ``axis`` hold at most ``n`` non-zeros.

    A dimension that is not a multiple of ``m`` fails: TensorRT requires ``C % 4 == 0``.
    """
    w = np.asarray(weight)
    if w.ndim == 0 or w.shape[axis] % m:
        return False
    groups = np.moveaxis(w, axis, -1).reshape(-1, m)
    return bool((np.count_nonzero(groups, axis=1) <= n).all())


def prune_n_m(weight: np.ndarray, axis: int, n: int = 2, m: int = 4) -> np.ndarray:
    """A copy of ``weight`` with the ``m - n`` smallest magnitudes of every ``m`` consecutive
    values along ``axis`` set to zero (ties: the earlier position is dropped first)."""
    w = np.moveaxis(np.asarray(weight), axis, -1)
    shape = w.shape
    groups = np.ascontiguousarray(w).reshape(-1, m)
    magnitude = np.abs(groups.astype(np.float32))
    drop = np.argsort(magnitude, axis=1, kind="stable")[:, : m - n]
    out = groups.copy()
    np.put_along_axis(out, drop, 0, axis=1)
    return np.moveaxis(out.reshape(shape), -1, axis)


class SemiStructuredSparsityPass(ir.passes.InPlacePass):
    """Prune Conv/Gemm/MatMul weights to N:M (2:4) along the input-channel dimension.

    Args:
        n: Non-zeros kept in every group (2 for Ampere's 2:4).
        m: Group length along the reduction dimension (4).
        min_channels: Skip layers whose reduction dim or output channels are below this.
        exclude: Node names (or weight names) left dense.
    """

    name = "prune-2of4"  # its PASSES name

    def __init__(
        self, n: int = 2, m: int = 4, min_channels: int = 64, exclude: Sequence[str] = ()
    ) -> None:
        super().__init__()
        if not 0 < n < m:
            raise PassError(f"{self.name}: need 0 < n < m for an n:m pattern (got {n}:{m}).")
        if min_channels < 1:
            raise PassError(f"{self.name}: min_channels must be >= 1 (got {min_channels}).")
        self.n, self.m, self.min_channels = n, m, min_channels
        self.exclude = tuple(exclude)
        self.report: dict[str, Any] = {}

    def eligibility(self, site: WeightSite) -> str | None:
        """Why ``site`` cannot take the n:m pattern, or None when it can."""
        if site.reason is not None:
            return site.reason
        node, shape, axis = site.node, site.shape, site.reduce_axis
        assert shape is not None
        if node.op_type == "Conv" and (group := node.attributes.get_int("group", 1)) != 1:
            kind = "depthwise" if shape[1] == 1 else "grouped"
            return f"{kind} conv (group={group}): the rule covers dense [K, C, R, S] kernels"
        if axis is None:
            return f"weight of rank {len(shape)} is not a 2-D fully connected weight"
        c, k = shape[axis], shape[0] if axis == 1 else shape[1]
        if c % self.m:
            return f"reduction dim C={c} is not a multiple of {self.m}"
        if c < self.min_channels:
            return f"reduction dim C={c} is below min_channels={self.min_channels}"
        if k < self.min_channels:
            return f"output channels K={k} below min_channels={self.min_channels}"
        return None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = weight_sites(model, self.exclude)
        verdicts = [(s, self.eligibility(s)) for s in sites]
        if not any(reason is None for _, reason in verdicts):
            seen = "; ".join(f"{s.name}: {r}" for s, r in verdicts[:3]) or "no Conv/Gemm/MatMul"
            raise PassError(
                f"{self.name}: no layer can take the {self.n}:{self.m} pattern ({seen}). Lower "
                "min_channels, remove exclusions, or drop the pass for this model."
            )
        rows, verified, rewritten = [], True, []
        for site, reason in verdicts:
            row: dict[str, Any] = {
                "node": site.name,
                "op_type": site.node.op_type,
                "weight": site.weight.name if site.weight is not None else None,
                "shape": list(site.shape) if site.shape is not None else None,
                "axis": site.reduce_axis,
                "eligible": reason is None,
                "reason": reason,
                "params": int(np.prod(site.shape)) if site.shape is not None else 0,
                "zeros": None,
                "zeros_fraction": None,
                "pattern_verified": None,
                "magnitude_kept_fraction": None,
            }
            if reason is None:
                assert site.weight is not None and site.reduce_axis is not None
                tensor, stats = self._rewrite(site.weight, site.reduce_axis)
                rewritten.append((site.weight, tensor))
                row.update(stats)
                verified &= row["pattern_verified"]
            elif site.weight is not None and site.weight.const_value is not None:
                row.update(_zeros(site.weight.const_value.numpy()))
            rows.append(row)
        if not verified:
            bad = [r["node"] for r in rows if r["pattern_verified"] is False]
            raise PassError(f"{self.name}: rewritten weights of {bad} fail the pattern (a bug).")
        for weight, tensor in rewritten:  # only now: a failure above leaves the model as it was
            weight.const_value = tensor
        pattern = f"{self.n}:{self.m}"
        model.metadata_props[SPARSITY_KEY] = pattern
        self.report = {
            "pattern": pattern,
            "rule": "at most n non-zeros in every m consecutive weights along the reduction "
            "(input-channel) dim: Conv axis 1, Gemm B axis 1 if transB else 0, MatMul B axis 0",
            "min_channels": self.min_channels,
            "excluded": list(self.exclude),
            "rows": rows,
            "totals": _totals(rows),
            "pattern_verified": verified,
            "metadata": {SPARSITY_KEY: pattern},
            "tensorrt": {
                "builder_flag": "BuilderFlag.SPARSE_WEIGHTS",
                "trtexec": "--sparsity=enable",
                "precision": "fp16 or int8 (kFP16/kINT8) must be enabled as well",
            },
            "note": "no speedup on dense CPU backends: ONNX Runtime and OpenVINO CPU run the same "
            "dense Conv/Gemm kernels and multiply the zeros. " + TENSORRT_CONDITION,
        }
        return ir.passes.PassResult(model, modified=True)

    def _rewrite(self, weight: ir.Value, axis: int) -> tuple[ir.Tensor, dict[str, Any]]:
        """The pruned tensor and its row figures; the pattern is checked on the tensor itself."""
        old = weight.const_value
        assert old is not None
        before = old.numpy()
        tensor = ir.Tensor(prune_n_m(before, axis, self.n, self.m), name=old.name)
        after = tensor.numpy()
        total = float(np.abs(before.astype(np.float64)).sum())
        kept = float(np.abs(after.astype(np.float64)).sum())
        return tensor, {
            **_zeros(after),
            "pattern_verified": check_pattern(after, axis, self.n, self.m),
            "magnitude_kept_fraction": kept / total if total else 1.0,
        }


def _zeros(a: np.ndarray) -> dict[str, Any]:
    zeros = int(a.size - np.count_nonzero(a))
    return {"zeros": zeros, "zeros_fraction": zeros / a.size if a.size else 0.0}


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    params = sum(r["params"] for r in rows)
    eligible = [r for r in rows if r["eligible"]]
    pruned = sum(r["params"] for r in eligible)
    return {
        "layers": len(rows),
        "eligible_layers": len(eligible),
        "weight_params": params,
        "eligible_params": pruned,
        "eligible_param_fraction": pruned / params if params else 0.0,
        "zeros_in_eligible": sum(r["zeros"] for r in eligible),
    }
