"""Measured per-layer time of a bundle's engine, from the backend's own profiler.

The roofline in ``analysis.json`` *estimates* where time goes; this module *measures* it, with
the profiler each runtime ships (``Backend.profile_layers`` in ``targets/``), on the engine the
robot runs (same session settings as the runner):

- ONNX Runtime: ``SessionOptions.enable_profiling`` writes a Chrome trace; each ``Node``
  event ``<node>_kernel_time`` has ``dur`` in microseconds and ``args.op_name``. Events are
  assigned to runs by the ``model_run`` events, so warm-up runs are left out exactly.
- OpenVINO: the ``PERF_COUNT`` property (``ov.properties.enable_profiling``) makes
  ``InferRequest.get_profiling_info()`` return each executed node of the *compiled* graph
  (after OpenVINO's fusions) with ``real_time``, ``node_type`` and ``exec_type`` (the kernel
  chosen, which says which precision really ran, e.g. ``brgconv_avx512_amx_I8``).

Names are the runtime's nodes after its own graph optimizations: a fused or layout-converted
node keeps its source node's name (ONNX Runtime appends ``_token_N``), and nodes the runtime
inserted (layout reorders) map to no graph node (``graph_node`` is null).

Profiling adds a little per-node overhead, so ``total_ms`` (the layers' sum) is close to but
not the same as a ``robopt-bench`` latency; ``run_ms`` is the profiled runs' own mean.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from robopt_compile.errors import BackendUnavailableError, InputError, RoboptError
from robopt_compile.paths import member

_TOKEN = re.compile(r"_token_\d+$")  # ONNX Runtime's suffix on a layout-transformed node


def _load_feeds(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    rel = manifest.get("reference", {}).get("inputs", "reference/inputs.npz")
    path = member(root, rel, f"{root / 'manifest.json'}: reference.inputs")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.ascontiguousarray(z[k]) for k in z.files}
    except Exception as exc:  # numpy's readers raise a dozen types on a corrupt file: one line
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}.") from exc


# --- common ----------------------------------------------------------------------------------


def _graph_node_names(root: Path, engine_model: Path) -> set[str] | None:
    """Node names of the bundle's ONNX and of an ONNX engine; None without the onnx package.
    (``load_manifest`` refused a bundle holding a link, so ``root / "model.onnx"`` is in it.)"""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    names: set[str] = set()
    for path in (root / "model.onnx", engine_model):
        if path.suffix == ".onnx" and path.is_file():
            try:
                model = onnx.load(str(path), load_external_data=False)
            except (OSError, ValueError, DecodeError):  # unreadable: its names stay unknown
                continue
            names.update(n.name for n in model.graph.node if n.name)
    return names


def _graph_node(name: str, names: set[str]) -> str | None:
    """The graph node a runtime node came from: the same name, a ``_token_N`` (ONNX Runtime
    layout transform) or ``/suffix`` (OpenVINO decomposition) variant of it; else None."""
    for cand in (name, _TOKEN.sub("", name), name.split("/", 1)[0]):
        if cand in names:
            return cand
    return None


def profile_layers(
    bundle_dir: Path | str, runs: int = 20, threads: int | None = 1, warmup: int = 5
) -> dict[str, Any]:
    """Measure each node's time in the bundle's engine with the backend's own profiler.

    Args:
        bundle_dir: the bundle folder.
        runs: profiled runs after ``warmup``; times are means per run.
        threads: intra-op threads, as ``robopt-bench --threads`` (None: runtime default).
        warmup: untimed runs first, left out of every figure.

    Returns:
        ``{"kind": "layers", "backend", "runs", "warmup", "threads", "total_ms" (sum of the
        layers' per-run means), "run_ms" (mean profiled run), "layers": [{"name", "op_type",
        "ms", "share", "calls", "graph_node", ...}] sorted by time, "by_op_type": {op: {"ms",
        "share", "layers"}}, "method", ...}``; save it with
        ``robopt_compile.bench.results.save_result(bundle, "layers", data)``.

    Raises:
        BackendUnavailableError: the engine cannot run here (deferred TensorRT build,
            cross-compiled library, a backend without a profiler here, runtime missing).
        InputError: not a bundle, bad arguments, unreadable reference inputs.
    """
    from robopt_compile.bench.compress import materialize_engine
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.targets import get_backend

    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup}).")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1 (got {threads}).")
    root = Path(bundle_dir)
    manifest = load_manifest(root, verify=False)
    backend = manifest["backend"]
    engine = manifest["engine"]
    cfg = dict(engine.get("config") or {})
    if cfg.get("deferred"):
        raise BackendUnavailableError(
            f"{root} holds a deferred {backend} build, not an engine: per-layer times need the "
            "engine; on the device use trtexec --dumpProfile (see engine/trtexec.sh)."
        )
    if cfg.get("cross_compiled"):
        raise BackendUnavailableError(
            f"{root} holds a {backend} library cross-compiled for another CPU; it cannot be "
            "profiled here."
        )
    runtime = get_backend(backend)
    runtime.require()
    engine_dir = materialize_engine(root, manifest)
    files = engine["files"]
    if engine.get("compressed"):  # unpacked into the cache under their original names
        files = [e["original"] for e in engine["compressed"]["files"].values()]
    model = member(engine_dir, cfg.get("model"), f"{engine_dir}: engine.config.model", files)
    feeds = _load_feeds(root, manifest)
    nodes, run_ms, info = runtime.profile_layers(model, cfg, feeds, runs, warmup, threads)
    if not nodes:
        raise RoboptError(f"the {backend} profiler reported no executed nodes for {root}.")
    names = _graph_node_names(root, model)
    total_us = sum(n["total_us"] for n in nodes.values())
    layers = []
    for name, n in nodes.items():
        row: dict[str, Any] = {
            "name": name,
            "op_type": n["op_type"],
            "ms": n["total_us"] / runs / 1e3,
            "share": n["total_us"] / total_us if total_us > 0 else 0.0,
            "calls": n["calls"] / runs,
            "graph_node": None if names is None else _graph_node(name, names),
        }
        row.update({k: v for k, v in n.items() if k not in ("op_type", "total_us", "calls")})
        layers.append(row)
    layers.sort(key=lambda r: (-r["ms"], r["name"]))
    by_op: dict[str, dict[str, Any]] = {}
    for r in layers:
        e = by_op.setdefault(r["op_type"], {"ms": 0.0, "share": 0.0, "layers": 0})
        e["ms"] += r["ms"]
        e["share"] += r["share"]
        e["layers"] += 1
    by_op = dict(sorted(by_op.items(), key=lambda kv: (-kv[1]["ms"], kv[0])))
    return {
        "kind": "layers",
        "backend": backend,
        "model": (manifest.get("model") or {}).get("name"),
        "precision": manifest.get("precision"),
        "target": (manifest.get("target") or {}).get("profile"),
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "total_ms": total_us / runs / 1e3,
        "run_ms": sum(run_ms) / len(run_ms),
        "graph_nodes_known": names is not None,
        **info,
        "layers": layers,
        "by_op_type": by_op,
    }
