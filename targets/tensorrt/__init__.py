"""TensorRT backend: strongly typed engines for NVIDIA GPUs, or a deferred build for the device.

A TensorRT engine only runs on the GPU architecture and TensorRT version that built it, so:

- ``build`` always runs the static pre-flight check (``check.py``) and turns the request
  into a *recipe* (``make_recipe``): precision, network and builder flags, DLA, optimization
  profile, workspace, the TensorRT version it was checked against, the target profile and SM.
- With TensorRT >= 10 and a CUDA GPU here, ``build_engine`` executes the recipe. The engine file
  is named by GPU, compute capability and TensorRT version (``model.<key>.engine``), and the key
  is in ``Artifact.config``: a runner refuses an engine built for another GPU or version.
- Otherwise ``write_deferred`` writes the checked ONNX (``model.onnx``), the recipe
  (``build.json``) and its exact trtexec equivalent (``trtexec.sh``), and ``Artifact.config``
  says ``"deferred": true`` and why. ``robopt-bench`` completes it on the device with the same
  ``build_engine`` (``bench/deferred.py``). Nothing is reported as built unless it was.

One code path serves TensorRT 10 and 11. Networks are created STRONGLY_TYPED (ignored and
always on in 11), so the ONNX's own types are the precision: fp16 comes from robopt's float16
pass, int8 from explicit Q/DQ (``int8-static-trt``). The weakly typed flags (BuilderFlag.FP16 and
INT8, invalid with STRONGLY_TYPED and removed in 11) and implicit INT8 calibration (removed in
11) are never used. TF32 is cleared, so fp32 tensors compute in fp32 (``--noTF32``).

The runner moves data with cuda-python (``cuda.bindings.runtime``: cudaMalloc, cudaMemcpyAsync,
cudaStreamCreate, cudaStreamSynchronize), as NVIDIA's own TensorRT samples do, imported inside
the runner. The GPU probe uses the same module, not torch (a multi-GB wheel the robot does not
need) nor ``nvidia-smi`` (absent on Jetson, and a subprocess). Calls into ``tensorrt`` follow
the TensorRT 10.3 / 11.1 Python bindings (``python/src/infer/pyCore.cpp`` at those tags).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
from robopt_compile.jsonutil import sha256_file
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

RECIPE_VERSION = 1
RECIPE_FILE = "build.json"
TRTEXEC_FILE = "trtexec.sh"
ONNX_FILE = "model.onnx"
DEFAULT_WORKSPACE_MIB = 1024
INSTALL_HINT = (
    "pip install 'robopt-compile[tensorrt]'; on JetPack 6.1+: sudo apt install python3-libnvinfer"
)


# --- device identity --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device TensorRT builds for: its name and compute capability."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return "sm_{}{}".format(*self.compute_capability)

    @property
    def cc(self) -> str:
        return "{}.{}".format(*self.compute_capability)


def _cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6, used by
    TensorRT 11's samples), else the older ``cuda.cudart`` (TensorRT 10.3's samples)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """``(err, *values)`` from a cuda-python call -> the value(s), or a ``RuntimeError``."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def probe_gpu() -> tuple[GpuInfo | None, str]:
    """(the first visible CUDA GPU, or None; why)."""
    try:
        cudart = _cudart()
    except ImportError:
        return None, "cuda-python is not installed (pip install cuda-python), so no GPU is usable"
    try:
        count = _cuda_check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            return None, "no CUDA GPU is visible (cudaGetDeviceCount = 0)"
        prop = _cuda_check(cudart, cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    except RuntimeError as exc:
        return None, f"no CUDA GPU is usable here ({exc})"
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    gpu = GpuInfo(name.strip("\x00 ") or "gpu", (int(prop.major), int(prop.minor)))
    return gpu, f"GPU {gpu.name} ({gpu.sm})"


def engine_key(gpu: GpuInfo, trt_version: str) -> str:
    """``orin-sm87-trt10.3.0``: what an engine is valid for."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-")[:40] or "gpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "", str(trt_version))
    return f"{slug}-{gpu.sm.replace('_', '')}-trt{version}"


def cache_base() -> Path:
    """``$ROBOPT_CACHE`` (else ``$XDG_CACHE_HOME/robopt`` or ``~/.cache/robopt``)."""
    from robopt_compile.paths import cache_dir

    return cache_dir("engines").parent


def timing_cache_path(key: str) -> Path:
    return cache_base() / "tensorrt" / f"timing-{key}.cache"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``BackendUnavailableError`` if missing or older than 10."""
    from robopt_compile.targets.tensorrt.check import MIN_TRT, parse_version

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt is not installed ({INSTALL_HINT})") from exc
    version = str(getattr(trt, "__version__", "0"))
    if parse_version(version)[:2] < MIN_TRT:
        raise BackendUnavailableError(
            f"TensorRT {version} is older than 10.0, and robopt builds strongly typed networks "
            "(JetPack 6.1 and 6.2 ship TensorRT 10.3; JetPack 6.0's 8.6 is not supported)"
        )
    return trt


def builder_here() -> tuple[Any, GpuInfo] | str:
    """(tensorrt, GPU) when this machine can build engines, else the reason it cannot."""
    try:
        trt = import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    gpu, why = probe_gpu()
    return (trt, gpu) if gpu is not None else why


def _logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps TensorRT's errors and warnings for one-line messages."""

    class _Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(" ".join(str(msg).split()))
            elif severity == trt.ILogger.WARNING:
                self.warnings.append(" ".join(str(msg).split()))

    return _Log()


# --- the recipe -------------------------------------------------------------------------------


def _sm(value: Any) -> str | None:
    """A compute capability in any usual spelling (8.7, "8.7", (8, 7), "sm_87", 87, "sm_110",
    "11.0") -> ``sm_87`` / ``sm_110``; None if it is none of these."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple | list) and len(value) == 2:
        return "sm_{}{}".format(*value)
    text = str(value).strip().lower()
    if m := re.fullmatch(r"(\d+)\.(\d)", text):
        return f"sm_{m.group(1)}{m.group(2)}"
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})[a-z]?", text)
    return f"sm_{m.group(1)}" if m else None


def _value(x: Any) -> Any:
    """A profile fact's value (profiles wrap facts as ``Fact(value, source)``) or ``x`` itself."""
    return getattr(x, "value", x)


def _options(profile: Any) -> dict[str, Any]:
    opts = getattr(profile, "backend_options", None) or {}
    return dict(opts.get("tensorrt", {}) or {})


def _target(profile: Any) -> dict[str, Any]:
    """What the recipe records about the target board; every field is read defensively."""
    gpu = getattr(profile, "gpu", None)
    sm = _value(getattr(gpu, "sm", None)) or _value(getattr(gpu, "compute_capability", None))
    return {
        "profile": getattr(profile, "name", None),
        "gpu": getattr(gpu, "name", None) or None,
        "sm": _sm(sm or _options(profile).get("sm")),
        "sparse_tensor_cores": _value(getattr(gpu, "sparse_tensor_cores", None)) is True,
    }


def _dla_request(profile: Any, requested: int | None) -> int | None:
    """The DLA core to use: the backend's ``dla_core`` or the profile's ``tensorrt.dla_core``,
    checked against the profile's ``tensorrt.dla_cores`` (how many the board has)."""
    opts = _options(profile)
    core = requested if requested is not None else opts.get("dla_core")
    if core is None:
        return None
    cores = opts.get("dla_cores") or _value(getattr(profile, "dla_count", None)) or 0
    name = getattr(profile, "name", "?")
    if isinstance(core, bool) or not isinstance(core, int) or core < 0:
        raise InputError(f"DLA core must be an integer >= 0, got {core!r}.")
    if core >= cores:
        raise InputError(
            f"DLA core {core} was requested but target {name!r} has "
            f"{cores or 'no'} DLA core(s) (backend_options.tensorrt.dla_cores)."
        )
    return core


def _external_files(model: Any, model_path: Path) -> list[str]:
    """External data files the ONNX refers to (relative to its folder); all must exist."""
    names = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    missing = sorted(n for n in names if not (model_path.parent / n).is_file())
    if missing:
        raise BuildError(
            f"{model_path} refers to external data {missing} that is not next to it; keep the "
            ".onnx file next to its data file."
        )
    return sorted(names)


def make_recipe(
    model_path: Path, profile: Any, options: BuildOptions, dla_core: int | None = None
) -> dict[str, Any]:
    """Pre-flight the ONNX and describe the whole build; raises on any blocking finding.

    Raises:
        BuildError: a blocking pre-flight finding (one line: first node, reason, count).
        InputError: a bad ``dynamic_batch`` or DLA request.
    """
    from robopt_compile.targets.tensorrt import check

    dynamic_batch = check.check_dynamic_batch(options.dynamic_batch)
    core = _dla_request(profile, dla_core)
    model = check.load_model(model_path)
    external = _external_files(model, model_path)
    findings = check.check_model(
        model,
        precision=options.precision,
        dynamic_batch=dynamic_batch,
        dla_core=core,
        trt_version=check.TARGET_TRT,
        base_dir=model_path.parent,
    )
    check.require_buildable(findings)

    target = _target(profile)
    sparsity = {p.key: p.value for p in model.metadata_props}.get("robopt.sparsity")
    sparse = sparsity == "2:4" and target["sparse_tensor_cores"]
    if sparsity != "2:4":
        why = "the model is not 2:4 sparse (no robopt.sparsity = 2:4 metadata)"
    elif sparse:
        why = "2:4 sparse model and the target GPU has sparse tensor cores"
    else:
        why = "2:4 sparse model, but the target profile does not list sparse tensor cores"
    shapes = None
    if dynamic_batch is not None:
        shapes = {}
        for v in model.graph.input:
            dims = v.type.tensor_type.shape.dim
            if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
                rest = [d.dim_value for d in dims[1:]]
                lo, opt, hi = dynamic_batch
                shapes[v.name] = {"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]}
    fallback = core is not None and _options(profile).get("gpu_fallback", True) is not False
    flags = (["SPARSE_WEIGHTS"] if sparse else []) + (["GPU_FALLBACK"] if fallback else [])
    recipe: dict[str, Any] = {
        "recipe_version": RECIPE_VERSION,
        "backend": "tensorrt",
        "onnx": ONNX_FILE,
        "onnx_sha256": sha256_file(model_path),
        "onnx_external_data": external,
        "precision": options.precision,
        "strongly_typed": True,
        "network_flags": ["STRONGLY_TYPED"],
        "builder_flags": flags,
        "cleared_builder_flags": ["TF32"],
        "sparsity": {"model": sparsity, "sparse_weights": sparse, "why": why},
        "dla": None if core is None else {"core": core, "gpu_fallback": fallback},
        "dynamic_batch": list(dynamic_batch) if dynamic_batch else None,
        "optimization_profile": shapes,
        "workspace_mib": int(_options(profile).get("workspace_mib", DEFAULT_WORKSPACE_MIB)),
        "timing_cache": "$ROBOPT_CACHE/tensorrt/timing-<gpu>-sm<cc>-trt<version>.cache",
        "tensorrt": {
            "checked_against": check.TARGET_TRT,
            "min_version": ".".join(map(str, check.MIN_TRT)),
            "operator_table": check.OPERATOR_TABLE,
            "note": "TensorRT 11 reads the same recipe: strong typing is always on there",
        },
        "target": target,
        "preflight": [f.to_json() for f in findings],
    }
    recipe["trtexec"] = trtexec_command(recipe)
    return recipe


def _shape_spec(shapes: dict[str, dict[str, list[int]]], which: str) -> str:
    def name(n: str) -> str:  # trtexec: names with separators go in single quotes
        return f"'{n}'" if re.search(r"[:,']", n) else n

    return ",".join(f"{name(n)}:{'x'.join(map(str, s[which]))}" for n, s in shapes.items())


def trtexec_command(
    recipe: dict[str, Any], engine: str = "model.engine", timing_cache: str = "timing.cache"
) -> str:
    """The trtexec line that builds what ``build_engine`` builds from ``recipe``."""
    args = [
        "trtexec",
        f"--onnx={recipe['onnx']}",
        f"--saveEngine={engine}",
        "--stronglyTyped",
        "--noTF32",
        f"--memPoolSize=workspace:{recipe['workspace_mib']}",
    ]
    if recipe["sparsity"]["sparse_weights"]:
        args.append("--sparsity=enable")
    if recipe["dla"] is not None:
        args.append(f"--useDLACore={recipe['dla']['core']}")
        if recipe["dla"]["gpu_fallback"]:
            args.append("--allowGPUFallback")
    shapes = recipe["optimization_profile"]
    if shapes:
        args += [f"--{w}Shapes={_shape_spec(shapes, w)}" for w in ("min", "opt", "max")]
    args += [f"--timingCacheFile={timing_cache}", "--skipInference"]
    return " ".join(shlex.quote(a) for a in args)


def deferred_message(config: dict[str, Any], why: str, engine_dir: Path | str = "engine") -> str:
    """The one line a user gets when a deferred build cannot be completed on this machine."""
    cmd = config.get("trtexec_command") or "sh trtexec.sh"
    return (
        "this bundle holds a deferred TensorRT build; run robopt-bench on the device with "
        "TensorRT installed (JetPack 6: python3-libnvinfer) or run "
        f"`cd {shlex.quote(str(engine_dir))} && {cmd}` there (here: {why})"
    )


# --- deferred build ---------------------------------------------------------------------------

_SCRIPT = """#!/bin/sh
# Deferred TensorRT build written by robopt: the trtexec equivalent of build.json.
# Run it on the target device (TensorRT >= 10; on JetPack trtexec is /usr/src/tensorrt/bin).
# It writes model.engine and timing.cache next to this file; extra arguments are passed on.
set -eu
cd "$(dirname "$0")"
PATH="$PATH:/usr/src/tensorrt/bin"
exec {command} "$@"
"""


def write_deferred(recipe: dict[str, Any], model_path: Path, out_dir: Path, why: str) -> Artifact:
    """Write the checked ONNX, ``build.json`` and ``trtexec.sh``; nothing is built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, out_dir / ONNX_FILE)
    for name in recipe["onnx_external_data"]:
        shutil.copyfile(model_path.parent / name, out_dir / name)
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    script = out_dir / TRTEXEC_FILE
    script.write_text(_SCRIPT.format(command=recipe["trtexec"]))
    script.chmod(0o755)
    config = {
        "deferred": True,
        "deferred_reason": why,
        "model": ONNX_FILE,
        "recipe": RECIPE_FILE,
        "trtexec_script": TRTEXEC_FILE,
        "trtexec_command": recipe["trtexec"],
        "precision": recipe["precision"],
        "strongly_typed": True,
        "builder_flags": recipe["builder_flags"],
        "sparse_weights": recipe["sparsity"]["sparse_weights"],
        "dla_core": recipe["dla"]["core"] if recipe["dla"] else None,
        "optimization_profile": recipe["optimization_profile"],
        "workspace_mib": recipe["workspace_mib"],
        "tensorrt_checked_against": recipe["tensorrt"]["checked_against"],
        "tensorrt_min_version": recipe["tensorrt"]["min_version"],
        "target_sm": recipe["target"]["sm"],
    }
    files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
    return Artifact("tensorrt", out_dir, files, config)


# --- the real build ---------------------------------------------------------------------------


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
    bundles) both call it. Returns the artifact config (see the module docstring).

    Raises:
        BackendUnavailableError: no TensorRT >= 10 or no CUDA GPU here.
        BuildError: the parser or the builder rejected the model, or DLA is not available.
    """
    from robopt_compile.targets.tensorrt.check import dla_supported

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

    log = _logger(trt)
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


# --- the runner -------------------------------------------------------------------------------


class TensorRTRunner(Runner):
    """Runs a built engine with one CUDA stream and device buffers sized on first use."""

    def _activate(self) -> None:
        cfg = self.artifact.config
        if cfg.get("deferred"):
            raise BackendUnavailableError(
                deferred_message(cfg, "this is the recipe, not an engine", self.artifact.root)
            )
        path = self.engine_file()
        found = builder_here()
        if isinstance(found, str):
            raise BackendUnavailableError(f"cannot run a TensorRT engine here: {found}.")
        trt, gpu = found
        key = engine_key(gpu, trt.__version__)
        if cfg.get("engine_key") != key:
            raise BackendUnavailableError(
                f"engine {cfg.get('model')} was built for {cfg.get('engine_key')} and this "
                f"machine is {key}: TensorRT engines do not move between GPUs or TensorRT "
                "versions; rebuild it here from the bundle's ONNX."
            )
        self._cudart = _cudart()
        self._log = _logger(trt)
        self._runtime = trt.Runtime(self._log)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            why = self._log.errors[-1] if self._log.errors else "no reason was logged"
            raise BackendUnavailableError(f"TensorRT could not load {cfg['model']}: {why}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = {n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.input_names = [n for n in names if n in inputs]
        self.output_names = [n for n in names if n not in inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._stream = self._cuda(self._cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _cuda(self, result: Any, what: str) -> Any:
        return _cuda_check(self._cudart, result, what)

    def _address(self, name: str, nbytes: int) -> int:
        ptr, size = self._device.get(name, (0, 0))
        if size < nbytes or not ptr:
            if ptr:
                self._cuda(self._cudart.cudaFree(ptr), "cudaFree")
            size = max(nbytes, 1)
            ptr = int(self._cuda(self._cudart.cudaMalloc(size), "cudaMalloc"))
            self._device[name] = (ptr, size)
        self._context.set_tensor_address(name, ptr)
        return ptr

    def _prepare(
        self, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Host arrays for inputs and outputs, with shapes set and device buffers bound."""
        host_in = {}
        for n in self.input_names:
            a = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
            if not self._context.set_input_shape(n, a.shape):
                raise InputError(
                    f"input {n!r} of shape {list(a.shape)} does not fit the engine "
                    f"(optimization profile {self.artifact.config.get('optimization_profile')})."
                )
            self._address(n, a.nbytes)
            host_in[n] = a
        host_out = {}
        for n in self.output_names:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise InputError(f"output {n!r} has no concrete shape ({list(shape)}).")
            out = np.empty(shape, self._dtypes[n])
            self._address(n, out.nbytes)
            host_out[n] = out
        return host_in, host_out

    def _run(
        self, host_in: dict[str, np.ndarray], host_out: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        rt, kind = self._cudart, self._cudart.cudaMemcpyKind
        for n, a in host_in.items():
            ptr = self._device[n][0]
            self._cuda(
                rt.cudaMemcpyAsync(
                    ptr, a.ctypes.data, a.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                ),
                "cudaMemcpyAsync",
            )
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for n, a in host_out.items():
            ptr = self._device[n][0]
            self._cuda(
                rt.cudaMemcpyAsync(
                    a.ctypes.data, ptr, a.nbytes, kind.cudaMemcpyDeviceToHost, self._stream
                ),
                "cudaMemcpyAsync",
            )
        self._cuda(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host_out

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(*self._prepare(feeds))

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        # Copies in and out stay in the timed call: a robot's data starts and ends on the host.
        return partial(self._run, *self._prepare(feeds))

    def _deactivate(self) -> None:
        rt = getattr(self, "_cudart", None)
        for ptr, _ in getattr(self, "_device", {}).values():
            with contextlib.suppress(Exception):
                rt.cudaFree(ptr)
        self._device = {}
        if getattr(self, "_stream", None) is not None:
            with contextlib.suppress(Exception):
                rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = self._runtime = None


# --- the backend ------------------------------------------------------------------------------


class TensorRTBackend(Backend):
    """TensorRT engines where TensorRT >= 10 and a CUDA GPU exist, deferred builds elsewhere.

    Options (``configure``): ``dla_core``: run on this DLA core with GPU fallback (else the
    profile's ``backend_options.tensorrt.dla_core``; the profile's ``dla_cores`` bounds it).
    """

    name = "tensorrt"
    runtime_module = "tensorrt"
    pip_extra = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    # TensorRT 10/11 strongly typed networks take their precision from the ONNX itself:
    # explicit symmetric Q/DQ for int8 (implicit calibration is gone in TensorRT 11), fp16 types.
    quantizers = {  # noqa: RUF012 - read-only table
        "int8": ("int8-static-trt", {}),
        "fp16": ("float16", {"dtype": "fp16"}),
    }
    builds_without_runtime = True  # no TensorRT or GPU here: build() writes a deferred build
    option_names = ("dla_core",)

    def availability(self) -> tuple[bool, str]:
        """Needs the tensorrt module and a CUDA GPU (probed with cuda-python, not torch)."""
        if importlib.util.find_spec(self.runtime_module) is None:
            return False, f"{self.runtime_module} is not installed ({INSTALL_HINT})"
        gpu, why = probe_gpu()
        if gpu is None:
            return False, why
        return True, f"{self.runtime_module} is installed and {why} is present"

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        model_path = Path(model_path)
        recipe = make_recipe(model_path, profile, options, self.options.get("dla_core"))
        ok, why = self.availability()
        if ok:
            found = builder_here()
            if isinstance(found, str):
                ok, why = False, found
        if not ok:
            return write_deferred(recipe, model_path, out_dir, why)
        config = build_engine(recipe, model_path, out_dir)
        (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
        files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
        return Artifact(self.name, out_dir, files, config)

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if artifact.config.get("deferred"):
            raise BackendUnavailableError(
                deferred_message(artifact.config, "this is a deferred build", artifact.root)
            )
        self.require()
        return TensorRTRunner(artifact, threads)


def is_deferred(artifact: Artifact) -> bool:
    """Whether ``artifact`` is a deferred build (a recipe, not an engine)."""
    return bool(artifact.config.get("deferred"))
