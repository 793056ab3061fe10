"""The machine a result was measured on and the memory the process holds: what makes a latency
comparable (CPU, cores, OS, runtime versions, load) and a result's memory block.

Standard library only: the harness, the multi-graph driver and the benchmark server share it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any


def rss_bytes() -> int | None:
    """Current resident set size from /proc/self/statm (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """The process's lifetime peak RSS (ru_maxrss is KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _mib(n: int | None) -> float | None:
    return None if n is None else n / (1 << 20)


def memory_summary(rss0: int | None, rss_loaded: int | None, rss_runs: int | None) -> dict:
    """A result's ``memory``: the process's peak RSS and its RSS before the engine(s) load,
    after they load and after the timed runs, in MiB (None where the OS does not say)."""
    return {
        "peak_rss_mib": _mib(peak_rss_bytes()),
        "rss_before_load_mib": _mib(rss0),
        "rss_after_load_mib": _mib(rss_loaded),
        "rss_after_runs_mib": _mib(rss_runs),
        "rss_increase_mib": _mib(None if rss0 is None or rss_runs is None else rss_runs - rss0),
    }


def cpu_model() -> str:
    """The CPU's marketing name; ARM boards often have none, so fall back to the board model."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        for line in info.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    with contextlib.suppress(OSError):
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    return platform.processor() or platform.machine() or "unknown"


def runtime_version(module: str) -> str | None:
    mod = sys.modules.get(module)
    version = getattr(mod, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(module)
    except PackageNotFoundError:
        return None


def machine_summary(runtime_module: str) -> dict[str, Any]:
    """What a result needs to be comparable: CPU, cores, OS, runtime version, load."""
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_available": len(affinity(0)) if affinity else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": runtime_version("numpy"),
        "runtime": runtime_module,
        "runtime_version": runtime_version(runtime_module),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# ISA features that change which kernels a runtime picks (and so its latency).
_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
)


def machine_profile() -> dict[str, Any]:
    """Who measured: host, CPU, cores and the ISA features behind the kernels. Two latencies are
    comparable only when ``same_hardware`` holds for their profiles."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        words = set()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "cores_available": len(affinity(0)) if affinity else os.cpu_count(),
        "features": [f for f in _FEATURES if f in words],
    }


def same_hardware(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same CPU model, architecture and kernel features (the host may differ: two identical
    boards measure alike)."""
    keys = ("cpu_model", "arch", "features")
    return all(a.get(k) == b.get(k) for k in keys)
