"""ONNX Runtime backend (CPU execution provider).

The engine is the bundle's ONNX after ONNX Runtime's own offline graph optimisation at the
*extended* level (fusions such as Conv+BN+activation, GELU, LayerNorm, attention). Per ONNX
Runtime's documentation that level is portable across CPUs for the same ONNX Runtime version;
the hardware-specific layout transforms (NCHWc) of the *all* level are applied when the robot
loads the engine, on the robot's own CPU. Loading the pre-optimised file also shortens start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BuildError, InputError, RoboptError
from robopt_compile.paths import member
from robopt_compile.targets.base import (
    Artifact,
    Backend,
    BareLoop,
    BuildOptions,
    LayerProfile,
    NodeTimes,
    Runner,
    add_node_time,
)

ENGINE_FILE = "model.ort-opt.onnx"


def session_options(threads: int | None, level: str):
    """The SessionOptions a bundle's engine runs with (sequential, ``threads`` intra-op)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OnnxRuntimeRunner(Runner):
    def _activate(self) -> None:
        path = self.engine_file()
        import onnxruntime as ort

        cfg = self.artifact.config
        so = session_options(self.threads, cfg.get("runtime_optimization_level", "all"))
        self.session = ort.InferenceSession(
            str(path), sess_options=so, providers=cfg.get("providers", ["CPUExecutionProvider"])
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        return partial(self.session.run, None, {n: feeds[n] for n in self.input_names})

    def _deactivate(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime_module = "onnxruntime"
    pip_extra = "onnxruntime"
    # Quantized precisions arrive as Q/DQ, MatMulNBits or fp16 graphs made by the quantize
    # passes; the build itself is the same for all of them.
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "int8-weight", "int4-weight")
    quantizers = {  # noqa: RUF012 - read-only table
        "int8": ("int8-static-ort", {}),
        "int8-dynamic": ("int8-dynamic", {}),
        "int8-weight": ("weight-only-ort", {"bits": 8}),
        "int4-weight": ("weight-only-ort", {"bits": 4}),
        "fp16": ("float16", {"dtype": "fp16"}),
    }
    multigraph = True

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        import onnxruntime as ort

        out_dir.mkdir(parents=True, exist_ok=True)
        engine = out_dir / ENGINE_FILE
        so = session_options(options.threads, "extended")
        so.optimized_model_filepath = str(engine)
        if model_path.with_name(model_path.name + ".data").exists():
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", ENGINE_FILE + ".data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        try:
            ort.InferenceSession(
                str(model_path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors share no base but Exception
            raise BuildError(
                f"ONNX Runtime could not load the model: {str(exc).splitlines()[0][:200]}. "
                "Check `robopt-compile analyze` for unsupported operators."
            ) from exc
        files = tuple(sorted(p.name for p in out_dir.iterdir()))
        config = {
            "model": ENGINE_FILE,
            "providers": ["CPUExecutionProvider"],
            "runtime_optimization_level": "all",
            "offline_optimization_level": "extended",
            "onnxruntime_version": ort.__version__,
        }
        return Artifact(self.name, out_dir, files, config)

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        self.require()
        return OnnxRuntimeRunner(artifact, threads)

    def bare_loop(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None
    ) -> BareLoop:
        return OrtBareLoop(artifact, feeds, threads)

    def profile_layers(
        self, model: Path, config: dict[str, Any], feeds: dict[str, Any], runs: int,
        warmup: int, threads: int | None,
    ) -> LayerProfile:  # fmt: skip
        """ONNX Runtime's profiler (``SessionOptions.enable_profiling``): a Chrome trace whose
        ``Node`` events ``<node>_kernel_time`` carry ``dur`` in microseconds and
        ``args.op_name``; events are assigned to runs by the ``model_run`` events, so the
        warm-up runs are left out exactly."""
        import json
        import shutil
        import tempfile

        import onnxruntime as ort

        tmp = Path(tempfile.mkdtemp(prefix="robopt-ort-profile-"))
        try:
            so = session_options(threads, config.get("runtime_optimization_level", "all"))
            so.enable_profiling = True
            so.profile_file_prefix = str(tmp / "ort")
            sess = ort.InferenceSession(
                str(model),
                sess_options=so,
                providers=config.get("providers", ["CPUExecutionProvider"]),
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
        }
        return nodes, [u / 1e3 for u in run_us], info


def parse_ort_trace(events: list[dict[str, Any]] | dict[str, Any], skip_runs: int) -> tuple:
    """Per-node totals and per-run times from an ONNX Runtime profile, without ``skip_runs``.

    Returns:
        (nodes, run_us): node name -> aggregate over the kept runs, and each kept run's
        ``model_run`` duration in microseconds.
    """
    import bisect

    if isinstance(events, dict):  # some versions wrap the list
        events = events.get("traceEvents", [])
    runs = sorted(
        (int(e["ts"]), int(e["ts"]) + int(e["dur"]))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    kept = runs[skip_runs:]
    starts = [r[0] for r in kept]
    nodes: NodeTimes = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        ts = int(e.get("ts", -1))
        i = bisect.bisect_right(starts, ts) - 1
        if i < 0 or ts > kept[i][1]:
            continue  # a warm-up run's node
        args = e.get("args") or {}
        add_node_time(
            nodes,
            name[: -len("_kernel_time")],
            str(args.get("op_name", "?")),
            float(e.get("dur", 0)),
            provider=args.get("provider"),
        )
    return nodes, [float(b - a) for a, b in kept]


class OrtBareLoop(BareLoop):
    """ONNX Runtime's ``InferenceSession.run`` in a plain loop, with the runner's settings
    written out again here (not shared with the runner: see ``BareLoop``)."""

    def __init__(self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None):
        model = member(artifact.root, artifact.config.get("model"),
                       f"{artifact.root}: engine.config.model", artifact.files)  # fmt: skip
        import onnxruntime as ort

        cfg = artifact.config
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[cfg.get("runtime_optimization_level", "all")]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model),
            sess_options=so,
            providers=cfg.get("providers", ["CPUExecutionProvider"]),
        )
        self.feeds = {i.name: feeds[i.name] for i in self.session.get_inputs()}

    def block(self, n: int) -> list[int]:
        import time

        run, feeds, pc = self.session.run, self.feeds, time.perf_counter_ns
        out = []
        for _ in range(n):
            t0 = pc()
            run(None, feeds)
            out.append(pc() - t0)
        return out


class GraphAsWritten(OnnxRuntimeBackend):
    """ONNX Runtime with every graph optimisation off: a Q/DQ graph runs as written (float
    arithmetic after each DequantizeLinear, rounding at each QuantizeLinear).

    The accuracy proxy for a target that cannot run here (TensorRT, a cross-compiled engine):
    ORT's fused x86 int8 kernels would add effects of this CPU that the target does not have,
    e.g. the saturation of uint8 x int8 products without VNNI (the TensorRT pass's transformer
    test: worst cosine 0.9892 fused vs 0.9995 as written on an AVX2 EPYC). Not registered: no
    bundle is built with it.
    """

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        import onnxruntime as ort

        files = tuple(sorted(p.name for p in model_path.parent.iterdir() if p.is_file()))
        config = {
            "model": model_path.name,
            "providers": ["CPUExecutionProvider"],
            "runtime_optimization_level": "disable",
            "onnxruntime_version": ort.__version__,
        }
        return Artifact(self.name, model_path.parent, files, config)
