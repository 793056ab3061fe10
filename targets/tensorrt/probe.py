"""What this machine has for TensorRT: cuda-python, a CUDA GPU, TensorRT >= 10.

Both the builder (``build.py``) and the runner (``runner.py``) start here, and so does
``robopt-bench`` before it completes a deferred build. The GPU probe uses cuda-python
(``cuda.bindings.runtime``), as NVIDIA's own TensorRT samples do, not torch (a multi-GB wheel the
robot does not need) nor ``nvidia-smi`` (absent on Jetson, and a subprocess). ``engine_key``
names what an engine is valid for: one GPU, compute capability and TensorRT version. Nothing
heavy is imported at module level: ``tensorrt`` and cuda-python load inside the functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from robopt_compile.errors import BackendUnavailableError, install_hint
from robopt_compile.targets.tensorrt.support import MIN_TRT, parse_version

INSTALL_HINT = f"{install_hint('tensorrt')}; on JetPack 6.1+: sudo apt install python3-libnvinfer"


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


def load_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6, used by
    TensorRT 11's samples), else the older ``cuda.cudart`` (TensorRT 10.3's samples)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """``(err, *values)`` from a cuda-python call -> the value(s), or a ``RuntimeError``."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def probe_gpu() -> tuple[GpuInfo | None, str]:
    """(the first visible CUDA GPU, or None; why)."""
    try:
        cudart = load_cudart()
    except ImportError:
        return None, "cuda-python is not installed (pip install cuda-python), so no GPU is usable"
    try:
        count = cuda_check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            return None, "no CUDA GPU is visible (cudaGetDeviceCount = 0)"
        prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
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


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``BackendUnavailableError`` if missing or older than 10."""
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


def make_logger(trt: Any) -> Any:
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
