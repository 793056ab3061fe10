"""Numerical comparison of model runs: random feeds, ONNX Runtime runs, output agreement.

One module serves every parity check in robopt (export vs torch, simplify before vs after,
engine vs reference), so all of them judge agreement with the same figures. ``compare`` and
``worst`` are numpy-only so ``robopt-bench`` can use them on a robot; ``run_onnx`` imports
onnxruntime (and onnx_ir) only when called.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

    from robopt_compile.ir import TensorSpec

# Integer inputs are usually indices, ids or flags: small non-negative values stay in range.
INT_RANGE = (0, 8)

# ir.Model above this many weight bytes is handed to ORT as a file with external data: a single
# serialized protobuf cannot exceed 2 GiB.
_IN_MEMORY_LIMIT = 1 << 30

_ORT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16, float8 types; a dependency of onnx

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise ValueError(f"cannot make random data of dtype {name!r}") from None


def random_feeds(
    specs: Iterable[TensorSpec], seed: int = 0, batch: int = 1
) -> dict[str, np.ndarray]:
    """Seeded random inputs for ``specs``; symbolic dims become ``batch``.

    Floats are standard normal, integers uniform in ``INT_RANGE`` (ids, indices), bools fair
    coin flips. The same specs and seed always give the same arrays.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = _np_dtype(spec.dtype)
        shape = spec.concrete_shape(batch)
        if dtype == np.bool_:
            arr = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(*INT_RANGE, size=shape).astype(dtype)
        elif dtype.kind in "fV":  # V: ml_dtypes' bfloat16 / float8
            arr = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        elif np.issubdtype(dtype, np.complexfloating):
            arr = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        else:
            raise ValueError(f"input {spec.name!r}: cannot make random data of dtype {dtype}")
        feeds[spec.name] = np.asarray(arr)
    return feeds


def run_onnx(
    model: ir.Model | str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = 1,
    *,
    optimization: str = "all",
    providers: list[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``feeds``; see ``run_onnx_many``."""
    return run_onnx_many(model, [feeds], threads, optimization=optimization, providers=providers)[0]


def run_onnx_many(
    model: ir.Model | str | os.PathLike[str],
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    threads: int | None = 1,
    *,
    optimization: str = "all",
    providers: list[Any] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run ``model`` with ONNX Runtime on each feed dict (one session) and return the outputs
    by name, in graph order. ``threads=None`` uses ONNX Runtime's default.

    An ``ir.Model`` is serialized in memory; above 1 GiB of weights, or when it holds external
    tensors, it is written to a temporary folder with external data instead, so models past
    protobuf's 2 GiB limit still run.
    ``optimization`` is ORT's graph level (``disable``/``basic``/``extended``/``all``):
    ``disable`` runs the graph as written, which is what a parity check of a rewrite wants.
    Inputs in ``feeds`` that the model does not take are ignored.
    """
    if optimization not in _ORT_LEVELS:
        raise ValueError(f"optimization must be one of {list(_ORT_LEVELS)}, not {optimization!r}")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[optimization])
    so.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]

    def _run(source: str | bytes) -> list[dict[str, np.ndarray]]:
        sess = ort.InferenceSession(source, so, providers=providers)
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        ro = ort.RunOptions()
        ro.log_severity_level = 3  # a failing run raises; ORT's own error log is noise
        results = []
        for feeds in feeds_list:
            outs = sess.run(names, {k: v for k, v in feeds.items() if k in wanted}, ro)
            results.append(dict(zip(names, (np.asarray(o) for o in outs), strict=True)))
        return results

    if isinstance(model, (str, os.PathLike)):
        return _run(os.fspath(model))

    import onnx_ir as ir

    from robopt_compile.ir import weight_bytes

    # External tensors serialize as file references that an in-memory session cannot resolve.
    external = any(
        isinstance(v.const_value, ir.ExternalTensor)
        for g in model.graphs()
        for v in g.initializers.values()
    )
    if not external and weight_bytes(model) < _IN_MEMORY_LIMIT:
        return _run(ir.serde.serialize_model(model).SerializeToString())
    with tempfile.TemporaryDirectory(prefix="robopt-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")  # leaves ``model`` unchanged
        return _run(str(path))


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "biuf":
        return a.astype(np.float64, copy=False)
    if a.dtype.kind == "c":
        return np.stack([a.real, a.imag], axis=-1).astype(np.float64)
    return np.asarray(a, dtype=np.float32).astype(np.float64)  # bfloat16 / float8 via ml_dtypes


def compare(
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> dict[str, dict[str, Any]]:
    """Agreement of ``got`` with ``ref`` for every output in ``ref``.

    Per output: ``max_abs``; ``max_rel`` = ``max_abs`` over the reference's largest magnitude
    (element-wise relative error explodes near zero and says little); ``cosine`` of the
    flattened arrays (1.0 when both are all zero); ``allclose`` (``|got-ref| <= atol +
    rtol*|ref|``); ``nonfinite_mismatch``, the count of places where exactly one side is
    NaN/inf or both are infinite with different signs. Figures use finite-in-both elements only.
    A missing output or a shape mismatch gives an ``error`` string and failing figures.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, r in ref.items():
        g = got.get(name)
        failing = {"max_abs": float("inf"), "max_rel": float("inf"), "cosine": 0.0}
        if g is None:
            out[name] = {**failing, "allclose": False, "error": "missing output"}
            continue
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            out[name] = {**failing, "allclose": False, "error": f"shape {g.shape} != {r.shape}"}
            continue
        rf, gf = _as_float(r).ravel(), _as_float(g).ravel()
        fin_r, fin_g = np.isfinite(rf), np.isfinite(gf)
        both = fin_r & fin_g
        same_nonfinite = (~fin_r & ~fin_g) & ((np.isnan(rf) & np.isnan(gf)) | (rf == gf))
        mismatch = int(np.count_nonzero(~both & ~same_nonfinite))
        rb, gb = rf[both], gf[both]
        diff = np.abs(rb - gb)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(rb).max()) if rb.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        nr, ng = float(np.linalg.norm(rb)), float(np.linalg.norm(gb))
        if nr == 0.0 and ng == 0.0:
            cosine = 1.0
        elif nr == 0.0 or ng == 0.0:
            cosine = 0.0
        else:
            cosine = float(np.clip(np.dot(rb, gb) / (nr * ng), -1.0, 1.0))
        close = bool(np.all(diff <= atol + rtol * np.abs(rb))) and mismatch == 0
        out[name] = {
            "max_abs": max_abs,
            "max_rel": max_rel,
            "cosine": cosine,
            "allclose": close,
            "nonfinite_mismatch": mismatch,
        }
    return out


def worst(cmp: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The worst figures over all outputs of a ``compare`` result, naming where each came from.

    Returns ``max_abs``, ``max_rel`` (largest), ``cosine`` (smallest), ``allclose`` (all),
    ``nonfinite_mismatch`` (sum), ``output`` (the output with the smallest cosine, ties broken
    by largest ``max_abs``) and ``outputs`` (how many were compared).
    """
    if not cmp:
        return {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "allclose": True,
                "nonfinite_mismatch": 0, "output": None, "outputs": 0}  # fmt: skip
    name = min(cmp, key=lambda k: (cmp[k]["cosine"], -cmp[k]["max_abs"]))
    return {
        "max_abs": max(c["max_abs"] for c in cmp.values()),
        "max_rel": max(c["max_rel"] for c in cmp.values()),
        "cosine": min(c["cosine"] for c in cmp.values()),
        "allclose": all(c["allclose"] for c in cmp.values()),
        "nonfinite_mismatch": sum(c.get("nonfinite_mismatch", 0) for c in cmp.values()),
        "output": name,
        "outputs": len(cmp),
    }


def judge(
    ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], tolerance: Mapping[str, float]
) -> dict[str, Any]:
    """Pass/fail of ``got`` against ``ref`` under ``tolerance`` {cosine_min, atol, rtol}.

    The one rule every check in robopt uses (export parity, engine fidelity at compile time,
    fidelity in ``robopt-bench`` on the robot), so a bundle that passed at compile time passes
    on the robot with the same runtime. An output passes when it has the reference's shape,
    no NaN/inf where the reference has none, cosine >= ``cosine_min``, and every element
    satisfies ``|got - ref| <= atol + rtol * |ref|``.
    """
    cos_min, atol, rtol = (float(tolerance[k]) for k in ("cosine_min", "atol", "rtol"))
    cmp = compare(ref, got, rtol=rtol, atol=atol)
    for name, c in cmp.items():
        reasons = []
        if "error" in c:
            reasons.append(c["error"])
        else:
            if c["nonfinite_mismatch"]:
                reasons.append(f"{c['nonfinite_mismatch']} non-finite values")
            if not c["cosine"] >= cos_min:
                reasons.append(f"cosine {c['cosine']:.6f} < {cos_min}")
            if not c["allclose"]:
                reasons.append(f"max abs error {c['max_abs']:.3g} exceeds atol + rtol*|ref|")
        c["shape"] = list(np.shape(got[name])) if name in got else None
        c["passed"] = not reasons
        c["reason"] = "; ".join(reasons) or None
    summary = {k: v for k, v in worst(cmp).items() if k != "allclose"}
    failing = [n for n, c in cmp.items() if not c["passed"]]
    if failing:
        summary["output"] = failing[0]  # name the output that failed, not just the worst cosine
    return {
        "passed": not failing,
        "tolerance": {"cosine_min": cos_min, "atol": atol, "rtol": rtol},
        **summary,
        "outputs": cmp,
    }
