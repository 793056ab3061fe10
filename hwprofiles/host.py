"""The ``host`` profile: detected from the machine robopt runs on.

CPU model, cores, ISA flags and memory size are read from the OS. Compute peaks are *estimates*
from the ISA (SIMD width x FMA ports x clock); memory bandwidth is *measured* with a short
single-thread copy (about 0.1 s) once per boot (kept in robopt's cache folder, see
:func:`host_bandwidth`).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from types import MappingProxyType

from robopt_compile.hwprofiles.schema import Figure, HardwareProfile, int8_saturates

# Ops per cycle per core, for the widest ISA the CPU reports (two FMA pipes assumed on
# AVX-512/AVX2 cores: Intel Optimization Reference Manual, AMD Zen 4/5 Software Optimization
# Guides). fp32 = lanes x 2 (FMA) x 2 pipes; int8 with VNNI = 4 MACs per 32-bit lane.
_X86_OPS_PER_CYCLE = (
    # (required flags, fp32, bf16, int8)
    (("avx512f", "avx512_vnni", "avx512_bf16"), 64, 128, 256),
    (("avx512f", "avx512_vnni"), 64, 64, 256),
    (("avx512f",), 64, 64, 128),
    (("avx2", "fma", "avx_vnni"), 32, 32, 128),
    (("avx2", "fma"), 32, 32, 64),
)
# Armv8.2+ cores with 2x128-bit NEON FMA pipes (Cortex-A76 class) and SDOT.
_ARM_OPS_PER_CYCLE = {"fp32": 16, "fp16": 32, "int8": 64}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = val.strip()
    return info


def _clock_ghz(info: dict[str, str]) -> tuple[float, str]:
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    if "cpu MHz" in info:
        return float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    return 2.0, "assumed 2.0 GHz (no clock reported)"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 1024**3


def measure_copy_bandwidth_gbs(mib: int = 64, repeats: int = 5) -> float:
    """Best-of-N single-thread copy bandwidth (read + write bytes per second), in GB/s."""
    import numpy as np

    src = np.ones(mib * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def host_bandwidth(machine: str) -> tuple[float, str]:
    """(single-thread copy bandwidth in GB/s, " at TIME (once per boot)"), measured once per
    boot.

    The figure is kept in ``$ROBOPT_CACHE/host/bandwidth.json``, keyed by the boot id and
    the CPU, so every compile in one boot analyses with the same figure (a noisy copy would
    otherwise change the analysis, and the build cache's whole-bundle key, on each run).
    Without a boot id (not Linux) or a writable cache folder it is measured every time.
    """
    import json

    boot = _boot_id()
    path = None
    if boot is not None:
        try:
            from robopt_compile.paths import cache_dir

            path = cache_dir("host") / "bandwidth.json"
            data = json.loads(path.read_text())
            if data.get("boot_id") == boot and data.get("machine") == machine:
                return float(data["gbs"]), f" at {data['measured_utc']} (once per boot)"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    bw = measure_copy_bandwidth_gbs()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"boot_id": boot, "machine": machine, "gbs": bw, "measured_utc": stamp}
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        except OSError:
            return bw, f" at {stamp}"
        return bw, f" at {stamp} (once per boot)"
    return bw, f" at {stamp}"


def _arch() -> str:
    """This machine's architecture in the profiles' spelling ("x86_64", "aarch64")."""
    arch = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


@functools.cache
def host_int8_saturates() -> bool:
    """:func:`~robopt_compile.hwprofiles.schema.int8_saturates` for this machine, cheaply (no
    bandwidth measurement)."""
    return int8_saturates(_arch(), frozenset((_cpuinfo().get("flags") or "").split()))


@functools.cache
def detect_host() -> HardwareProfile:
    info = _cpuinfo()
    arch = _arch()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    flags = set((info.get("flags") or info.get("Features") or "").split())
    ghz, clock_src = _clock_ghz(info)
    model = info.get("model name") or info.get("Hardware") or platform.processor() or arch
    if arch == "x86_64":
        fp32 = bf16 = int8 = 16
        isa_used = "sse"
        for req, f, b, i in _X86_OPS_PER_CYCLE:
            if all(r in flags for r in req):
                fp32, bf16, int8, isa_used = f, b, i, "+".join(req)
                break
        per_cycle = {"fp32": fp32, "bf16": bf16, "int8": int8}
        isa = tuple(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))))
    else:
        per_cycle = dict(_ARM_OPS_PER_CYCLE)
        isa_used = "neon"
        isa = tuple(
            sorted(f for f in flags if f in ("asimd", "asimddp", "fphp", "sve", "i8mm", "bf16"))
        )
    src = f"estimate: {isa_used} ops/cycle x {ghz:.2f} GHz ({clock_src}) on {model}"
    compute = {p: Figure(ops * ghz, src, estimate=True) for p, ops in per_cycle.items()}
    bw, when = host_bandwidth(f"{model}|{cores}|{arch}")
    bw_fig = Figure(
        round(bw, 2),
        f"measured here{when}: best-of-5 numpy copy of 64 MiB, 1 thread",
        estimate=False,
    )
    # TVM last: untuned it is ~100x slower than ONNX Runtime here; --backend tvm asks for it.
    backends = ("onnxruntime", "openvino", "tvm")
    if arch == "x86_64":
        precisions = ("fp32", "int8")
        precisions += ("bf16",) if "avx512_bf16" in flags or "amx_bf16" in flags else ()
        precisions += ("fp16",) if "avx512_fp16" in flags else ()
    else:
        precisions = ("fp32", "fp16", "int8")
    return HardwareProfile(
        name="host",
        description=f"this machine: {model}, {cores} cores, {arch}",
        arch=arch,
        cpu_cores=cores,
        cpu_isa=isa,
        memory_gb=Figure(round(_memory_gb(), 2), "measured here: /proc/meminfo MemTotal"),
        # Device bandwidth is not measurable in 0.1 s with one thread: use the single-thread
        # figure times cores as an upper-bound estimate, capped per core by the measurement.
        memory_bandwidth_gbs=Figure(
            round(bw * cores, 2), "estimate: single-thread copy bandwidth x cores", estimate=True
        ),
        memory_bandwidth_per_core_gbs=bw_fig,
        compute_scope="core",
        compute_gops=MappingProxyType(compute),
        backends=backends,
        precisions=precisions,
        path="detected",
    )
