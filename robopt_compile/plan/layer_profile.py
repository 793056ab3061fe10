"""Measured per-layer time of a bundle's engine, from the backend's own profiler.

The roofline in ``analysis.json`` *estimates* where time goes; this module *measures* it, with
the profiler each runtime ships, on the engine the robot runs (same session settings as the
runner):

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

import bisect
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.errors import BackendUnavailableError, InputError, RoboptError
from robopt_compile.paths import member

# One node's aggregated figures: name -> {"op_type", "total_us", "calls", extra...}
_Nodes = dict[str, dict[str, Any]]
_TOKEN = re.compile(r"_token_\d+$")


def _load_feeds(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    rel = manifest.get("reference", {}).get("inputs", "reference/inputs.npz")
    path = member(root, rel, f"{root / 'manifest.json'}: reference.inputs")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.ascontiguousarray(z[k]) for k in z.files}
    except Exception as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}.") from exc


def _add(nodes: _Nodes, name: str, op_type: str, us: float, **extra: Any) -> None:
    entry = nodes.setdefault(name, {"op_type": op_type, "total_us": 0.0, "calls": 0, **extra})
    entry["total_us"] += us
    entry["calls"] += 1


# --- ONNX Runtime ----------------------------------------------------------------------------


def parse_ort_trace(events: list[dict[str, Any]] | dict[str, Any], skip_runs: int) -> tuple:
    """Per-node totals and per-run times from an ONNX Runtime profile, without ``skip_runs``.

    Returns:
        (nodes, run_us): node name -> aggregate over the kept runs, and each kept run's
        ``model_run`` duration in microseconds.
    """
    if isinstance(events, dict):  # some versions wrap the list
        events = events.get("traceEvents", [])
    runs = sorted(
        (int(e["ts"]), int(e["ts"]) + int(e["dur"]))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    kept = runs[skip_runs:]
    starts = [r[0] for r in kept]
    nodes: _Nodes = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        ts = int(e.get("ts", -1))
        i = bisect.bisect_right(starts, ts) - 1
        if i < 0 or ts > kept[i][1]:
            continue  # a warm-up run's node
        args = e.get("args") or {}
        _add(
            nodes,
            name[: -len("_kernel_time")],
            str(args.get("op_name", "?")),
            float(e.get("dur", 0)),
            provider=args.get("provider"),
        )
    return nodes, [float(b - a) for a, b in kept]


def _profile_ort(
    model: Path, cfg: dict[str, Any], feeds: dict[str, Any], runs: int, warmup: int,
    threads: int | None,
) -> tuple[_Nodes, list[float], dict[str, Any]]:  # fmt: skip
    import onnxruntime as ort

    from robopt_compile.targets.onnxruntime import _session_options

    tmp = Path(tempfile.mkdtemp(prefix="robopt-ort-profile-"))
    try:
        so = _session_options(threads, cfg.get("runtime_optimization_level", "all"))
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / "ort")
        sess = ort.InferenceSession(
            str(model),
            sess_options=so,
            providers=cfg.get("providers", ["CPUExecutionProvider"]),
        )
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InputError(f"reference inputs lack {missing}; the engine takes {names}.")
        run_feeds = {n: feeds[n] for n in names}
        for _ in range(warmup + runs):
            sess.run(None, run_feeds)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    nodes, run_us = parse_ort_trace(events, warmup)
    if len(run_us) != runs:
        raise RoboptError(
            f"ONNX Runtime's profile holds {len(run_us) + warmup} runs, expected "
            f"{runs + warmup}; cannot attribute node times to runs."
        )
    info = {
        "method": "ONNX Runtime profiler (SessionOptions.enable_profiling): Node events "
        "<node>_kernel_time, dur in us, assigned to runs by model_run events",
        "runtime_version": ort.__version__,
        "graph": str(model),
    }
    return nodes, [u / 1e3 for u in run_us], info


# --- OpenVINO --------------------------------------------------------------------------------


def _profile_ov(
    model: Path, cfg: dict[str, Any], feeds: dict[str, Any], runs: int, warmup: int,
    threads: int | None,
) -> tuple[_Nodes, list[float], dict[str, Any]]:  # fmt: skip
    import numpy as np
    import openvino as ov

    from robopt_compile.targets.openvino import runtime_properties

    props = runtime_properties(cfg, threads)
    props[ov.properties.enable_profiling()] = True  # "PERF_COUNT"
    device = cfg.get("device", "CPU")
    try:
        compiled = ov.Core().compile_model(str(model), device, props)
    except Exception as exc:
        raise BackendUnavailableError(
            f"OpenVINO cannot compile the engine for {device!r} here: "
            f"{str(exc).splitlines()[0][:200]}."
        ) from exc
    request = compiled.create_infer_request()
    for i, port in enumerate(compiled.inputs):
        name = port.get_any_name()
        if name not in feeds:
            raise InputError(f"reference inputs lack {name!r}; the engine takes other inputs.")
        request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(feeds[name])))
    executed = ov.ProfilingInfo.Status.EXECUTED
    nodes: _Nodes = {}
    run_ms = []
    for k in range(warmup + runs):
        t0 = time.perf_counter()
        request.infer()
        dt = (time.perf_counter() - t0) * 1e3
        if k < warmup:
            continue
        run_ms.append(dt)
        for p in request.get_profiling_info():
            if p.status != executed:
                continue
            _add(
                nodes,
                p.node_name,
                p.node_type,
                p.real_time.total_seconds() * 1e6,
                exec_type=p.exec_type,
            )
    info = {
        "method": "OpenVINO PERF_COUNT (InferRequest.get_profiling_info): real_time of each "
        "executed node of the compiled graph",
        "runtime_version": ov.get_version(),
        "device": device,
        "graph": str(model),
    }
    return nodes, run_ms, info


Profiler = Callable[..., tuple[_Nodes, list[float], dict[str, Any]]]
PROFILERS: dict[str, Profiler] = {"onnxruntime": _profile_ort, "openvino": _profile_ov}


# --- common ----------------------------------------------------------------------------------


def _graph_node_names(root: Path, engine_model: Path) -> set[str] | None:
    """Node names of the bundle's ONNX and of an ONNX engine; None without the onnx package.
    (``load_manifest`` refused a bundle holding a link, so ``root / "model.onnx"`` is in it.)"""
    try:
        import onnx
    except ImportError:
        return None
    names: set[str] = set()
    for path in (root / "model.onnx", engine_model):
        if path.suffix == ".onnx" and path.is_file():
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception:
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
    profiler = PROFILERS.get(backend)
    if profiler is None:
        raise BackendUnavailableError(
            f"per-layer profiling supports {sorted(PROFILERS)}; this bundle's engine is {backend}."
        )
    get_backend(backend).require()
    engine_dir = materialize_engine(root, manifest)
    files = engine["files"]
    if engine.get("compressed"):  # unpacked into the cache under their original names
        files = [e["original"] for e in engine["compressed"]["files"].values()]
    model = member(engine_dir, cfg.get("model"), f"{engine_dir}: engine.config.model", files)
    feeds = _load_feeds(root, manifest)
    nodes, run_ms, info = profiler(model, cfg, feeds, runs, warmup, threads)
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
    info.pop("graph", None)
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
