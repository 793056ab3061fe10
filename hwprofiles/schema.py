"""The typed hardware profile: frozen dataclasses for a board and its sourced figures.

A ``HardwareProfile`` is what ``parse.py`` makes of a TOML file (or ``host.py`` of this machine)
and what the planner, roofline and backends read. Every number is a ``Figure`` and every name,
count or flag a ``Fact``, each with its source. ``HardwareProfile.with_power_mode`` applies a
``PowerMode``'s figures; ``to_json`` is what reports and ``robopt-compile targets`` print.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from robopt_compile.errors import ProfileError

# Figures a power mode may change; every other mode must then state them too.
MODE_FIGURES = ("memory_bandwidth_gbs", "gpu_clock_mhz", "cpu_clock_ghz", "headline_tops")


def _empty() -> MappingProxyType[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Figure:
    """A number with where it came from; ``estimate`` marks derived or assumed values."""

    value: float
    source: str
    estimate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "estimate": self.estimate}


@dataclass(frozen=True, slots=True)
class Fact:
    """A name, count or flag with where it came from (a GPU's CUDA target, a DLA count)."""

    value: str | int | bool
    source: str
    estimate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "estimate": self.estimate}


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """The board's GPU. ``sm`` is the CUDA target TensorRT and TVM build for (NVIDIA only)."""

    arch: Fact  # "ampere" | "volta" | "blackwell" | "xe2" ...
    name: str = ""
    sm: Fact | None = None  # "sm_87"
    cuda_cores: Fact | None = None
    tensor_cores: Fact | None = None
    sparse_tensor_cores: Fact | None = None  # 2:4 structured sparsity in hardware (Ampere+)
    max_clock_mhz: Figure | None = None
    int8_tops: Figure | None = None  # vendor peak, for GPUs that are not the [compute] device

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: (v.to_json() if isinstance(v := getattr(self, f.name), Figure | Fact) else v)
            for f in dataclasses.fields(self)
        }


@dataclass(frozen=True, slots=True)
class NpuInfo:
    """A neural accelerator; ``backends`` are the robopt backends that can use it (may be none)."""

    name: str
    int8_tops: Figure
    backends: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "int8_tops": self.int8_tops.to_json(),
            "backends": list(self.backends),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Headline:
    """The vendor's advertised AI performance, in its own unit (TOPS or TFLOPS)."""

    label: str  # what it adds up, e.g. "sparse INT8 TOPS, GPU + 2x DLA"
    tops: Figure


@dataclass(frozen=True, slots=True)
class PowerMode:
    """One power mode and the figures it sets (``None``/empty: the mode leaves them alone)."""

    name: str
    watts: Figure | None = None
    nvpmodel_id: int | None = None
    note: str = ""
    memory_bandwidth_gbs: Figure | None = None
    gpu_clock_mhz: Figure | None = None
    cpu_clock_ghz: Figure | None = None
    headline_tops: Figure | None = None
    compute_gops: MappingProxyType[str, Figure] = field(default_factory=_empty)
    cpu_core_gops: MappingProxyType[str, Figure] = field(default_factory=_empty)
    dla_gops: MappingProxyType[str, Figure] = field(default_factory=_empty)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "watts": self.watts.to_json() if self.watts else None,
            "nvpmodel_id": self.nvpmodel_id,
            "note": self.note,
        }


# x86 int8 kernels without VNNI (SSE4, AVX2, AVX-512F/BW) multiply uint8 x int8 pairs with
# VPMADDUBSW, which sums two products into a saturating int16: 2 x 255 x 127 already overflows.
# ONNX Runtime's quantization guide ("reduce_range" for U8S8 on AVX2 and AVX-512 without VNNI)
# and NNCF's overflow_fix both quantize the weights to 7 bits there. VNNI (VPDPBUSD) and AMX
# accumulate in int32 and need nothing.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates(arch: str, cpu_isa: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether int8 dot products on an ``arch`` CPU with these ``/proc/cpuinfo`` flags saturate."""
    return arch == "x86_64" and not VNNI_FLAGS & set(cpu_isa)


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """A board: CPU, memory and compute figures, backends and precisions, optional GPU, NPU,
    DLA, headline and power modes (the file format: the package docstring)."""

    name: str
    description: str
    arch: str  # "x86_64" | "aarch64"
    cpu_cores: int
    cpu_isa: tuple[str, ...]
    memory_gb: Figure
    memory_bandwidth_gbs: Figure  # whole device
    memory_bandwidth_per_core_gbs: Figure | None
    compute_scope: str  # "core" | "device"
    compute_gops: MappingProxyType[str, Figure]  # precision -> peak GOP/s
    backends: tuple[str, ...]  # preference order; the first available is the default
    precisions: tuple[str, ...]
    backend_options: MappingProxyType[str, Any] = field(default_factory=_empty)
    path: str = ""  # file it came from, or "detected"
    aliases: tuple[str, ...] = ()
    cpu_core: Fact | None = None  # "cortex-a78ae", "4x cortex-a76 + 4x cortex-a55"
    cpu_clock_ghz: Figure | None = None
    cpu_source: str = ""  # where `cpu_cores` and `cpu_isa` come from
    cpu_core_gops: MappingProxyType[str, Figure] = field(default_factory=_empty)  # device scope
    gpu: GpuInfo | None = None
    npu: NpuInfo | None = None
    dla_count: Fact | None = None
    dla_gops: MappingProxyType[str, Figure] = field(default_factory=_empty)  # all DLAs together
    headline: Headline | None = None
    power_modes: tuple[PowerMode, ...] = ()
    power_mode: str = ""  # the mode the figures describe; "" when the board has none

    @property
    def int8_saturates(self) -> bool:
        """Whether the CPU's int8 dot products saturate: x86 without VNNI (see
        :func:`int8_saturates`), where the quantizers keep weights to 7 bits."""
        return int8_saturates(self.arch, self.cpu_isa)

    def peak_gops(self, precision: str, threads: int | None = None) -> float:
        """Peak compute for ``precision`` with ``threads`` CPU threads (device scope ignores it)."""
        fig = self.compute_gops.get(precision) or self.compute_gops["fp32"]
        if self.compute_scope == "core":
            n = self.cpu_cores if threads is None else max(1, min(threads, self.cpu_cores))
            return fig.value * n
        return fig.value

    def cpu_peak_gops(self, precision: str, threads: int | None = None) -> float | None:
        """Peak of the board's CPU (for a CPU runtime on a GPU board); None if not recorded."""
        per_core = self.compute_gops if self.compute_scope == "core" else self.cpu_core_gops
        fig = per_core.get(precision) or per_core.get("fp32")
        if fig is None:
            return None
        n = self.cpu_cores if threads is None else max(1, min(threads, self.cpu_cores))
        return fig.value * n

    def bandwidth_gbs(self, threads: int | None = None) -> float:
        """Usable memory bandwidth: per-core figure times threads, capped by the device's."""
        dev = self.memory_bandwidth_gbs.value
        if self.memory_bandwidth_per_core_gbs is None or threads is None:
            return dev
        return min(dev, self.memory_bandwidth_per_core_gbs.value * max(1, threads))

    def with_power_mode(self, name: str) -> HardwareProfile:
        """This profile with power mode ``name``'s figures applied (ProfileError if unknown)."""
        mode = next((m for m in self.power_modes if m.name == name), None)
        if mode is None:
            known = [m.name for m in self.power_modes]
            raise ProfileError(
                f"profile {self.name!r} has no power mode {name!r}; "
                + (f"its modes are {known}." if known else "it defines no power modes.")
            )
        changes: dict[str, Any] = {"power_mode": mode.name}
        if mode.memory_bandwidth_gbs is not None:
            changes["memory_bandwidth_gbs"] = mode.memory_bandwidth_gbs
        if mode.cpu_clock_ghz is not None:
            changes["cpu_clock_ghz"] = mode.cpu_clock_ghz
        if mode.compute_gops:
            changes["compute_gops"] = MappingProxyType({**self.compute_gops, **mode.compute_gops})
        if mode.cpu_core_gops:
            merged = {**self.cpu_core_gops, **mode.cpu_core_gops}
            changes["cpu_core_gops"] = MappingProxyType(merged)
        if mode.dla_gops:
            changes["dla_gops"] = MappingProxyType({**self.dla_gops, **mode.dla_gops})
        if mode.gpu_clock_mhz is not None and self.gpu is not None:
            changes["gpu"] = dataclasses.replace(self.gpu, max_clock_mhz=mode.gpu_clock_mhz)
        if mode.headline_tops is not None and self.headline is not None:
            changes["headline"] = dataclasses.replace(self.headline, tops=mode.headline_tops)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        def figs(m: Mapping[str, Figure]) -> dict[str, Any]:
            return {k: v.to_json() for k, v in m.items()}

        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "cpu_cores": self.cpu_cores,
            "cpu_isa": list(self.cpu_isa),
            "memory_gb": self.memory_gb.to_json(),
            "memory_bandwidth_gbs": self.memory_bandwidth_gbs.to_json(),
            "memory_bandwidth_per_core_gbs": (
                self.memory_bandwidth_per_core_gbs.to_json()
                if self.memory_bandwidth_per_core_gbs
                else None
            ),
            "compute_scope": self.compute_scope,
            "compute_gops": figs(self.compute_gops),
            "backends": list(self.backends),
            "precisions": list(self.precisions),
            "path": self.path,
            "aliases": list(self.aliases),
            "cpu_core": self.cpu_core.to_json() if self.cpu_core else None,
            "cpu_clock_ghz": self.cpu_clock_ghz.to_json() if self.cpu_clock_ghz else None,
            "cpu_core_gops": figs(self.cpu_core_gops),
            "gpu": self.gpu.to_json() if self.gpu else None,
            "npu": self.npu.to_json() if self.npu else None,
            "dla_count": self.dla_count.to_json() if self.dla_count else None,
            "dla_gops": figs(self.dla_gops),
            "headline": (
                {"label": self.headline.label, "tops": self.headline.tops.to_json()}
                if self.headline
                else None
            ),
            "power_mode": self.power_mode,
            "power_modes": [m.to_json() for m in self.power_modes],
            "backend_options": _plain(self.backend_options),
        }


def _plain(value: Any) -> Any:
    """Mappings and tuples as JSON-able dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
