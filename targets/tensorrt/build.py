"""The TensorRT engine build: a recipe executed with TensorRT's Python API on this machine's GPU.

``build_engine`` is the one builder robopt has: ``TensorRTBackend.build`` calls it where TensorRT
>= 10 and a CUDA GPU exist, and ``robopt-bench`` calls it on the device to complete a deferred
build. The calls follow the TensorRT 10.3 / 11.1 Python bindings (``python/src/infer/
pyCore.cpp`` at those tags) and are the same on both: networks are created STRONGLY_TYPED
(ignored and always on in 11), so the ONNX's own types are the precision; the weakly typed flags
(BuilderFlag.FP16 and INT8, invalid with STRONGLY_TYPED and removed in 11) and implicit INT8
calibration (removed in 11) are never used; TF32 is cleared, so fp32 tensors compute in fp32.
The timing cache persists per GPU and TensorRT version under ``$ROBOPT_CACHE/tensorrt/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, BuildError
from robopt_compile.targets.tensorrt.probe import builder_here, engine_key, make_logger
from robopt_compile.targets.tensorrt.support import dla_supported


def cache_base() -> Path:
    """``$ROBOPT_CACHE`` (else ``$XDG_CACHE_HOME/robopt`` or ``~/.cache/robopt``)."""
    from robopt_compile.paths import cache_dir

    return cache_dir("engines").parent


def timing_cache_path(key: str) -> Path:
    """Where the timing cache of engines keyed ``key`` (GPU + TensorRT version) persists."""
    return cache_base() / "tensorrt" / f"timing-{key}.cache"


def _atomic_write(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _parser_error(parser: Any) -> str:
    n = parser.num_errors
    if not n:
        return "the parser gave no reason"
    e = parser.get_error(0)
    node = e.node_name() or f"node #{e.node()}"
    more = f" (and {n - 1} more parser error(s))" if n > 1 else ""
    return f"{node}: {' '.join(str(e.desc()).split())}{more}"


def _timing_cache(config: Any, path: Path) -> tuple[Any, bool]:
    """Load the persisted timing cache into ``config`` (a fresh one if absent or mismatched)."""
    data = b""
    with contextlib.suppress(OSError):
        data = path.read_bytes()
    cache = config.create_timing_cache(data) if data else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache, False
    return cache, True


def build_engine(recipe: dict[str, Any], onnx_path: Path, out_dir: Path) -> dict[str, Any]:
    """Build the engine ``recipe`` describes, on this machine's GPU, into ``out_dir``.

    The one builder robopt has: ``TensorRTBackend.build`` and ``robopt-bench`` (deferred
    bundles) both call it. Returns the artifact config (its keys: docs/TENSORRT.md).

    Raises:
        BackendUnavailableError: no TensorRT >= 10 or no CUDA GPU here.
        BuildError: the parser or the builder rejected the model, or DLA is not available.
    """
    found = builder_here()
    if isinstance(found, str):
        raise BackendUnavailableError(f"cannot build a TensorRT engine here: {found}.")
    trt, gpu = found
    version = str(trt.__version__)
    key = engine_key(gpu, version)
    dla = recipe.get("dla")
    if dla and not dla_supported(version):
        raise BuildError(
            f"the recipe asks for DLA core {dla['core']}, but TensorRT {version} has no DLA on "
            "Jetson (10.7 was the last 10.x with DLA); rebuild without DLA or use TensorRT <= 10.7."
        )

    log = make_logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(
            f"TensorRT {version}'s ONNX parser rejected the model: {_parser_error(parser)}."
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe["workspace_mib"]) << 20)
    config.clear_flag(trt.BuilderFlag.TF32)
    if recipe["sparsity"]["sparse_weights"]:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if dla:
        if builder.num_DLA_cores <= dla["core"]:
            raise BuildError(
                f"the recipe asks for DLA core {dla['core']}, but this device has "
                f"{builder.num_DLA_cores} DLA core(s)."
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla["core"]
        if dla["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    shapes = recipe.get("optimization_profile")
    if shapes:
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        config.add_optimization_profile(profile)
    cache_path = timing_cache_path(key)
    cache, cache_reused = _timing_cache(config, cache_path)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = log.errors[-1] if log.errors else "no reason was logged"
        raise BuildError(f"TensorRT {version} could not build the engine: {reason[:300]}.")
    cache_saved = True
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_path, memoryview(cache.serialize()))
    except OSError:
        cache_saved = False  # an unwritable cache only costs the next build its tactic timing

    out_dir.mkdir(parents=True, exist_ok=True)
    engine_name = f"model.{key}.engine"
    data = bytes(memoryview(plan))
    _atomic_write(out_dir / engine_name, data)
    engine = trt.Runtime(log).deserialize_cuda_engine(data)
    if engine is None:
        reason = log.errors[-1] if log.errors else "no reason was logged"
        raise BuildError(f"TensorRT {version} cannot load the engine it built: {reason[:300]}.")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io.append(
            {
                "name": name,
                "mode": "input"
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                else "output",
                "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                "shape": [int(d) for d in engine.get_tensor_shape(name)],
            }
        )
    return {
        "model": engine_name,
        "engine_key": key,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "gpu": gpu.name,
        "compute_capability": gpu.cc,
        "tensorrt_version": version,
        "precision": recipe["precision"],
        "strongly_typed": True,
        "builder_flags": list(recipe["builder_flags"]),
        "sparse_weights": bool(recipe["sparsity"]["sparse_weights"]),
        "dla_core": dla["core"] if dla else None,
        "optimization_profile": shapes,
        "workspace_mib": recipe["workspace_mib"],
        "timing_cache": str(cache_path),
        "timing_cache_reused": cache_reused,
        "timing_cache_saved": cache_saved,
        "io": io,
        "recipe_target_sm": recipe.get("target", {}).get("sm"),
        "tensorrt_warnings": log.warnings[-10:],
    }
