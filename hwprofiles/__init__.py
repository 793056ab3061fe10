"""Hardware profiles: one TOML file per board in this folder, loaded into frozen dataclasses.

Every figure in a profile is a table ``{ value = ..., source = "..." }`` and may say
``estimate = true``; the loader refuses a figure without a source. ``host`` is not a file: it is
detected from the machine robopt runs on (``robopt_compile.hwprofiles.host``).

Compute peaks are GOP/s per precision. ``compute_scope = "core"`` means per CPU core (the roofline
multiplies by the threads in use); ``"device"`` means for the whole accelerator.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from robopt_compile.errors import ProfileError, UnknownNameError

PROFILE_DIR = Path(__file__).parent
SCHEMA_VERSION = 1
KNOWN_BACKENDS = ("onnxruntime", "openvino", "tvm", "tensorrt")
KNOWN_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


@dataclass(frozen=True, slots=True)
class Figure:
    """A number with where it came from; ``estimate`` marks derived or assumed values."""

    value: float
    source: str
    estimate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "estimate": self.estimate}


@dataclass(frozen=True, slots=True)
class HardwareProfile:
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
    backend_options: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )
    path: str = ""  # file it came from, or "detected"

    def peak_gops(self, precision: str, threads: int | None = None) -> float:
        """Peak compute for ``precision`` with ``threads`` CPU threads (device scope ignores it)."""
        fig = self.compute_gops.get(precision) or self.compute_gops["fp32"]
        if self.compute_scope == "core":
            n = self.cpu_cores if threads is None else max(1, min(threads, self.cpu_cores))
            return fig.value * n
        return fig.value

    def bandwidth_gbs(self, threads: int | None = None) -> float:
        """Usable memory bandwidth: per-core figure times threads, capped by the device's."""
        dev = self.memory_bandwidth_gbs.value
        if self.memory_bandwidth_per_core_gbs is None or threads is None:
            return dev
        return min(dev, self.memory_bandwidth_per_core_gbs.value * max(1, threads))

    def to_json(self) -> dict[str, Any]:
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
            "compute_gops": {k: v.to_json() for k, v in self.compute_gops.items()},
            "backends": list(self.backends),
            "precisions": list(self.precisions),
            "path": self.path,
        }


def _figure(where: str, raw: Any) -> Figure:
    if not isinstance(raw, dict) or "value" not in raw:
        raise ProfileError(f'{where}: expected {{ value = ..., source = "..." }}, got {raw!r}.')
    src = raw.get("source")
    if not isinstance(src, str) or not src.strip():
        raise ProfileError(
            f"{where}: every figure needs a non-empty `source` naming where it is from."
        )
    value = raw["value"]
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ProfileError(f"{where}: value must be a positive number, got {value!r}.")
    unknown = set(raw) - {"value", "source", "estimate"}
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}.")
    return Figure(float(value), src.strip(), bool(raw.get("estimate", False)))


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileError(f"{where}: missing required key `{key}`.")
    if not isinstance(d[key], typ):
        raise ProfileError(f"{where}: `{key}` has the wrong type ({type(d[key]).__name__}).")
    return d[key]


def parse_profile(data: dict[str, Any], path: str) -> HardwareProfile:
    """Validate a profile's TOML table; every error names the file and the key."""
    where = path
    if data.get("schema") != SCHEMA_VERSION:
        raise ProfileError(
            f"{where}: `schema = {SCHEMA_VERSION}` is required (found {data.get('schema')!r})."
        )
    name = _req(data, "name", str, where)
    arch = _req(data, "arch", str, where)
    if arch not in ("x86_64", "aarch64"):
        raise ProfileError(f"{where}: arch must be 'x86_64' or 'aarch64', got {arch!r}.")
    cpu = _req(data, "cpu", dict, where)
    mem = _req(data, "memory", dict, where)
    compute = _req(data, "compute", dict, where)
    scope = _req(compute, "scope", str, f"{where} [compute]")
    if scope not in ("core", "device"):
        raise ProfileError(f"{where} [compute]: scope must be 'core' or 'device'.")
    peaks = {k: _figure(f"{where} [compute].{k}", v) for k, v in compute.items() if k != "scope"}
    if "fp32" not in peaks:
        raise ProfileError(f"{where} [compute]: an fp32 peak is required.")
    backends = tuple(_req(data, "backends", list, where))
    bad = [b for b in backends if b not in KNOWN_BACKENDS]
    if bad or not backends:
        raise ProfileError(f"{where}: unknown backend(s) {bad}; known: {list(KNOWN_BACKENDS)}.")
    precisions = tuple(_req(data, "precisions", list, where))
    badp = [p for p in precisions if p not in KNOWN_PRECISIONS]
    if badp or "fp32" not in precisions:
        raise ProfileError(
            f"{where}: precisions must include fp32 and only {list(KNOWN_PRECISIONS)}."
        )
    cores = _req(cpu, "cores", int, f"{where} [cpu]")
    if cores < 1:
        raise ProfileError(f"{where} [cpu]: cores must be >= 1.")
    per_core_bw = mem.get("bandwidth_per_core_gbs")
    return HardwareProfile(
        name=name,
        description=str(data.get("description", "")),
        arch=arch,
        cpu_cores=cores,
        cpu_isa=tuple(cpu.get("isa", [])),
        memory_gb=_figure(f"{where} [memory].size_gb", _req(mem, "size_gb", dict, where)),
        memory_bandwidth_gbs=_figure(
            f"{where} [memory].bandwidth_gbs", _req(mem, "bandwidth_gbs", dict, where)
        ),
        memory_bandwidth_per_core_gbs=(
            _figure(f"{where} [memory].bandwidth_per_core_gbs", per_core_bw)
            if per_core_bw is not None
            else None
        ),
        compute_scope=scope,
        compute_gops=MappingProxyType(peaks),
        backends=backends,
        precisions=precisions,
        backend_options=MappingProxyType(dict(data.get("backend_options", {}))),
        path=path,
    )


def load_profile_file(path: str | Path) -> HardwareProfile:
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"hardware profile not found: {p}.")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: not valid TOML ({exc}).") from exc
    return parse_profile(data, str(p))


def profile_names() -> list[str]:
    """Every built-in target name: ``host`` plus one per TOML file here."""
    return ["host", *sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))]


def load_profile(name: str) -> HardwareProfile:
    """A built-in profile by name (``host`` is detected from this machine)."""
    if name == "host":
        from robopt_compile.hwprofiles.host import detect_host

        return detect_host()
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise UnknownNameError("target", name, profile_names())
    return load_profile_file(path)
