"""OpenVINO backend (CPU device by default; the profile may name another device).

The engine is OpenVINO IR (``model.xml`` + ``model.bin``) converted from the bundle's ONNX with
weights kept in fp32. The inference precision is a *runtime* hint: OpenVINO on CPUs with
AVX-512 BF16 or AMX silently runs in bf16 unless told otherwise, so fp32 bundles pin
``INFERENCE_PRECISION_HINT=f32`` and the hint travels in the manifest to the robot.

Device and performance hint come from the profile's ``[backend_options.openvino]``: ``device``
("CPU", "GPU", "NPU", or "AUTO:NPU,GPU,CPU" for OpenVINO's own choice in that order) and
``performance_hint`` ("LATENCY", the default for a control loop, or "THROUGHPUT"). A device
this build machine lacks (an NPU profile built on a server) is converted but not compiled
here; the manifest says so and the robot compiles it on first start.

Compiled-model cache: the runner sets OpenVINO's ``CACHE_DIR`` (``$ROBOPT_CACHE/openvino``,
default ``~/.cache/robopt/openvino``), so a robot compiles the IR for its device once and
later starts load the compiled blob (OpenVINO keys the cache by model, device and properties).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
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

# robopt precision -> OpenVINO inference precision hint
# Quantized graphs (NNCF Q/DQ, compressed weights) run their int8 parts in int8 whatever the
# hint; the hint decides the precision of everything else.
PRECISION_HINTS = {
    "fp32": "f32",
    "bf16": "bf16",
    "int8": "f32",
    "int8-weight": "f32",
    "int4-weight": "f32",
}


PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


def cache_dir() -> Path:
    """Where compiled blobs are kept between starts (``$ROBOPT_CACHE/openvino``)."""
    from robopt_compile.paths import cache_dir as robopt_cache

    return robopt_cache("openvino")


def runtime_properties(cfg: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The compile properties a bundle's engine runs with (build check and runner alike)."""
    hint = cfg.get("performance_hint", "LATENCY")
    props: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": cfg.get("inference_precision_hint", "f32"),
        "PERFORMANCE_HINT": hint,
    }
    if hint == "LATENCY":
        props["NUM_STREAMS"] = 1
    if threads and str(cfg.get("device", "CPU")).startswith("CPU"):
        props["INFERENCE_NUM_THREADS"] = threads
    if cfg.get("snippets_mode"):  # set by build() when the CPU code generator lacked an op
        props["SNIPPETS_MODE"] = cfg["snippets_mode"]
    return props


def trim_cache(root: Path, max_mb: float | None = None) -> None:
    """Keep the compiled-blob cache under ``ROBOPT_OPENVINO_CACHE_MAX_MB`` (default 4096):
    the least recently used blobs go first (each engine and property set has its own blob, so
    a build machine compiling many bundles would otherwise fill its disk). Never raises."""
    if max_mb is None:
        max_mb = float(os.environ.get("ROBOPT_OPENVINO_CACHE_MAX_MB", "4096"))
    limit = max_mb * 2**20
    try:
        blobs = [(p.stat(), p) for p in root.iterdir() if p.is_file()]
        total = sum(st.st_size for st, _ in blobs)
        for st, p in sorted(blobs, key=lambda b: max(b[0].st_atime, b[0].st_mtime)):
            if total <= limit:
                break
            p.unlink(missing_ok=True)
            total -= st.st_size
    except OSError:
        pass


# The CPU plugin's message when its snippets code generator has no kernel for an operation.
SNIPPETS_GAP = "Supported precisions set is not available for"


class OpenVinoRunner(Runner):
    def _activate(self) -> None:
        path = self.engine_file()
        if path.suffix == ".xml":  # OpenVINO reads the weights beside the IR by its stem
            weights = Path(self.artifact.config["model"]).with_suffix(".bin").as_posix()
            if os.path.lexists(path.with_suffix(".bin")):
                member(self.artifact.root, weights, f"{self.artifact.root}: engine weights",
                       self.artifact.files)  # fmt: skip
        import openvino as ov

        cfg = self.artifact.config
        core = ov.Core()
        if cfg.get("cache", True):
            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(cache_dir())})
            except OSError:
                pass  # a read-only home: run without the cache rather than fail
        props = runtime_properties(cfg, self.threads)
        self.compiled = core.compile_model(str(path), cfg.get("device", "CPU"), props)
        if cfg.get("cache", True):
            trim_cache(cache_dir())
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.request.infer({n: feeds[n] for n in self.input_names})
        # OpenVINO reuses its output buffers between calls: copy what we hand out.
        return {
            n: np.array(res[o], copy=True)
            for n, o in zip(self.output_names, self.compiled.outputs, strict=True)
        }

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        import openvino as ov

        for i, n in enumerate(self.input_names):
            self.request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(feeds[n])))
        return self.request.infer

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoBackend(Backend):
    name = "openvino"
    runtime_module = "openvino"
    pip_extra = "openvino"
    precisions = tuple(PRECISION_HINTS)
    quantizers = {  # noqa: RUF012 - read-only table
        "int8": ("int8-nncf", {}),
        "int8-weight": ("weight-only-nncf", {"bits": 8}),
        "int4-weight": ("weight-only-nncf", {"bits": 4}),
    }
    multigraph = True

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        import openvino as ov

        opts = dict(getattr(profile, "backend_options", {}).get("openvino", {}))
        device = str(opts.get("device", "CPU"))
        hint = str(opts.get("performance_hint", "LATENCY")).upper()
        if hint not in PERFORMANCE_HINTS:
            raise BuildError(
                f"profile {getattr(profile, 'name', '?')!r}: OpenVINO performance_hint {hint!r} "
                f"is not one of {list(PERFORMANCE_HINTS)}."
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        core = ov.Core()
        try:
            model = core.read_model(str(model_path))
            ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)
        except Exception as exc:  # OpenVINO raises RuntimeError or its own types (no common base)
            raise BuildError(
                f"OpenVINO could not convert the model: {_ov_reason(exc)}. "
                "Check `robopt-compile analyze` for unsupported operators."
            ) from exc
        config = {
            "model": "model.xml",
            "device": device,
            "performance_hint": hint,
            "inference_precision_hint": options.activations or PRECISION_HINTS[options.precision],
            "openvino_version": ov.get_version(),
            "cache": True,
        }
        devices = _devices(device)
        missing = [d for d in devices if d not in core.available_devices]
        if missing and getattr(profile, "path", "") == "detected":
            raise BuildError(
                f"OpenVINO device {device!r} is not present on this machine "
                f"(available: {core.available_devices})."
            )
        if missing:
            config["compile_checked"] = False
            config["compile_note"] = (
                f"device {missing} is not on the build machine (it has "
                f"{core.available_devices}); the robot compiles the IR on first start"
            )
        else:
            # Compile once now so a model the plugin rejects fails the build, not the robot.
            def compile_now() -> None:
                core.compile_model(
                    str(out_dir / "model.xml"), device, runtime_properties(config, options.threads)
                )

            try:
                try:
                    compile_now()
                except Exception as exc:  # re-raised below unless it is the snippets gap
                    if SNIPPETS_GAP not in str(exc) or not device.startswith("CPU"):
                        raise
                    # The CPU plugin's code generator (snippets) lacks a kernel for an op in
                    # this graph (Mish, in OpenVINO 2026.4): compile without snippets.
                    config["snippets_mode"] = "DISABLE"
                    config["snippets_note"] = f"compiled without CPU snippets: {_ov_reason(exc)}"
                    compile_now()
            except Exception as exc:  # a plugin's refusal has no common Python exception type
                raise BuildError(
                    f"OpenVINO {device} plugin rejected the model: {_ov_reason(exc)}."
                ) from exc
            config["compile_checked"] = True
        return Artifact(
            self.name, out_dir, tuple(sorted(p.name for p in out_dir.iterdir())), config
        )

    def runs_here(self, profile: Any) -> tuple[bool, str]:
        import openvino as ov

        device = str(
            getattr(profile, "backend_options", {}).get("openvino", {}).get("device", "CPU")
        )
        have = ov.Core().available_devices
        missing = [d for d in _devices(device) if d not in have]
        if missing:
            return False, f"OpenVINO device {missing} not on this machine ({have})"
        return True, ""

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        self.require()
        return OpenVinoRunner(artifact, threads)

    def bare_loop(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None
    ) -> BareLoop:
        return OvBareLoop(artifact, feeds, threads)

    def profile_layers(
        self, model: Path, config: dict[str, Any], feeds: dict[str, Any], runs: int,
        warmup: int, threads: int | None,
    ) -> LayerProfile:  # fmt: skip
        """OpenVINO's ``PERF_COUNT`` (``InferRequest.get_profiling_info``): each executed node
        of the *compiled* graph (after OpenVINO's fusions) with ``real_time``, ``node_type``
        and ``exec_type`` (the kernel chosen, which says which precision really ran)."""
        import time

        import openvino as ov

        props = runtime_properties(config, threads)
        props[ov.properties.enable_profiling()] = True  # "PERF_COUNT"
        device = config.get("device", "CPU")
        try:
            compiled = ov.Core().compile_model(str(model), device, props)
        except Exception as exc:  # a plugin's refusal has no common Python exception type
            raise BackendUnavailableError(
                f"OpenVINO cannot compile the engine for {device!r} here: {_ov_reason(exc)}."
            ) from exc
        request = compiled.create_infer_request()
        for i, port in enumerate(compiled.inputs):
            name = port.get_any_name()
            if name not in feeds:
                raise InputError(f"reference inputs lack {name!r}; the engine takes other inputs.")
            request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(feeds[name])))
        executed = ov.ProfilingInfo.Status.EXECUTED
        nodes: NodeTimes = {}
        run_ms = []
        for k in range(warmup + runs):
            t0 = time.perf_counter()
            request.infer()
            dt = (time.perf_counter() - t0) * 1e3
            if k < warmup:
                continue
            run_ms.append(dt)
            for p in request.get_profiling_info():
                if p.status == executed:
                    add_node_time(nodes, p.node_name, p.node_type,
                                  p.real_time.total_seconds() * 1e6,
                                  exec_type=p.exec_type)  # fmt: skip
        info = {
            "method": "OpenVINO PERF_COUNT (InferRequest.get_profiling_info): real_time of "
            "each executed node of the compiled graph",
            "runtime_version": ov.get_version(),
            "device": device,
        }
        return nodes, run_ms, info


class OvBareLoop(BareLoop):
    """OpenVINO's ``InferRequest.infer`` in a plain loop, with the runner's settings written
    out again here (not shared with the runner: see ``BareLoop``)."""

    def __init__(self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None):
        model = member(artifact.root, artifact.config.get("model"),
                       f"{artifact.root}: engine.config.model", artifact.files)  # fmt: skip
        import openvino as ov

        cfg = artifact.config
        props: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": cfg.get("inference_precision_hint", "f32"),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(model), cfg.get("device", "CPU"), props)
        self.request = self.compiled.create_infer_request()
        for i, port in enumerate(self.compiled.inputs):
            arr = np.ascontiguousarray(feeds[port.get_any_name()])
            self.request.set_input_tensor(i, ov.Tensor(arr))

    def block(self, n: int) -> list[int]:
        import time

        infer, pc = self.request.infer, time.perf_counter_ns
        out = []
        for _ in range(n):
            t0 = pc()
            infer()
            out.append(pc() - t0)
        return out


def _devices(device: str) -> list[str]:
    """The physical devices a device string names: "AUTO:NPU,GPU" -> ["NPU", "GPU"]."""
    kind, _, rest = device.partition(":")
    if kind in ("AUTO", "MULTI", "HETERO") and rest:
        return [d.strip() for d in rest.split(",") if d.strip()]
    return [] if kind in ("AUTO", "MULTI", "HETERO") else [device]


def _ov_reason(exc: BaseException) -> str:
    """The informative line of an OpenVINO exception (its first lines are source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")]
    return ((useful or lines or [type(exc).__name__])[-1])[:300].rstrip(".")
