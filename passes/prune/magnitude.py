"""Unstructured magnitude pruning: a size-only optimization.

Zeroes the ``sparsity`` fraction of smallest-|w| weights of Conv/Gemm/MatMul constants, either
with one threshold across all layers (``scope="global"``: layers with many small weights lose
more) or the same fraction in every layer (``scope="layer"``). Biases are never pruned.

No backend robopt targets runs scattered zeros faster: ONNX Runtime, OpenVINO CPU (whose sparse
int8 weight decompression is opt-in via ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` and not set by
robopt) and TensorRT (which needs the 2:4 pattern, ``semi_structured.py``) run dense kernels
over the zeros. What shrinks is the bundle: zeros compress, and the bundle stores the engine
files compressed (``bench/compress.py``). Accuracy drops with sparsity; check the engine
fidelity figures before shipping a pruned policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile.errors import PassError
from robopt_compile.passes.prune.semi_structured import WeightSite, weight_sites

SCOPES = ("global", "layer")
NOTE = "size only: dense kernels run the zeros; the bundle stores compressed engine files"


class MagnitudePrunePass(ir.passes.InPlacePass):
    """Zero the smallest-magnitude ``sparsity`` fraction of Conv/Gemm/MatMul weights.

    Args:
        sparsity: Fraction of the eligible weights set to zero, in (0, 1).
        scope: ``global`` (one threshold over all eligible weights) or ``layer``.
        min_params: Weights with fewer values are left alone (small layers are cheap to store
            and often sensitive: the first conv, the action head).
        exclude: Node names (or weight names) left dense.
    """

    name = "prune-magnitude"  # its PASSES name

    def __init__(
        self,
        sparsity: float,
        scope: str = "global",
        min_params: int = 1024,
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if not 0.0 < sparsity < 1.0:
            raise PassError(
                f"{self.name}: sparsity must be between 0 and 1 exclusive (got {sparsity}); "
                "e.g. 0.5 zeroes half of the weights."
            )
        if scope not in SCOPES:
            raise PassError(f"{self.name}: scope must be one of {list(SCOPES)}, not {scope!r}.")
        if min_params < 1:
            raise PassError(f"{self.name}: min_params must be >= 1 (got {min_params}).")
        self.sparsity, self.scope, self.min_params = float(sparsity), scope, min_params
        self.exclude = tuple(exclude)
        self.report: dict[str, Any] = {}

    def eligibility(self, site: WeightSite) -> str | None:
        """Why ``site`` is left alone, or None when it is pruned."""
        if site.reason is not None:
            return site.reason
        size = math.prod(site.shape or ())
        if size < self.min_params:
            return f"{size} weights, fewer than min_params={self.min_params}"
        return None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = weight_sites(model, self.exclude)
        verdicts = [(s, self.eligibility(s)) for s in sites]
        chosen = [s for s, reason in verdicts if reason is None]
        if not chosen:
            seen = "; ".join(f"{s.name}: {r}" for s, r in verdicts[:3]) or "no Conv/Gemm/MatMul"
            raise PassError(
                f"{self.name}: no weight qualifies ({seen}). Lower min_params or remove "
                "exclusions, or drop the pass for this model."
            )
        arrays = {s.name: _array(s) for s in chosen}
        masks, threshold = self._masks(arrays)
        rows = []
        for site, reason in verdicts:
            params = math.prod(site.shape) if site.shape is not None else 0
            row: dict[str, Any] = {
                "node": site.name,
                "op_type": site.node.op_type,
                "weight": site.weight.name if site.weight is not None else None,
                "shape": list(site.shape) if site.shape is not None else None,
                "eligible": reason is None,
                "reason": reason,
                "params": params,
                "params_zeroed": 0,
                "zeros": None,
                "sparsity": None,
            }
            if reason is None:
                before = arrays[site.name]
                after = np.where(masks[site.name], np.zeros((), before.dtype), before)
                assert site.weight is not None and site.weight.const_value is not None
                site.weight.const_value = ir.Tensor(after, name=site.weight.const_value.name)
                row["params_zeroed"] = int(np.count_nonzero(before) - np.count_nonzero(after))
                row["zeros"] = int(after.size - np.count_nonzero(after))
                row["sparsity"] = row["zeros"] / after.size
            rows.append(row)
        eligible = [r for r in rows if r["eligible"]]
        eligible_params = sum(r["params"] for r in eligible)
        zeros = sum(r["zeros"] for r in eligible)
        all_params = sum(r["params"] for r in rows)
        self.report = {
            "method": "magnitude",
            "scope": self.scope,
            "sparsity_target": self.sparsity,
            "min_params": self.min_params,
            "threshold": threshold,
            "excluded": list(self.exclude),
            "rows": rows,
            "totals": {
                "layers": len(rows),
                "pruned_layers": len(eligible),
                "weight_params": all_params,
                "eligible_params": eligible_params,
                "params_zeroed": sum(r["params_zeroed"] for r in eligible),
                "sparsity_eligible": zeros / eligible_params,
                "sparsity_all_weights": zeros / all_params,
            },
            "note": NOTE,
        }
        return ir.passes.PassResult(model, modified=True)

    def _masks(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float | None]:
        """Per weight, the boolean mask of values to zero; the global threshold (|w|) if any."""
        if self.scope == "layer":
            return {k: _smallest(_magnitude(a), self.sparsity) for k, a in arrays.items()}, None
        flat = np.concatenate([_magnitude(a).ravel() for a in arrays.values()])
        mask = _smallest(flat, self.sparsity)
        threshold = float(flat[mask].max()) if mask.any() else None
        out, start = {}, 0
        for k, a in arrays.items():
            out[k] = mask[start : start + a.size].reshape(a.shape)
            start += a.size
        return out, threshold


def _array(site: WeightSite) -> np.ndarray:
    assert site.weight is not None and site.weight.const_value is not None
    return site.weight.const_value.numpy()


def _magnitude(a: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32, copy=False))


def _smallest(magnitude: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of exactly round(fraction * size) smallest entries."""
    k = math.floor(fraction * magnitude.size + 0.5)
    mask = np.zeros(magnitude.size, dtype=bool)
    if k > 0:
        mask[np.argpartition(magnitude.ravel(), k - 1)[:k]] = True
    return mask.reshape(magnitude.shape)
