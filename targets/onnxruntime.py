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

from robopt_compile.errors import BuildError
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

ENGINE_FILE = "model.ort-opt.onnx"


def _session_options(threads: int | None, level: str):
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
        so = _session_options(self.threads, cfg.get("runtime_optimization_level", "all"))
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

    def build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        import onnxruntime as ort

        if options.precision not in self.precisions:
            raise BuildError(
                f"onnxruntime backend builds {list(self.precisions)} here, not "
                f"{options.precision!r}."
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        engine = out_dir / ENGINE_FILE
        so = _session_options(options.threads, "extended")
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
        except Exception as exc:
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
