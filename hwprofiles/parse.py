"""A profile's TOML table validated into a ``HardwareProfile``; every error names the file and key.

The rules: every figure is ``{ value = ..., source = "..." }`` (``estimate`` optional) and the
loader refuses one without a source; ``[KEY]`` citations in a source are spelled out from the
file's ``[sources]``; compute keys are precisions (``precision.HARDWARE_FORMATS``) with an
optional ``_sparse`` suffix; backends are names of the ``TARGETS`` table; power modes state
every figure any other mode changes, and the default mode agrees with the top-level figures.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from types import MappingProxyType
from typing import Any

from robopt_compile.errors import ProfileError
from robopt_compile.hwprofiles.schema import (
    MODE_FIGURES,
    Fact,
    Figure,
    GpuInfo,
    HardwareProfile,
    Headline,
    NpuInfo,
    PowerMode,
)
from robopt_compile.precision import HARDWARE_FORMATS
from robopt_compile.targets.registry import TARGETS

SCHEMA_VERSION = 1
KNOWN_BACKENDS = tuple(TARGETS)  # the registry of targets/ (a plain table, no runtime import)
# What a [compute] key may add to a precision: see the module docstring.
COMPUTE_SUFFIXES = ("", "_sparse")
# "[DS]" in a source string cites the file's `[sources]` entry DS; the loader expands it.
_CITE = re.compile(r"\[([A-Z][A-Z0-9]*)\]")


def _source(where: str, raw: dict[str, Any], allowed: set[str]) -> tuple[str, bool]:
    src = raw.get("source")
    if not isinstance(src, str) or not src.strip():
        raise ProfileError(
            f"{where}: every figure needs a non-empty `source` naming where it is from."
        )
    unknown = set(raw) - allowed
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}.")
    estimate = raw.get("estimate", False)
    if not isinstance(estimate, bool):
        raise ProfileError(f"{where}: `estimate` must be true or false.")
    return src.strip(), estimate


def _figure(where: str, raw: Any) -> Figure:
    if not isinstance(raw, dict) or "value" not in raw:
        raise ProfileError(f'{where}: expected {{ value = ..., source = "..." }}, got {raw!r}.')
    src, estimate = _source(where, raw, {"value", "source", "estimate"})
    value = raw["value"]
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ProfileError(f"{where}: value must be a positive number, got {value!r}.")
    return Figure(float(value), src, estimate)


def _fact(where: str, raw: Any, typ: type) -> Fact:
    """A sourced name (str), count (int >= 0) or flag (bool)."""
    if not isinstance(raw, dict) or "value" not in raw:
        raise ProfileError(f'{where}: expected {{ value = ..., source = "..." }}, got {raw!r}.')
    src, estimate = _source(where, raw, {"value", "source", "estimate"})
    value = raw["value"]
    ok = isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
    if typ is int and ok:
        ok = value >= 0
    if typ is str and ok:
        ok = bool(value.strip())
    if not ok:
        raise ProfileError(f"{where}: value must be a {typ.__name__}, got {value!r}.")
    return Fact(value, src, estimate)


def _opt(d: dict[str, Any], key: str, where: str, parse: Any, *args: Any) -> Any:
    return parse(f"{where}.{key}", d[key], *args) if key in d else None


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileError(f"{where}: missing required key `{key}`.")
    if not isinstance(d[key], typ):
        raise ProfileError(f"{where}: `{key}` has the wrong type ({type(d[key]).__name__}).")
    return d[key]


def _table(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: `{key}` must be a table.")
    return value


def _unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise ProfileError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(allowed)}.")


def _precision_of(key: str, suffixes: tuple[str, ...]) -> str:
    for suffix in sorted((s for s in suffixes if s), key=len, reverse=True):
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def _peaks(where: str, raw: dict[str, Any], suffixes: tuple[str, ...]) -> dict[str, Figure]:
    """A table of peak GOP/s keyed by precision (plus the allowed suffixes)."""
    out = {}
    for key, value in raw.items():
        if _precision_of(key, suffixes) not in HARDWARE_FORMATS:
            allowed = [s for s in suffixes if s]
            raise ProfileError(
                f"{where}: `{key}` is not a precision {list(HARDWARE_FORMATS)}"
                + (f" with a suffix {allowed}." if allowed else ".")
            )
        out[key] = _figure(f"{where}.{key}", value)
    return out


def name_list(value: Any, where: str) -> tuple[str, ...]:
    """A TOML list of non-empty names (aliases, backends, devices) as a tuple."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProfileError(f"{where}: expected a list of names, got {value!r}.")
    return tuple(value)


def _gpu(where: str, raw: dict[str, Any]) -> GpuInfo:
    _unknown(raw, {f.name for f in dataclasses.fields(GpuInfo)}, where)
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise ProfileError(f"{where}.name: expected a string.")
    return GpuInfo(
        arch=_fact(f"{where}.arch", _req(raw, "arch", dict, where), str),
        name=name,
        sm=_opt(raw, "sm", where, _fact, str),
        cuda_cores=_opt(raw, "cuda_cores", where, _fact, int),
        tensor_cores=_opt(raw, "tensor_cores", where, _fact, int),
        sparse_tensor_cores=_opt(raw, "sparse_tensor_cores", where, _fact, bool),
        max_clock_mhz=_opt(raw, "max_clock_mhz", where, _figure),
        int8_tops=_opt(raw, "int8_tops", where, _figure),
    )


def _npu(where: str, raw: dict[str, Any]) -> NpuInfo:
    _unknown(raw, {"name", "int8_tops", "backends", "note"}, where)
    backends = (
        name_list(raw.get("backends", []), f"{where}.backends") if raw.get("backends") else ()
    )
    bad = [b for b in backends if b not in KNOWN_BACKENDS]
    if bad:
        raise ProfileError(f"{where}: unknown backend(s) {bad}; known: {list(KNOWN_BACKENDS)}.")
    return NpuInfo(
        name=str(_req(raw, "name", str, where)),
        int8_tops=_figure(f"{where}.int8_tops", _req(raw, "int8_tops", dict, where)),
        backends=backends,
        note=str(raw.get("note", "")),
    )


def _power_modes(
    where: str, raw: Any, default: Any, base: dict[str, Any]
) -> tuple[tuple[PowerMode, ...], str]:
    """Parse ``[[power_modes]]``; every mode must state what any other mode changes.

    ``base`` holds the top-level figures the default mode inherits, so switching from any mode to
    any other leaves no figure of the first behind.
    """
    if raw is None:
        if default is not None:
            raise ProfileError(f"{where}: `default_power_mode` without any [[power_modes]].")
        return (), ""
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise ProfileError(f"{where}: [[power_modes]] must be a list of tables.")
    allowed = {"name", "watts", "nvpmodel_id", "note", "compute", "cpu_compute", "dla_compute"}
    allowed |= set(MODE_FIGURES)
    modes = []
    for i, m in enumerate(raw):
        mw = f"{where} [[power_modes]][{i}]"
        _unknown(m, allowed, mw)
        name = _req(m, "name", str, mw)
        nv = m.get("nvpmodel_id")
        if nv is not None and (not isinstance(nv, int) or isinstance(nv, bool) or nv < 0):
            raise ProfileError(f"{mw}: nvpmodel_id must be an integer >= 0.")
        figs = {k: _opt(m, k, mw, _figure) for k in MODE_FIGURES}
        modes.append(
            PowerMode(
                name=name,
                watts=_opt(m, "watts", mw, _figure),
                nvpmodel_id=nv,
                note=str(m.get("note", "")),
                compute_gops=MappingProxyType(
                    _peaks(f"{mw}.compute", _table(m, "compute", mw), COMPUTE_SUFFIXES)
                ),
                cpu_core_gops=MappingProxyType(
                    _peaks(f"{mw}.cpu_compute", _table(m, "cpu_compute", mw), ("",))
                ),
                dla_gops=MappingProxyType(
                    _peaks(f"{mw}.dla_compute", _table(m, "dla_compute", mw), COMPUTE_SUFFIXES)
                ),
                **figs,
            )
        )
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ProfileError(f"{where}: power mode names repeat: {names}.")
    if default not in names:
        raise ProfileError(
            f"{where}: `default_power_mode` must be one of {names}, got {default!r}."
        )

    for key in MODE_FIGURES:
        if any(getattr(m, key) is not None for m in modes) and base[key] is None:
            raise ProfileError(
                f"{where}: power modes set `{key}` but the profile has no such top-level figure."
            )
    # The default mode states the top-level figures; the others must state the same set.
    out = []
    for mode in modes:
        changes: dict[str, Any] = {}
        for key in MODE_FIGURES:
            if any(getattr(m, key) is not None for m in modes):
                own = getattr(mode, key)
                if mode.name == default:
                    if own is not None and own.value != base[key].value:
                        raise ProfileError(
                            f"{where}: default mode {default!r} says {key} = {own.value}, the "
                            f"top-level figure is {base[key].value}; they must agree."
                        )
                    changes[key] = base[key]
                elif own is None:
                    raise ProfileError(
                        f"{where}: power mode {mode.name!r} must set `{key}`, since another mode "
                        "changes it."
                    )
        for key in ("compute_gops", "cpu_core_gops", "dla_gops"):
            if any(getattr(m, key) for m in modes):
                own = getattr(mode, key)
                if mode.name == default:
                    differ = [k for k, f in own.items() if k not in base[key] or base[key][k] != f]
                    if differ:
                        raise ProfileError(
                            f"{where}: default mode {default!r} disagrees with the top-level "
                            f"{key} on {differ}."
                        )
                    changes[key] = MappingProxyType(dict(base[key]))
                elif set(own) != set(base[key]):
                    raise ProfileError(
                        f"{where}: power mode {mode.name!r} must set every {key} entry "
                        f"{sorted(base[key])} (it sets {sorted(own)})."
                    )
        out.append(dataclasses.replace(mode, **changes))
    return tuple(out), default


def _backend_options(where: str, raw: dict[str, Any]) -> MappingProxyType[str, Any]:
    bad = [b for b in raw if b not in KNOWN_BACKENDS]
    if bad:
        raise ProfileError(
            f"{where} [backend_options]: unknown backend(s) {bad}; known: {list(KNOWN_BACKENDS)}."
        )
    for backend, opts in raw.items():
        if not isinstance(opts, dict):
            raise ProfileError(f"{where} [backend_options.{backend}]: must be a table.")
    ov = raw.get("openvino", {})
    if "devices" in ov and "device" in ov:
        devices = name_list(ov["devices"], f"{where} [backend_options.openvino].devices")
        if ov["device"] != "AUTO:" + ",".join(devices):
            raise ProfileError(
                f"{where} [backend_options.openvino]: device {ov['device']!r} and devices "
                f"{list(devices)} disagree; device should be 'AUTO:{','.join(devices)}'."
            )
    tvm = raw.get("tvm", {})
    if "target" in tvm and (not isinstance(tvm["target"], dict) or "kind" not in tvm["target"]):
        raise ProfileError(
            f"{where} [backend_options.tvm].target: a TVM target table with a `kind` is required."
        )
    # Read-only at the top; the tables inside stay plain dicts and lists so a backend can hand
    # them to its tool (TVM takes the target dict as is) or to json.dumps.
    return MappingProxyType(copy.deepcopy(raw))


def _expand_citations(data: Any, cites: dict[str, str], where: str) -> Any:
    """Every ``source`` string with its ``[KEY]`` citations spelled out from ``[sources]``."""
    if isinstance(data, list):
        return [_expand_citations(v, cites, where) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: _expand_citations(v, cites, where) for k, v in data.items()}
    src = out.get("source")
    if isinstance(src, str):
        missing = [k for k in _CITE.findall(src) if k not in cites]
        if missing:
            raise ProfileError(f"{where}: source cites {missing}, not in [sources]: {src!r}.")
        out["source"] = _CITE.sub(lambda m: f"[{m[1]}: {cites[m[1]]}]", src)
    return out


def parse_profile(data: dict[str, Any], path: str) -> HardwareProfile:
    """Validate a profile's TOML table; every error names the file and the key."""
    where = path
    cites = data.get("sources", {})
    if not isinstance(cites, dict) or not all(
        isinstance(v, str) and v.strip() for v in cites.values()
    ):
        raise ProfileError(f'{where} [sources]: expected KEY = "citation" entries.')
    data = _expand_citations({k: v for k, v in data.items() if k != "sources"}, cites, where)
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
    peaks = _peaks(
        f"{where} [compute]", {k: v for k, v in compute.items() if k != "scope"}, COMPUTE_SUFFIXES
    )
    if "fp32" not in peaks:
        raise ProfileError(f"{where} [compute]: an fp32 peak is required.")
    backends = tuple(_req(data, "backends", list, where))
    bad = [b for b in backends if b not in KNOWN_BACKENDS]
    if bad or not backends:
        raise ProfileError(f"{where}: unknown backend(s) {bad}; known: {list(KNOWN_BACKENDS)}.")
    precisions = tuple(_req(data, "precisions", list, where))
    badp = [p for p in precisions if p not in HARDWARE_FORMATS]
    if badp or "fp32" not in precisions:
        raise ProfileError(
            f"{where}: precisions must include fp32 and only {list(HARDWARE_FORMATS)}."
        )
    cores = _req(cpu, "cores", int, f"{where} [cpu]")
    if cores < 1:
        raise ProfileError(f"{where} [cpu]: cores must be >= 1.")
    _unknown(cpu, {"cores", "isa", "core", "clock_ghz", "source", "compute"}, f"{where} [cpu]")
    cpu_peaks = _peaks(f"{where} [cpu.compute]", _table(cpu, "compute", where), ("",))
    if cpu_peaks and scope == "core":
        raise ProfileError(
            f"{where} [cpu.compute]: with compute scope 'core' the per-core peaks go in [compute]."
        )
    cpu_source = cpu.get("source", "")
    if not isinstance(cpu_source, str):
        raise ProfileError(f"{where} [cpu].source: expected a string.")
    per_core_bw = mem.get("bandwidth_per_core_gbs")
    aliases = name_list(data.get("aliases", []), f"{where} aliases") if data.get("aliases") else ()
    if name in aliases:
        raise ProfileError(f"{where}: alias {name!r} repeats the profile's own name.")
    headline = None
    if "headline" in data:
        h = _table(data, "headline", where)
        _unknown(h, {"label", "tops"}, f"{where} [headline]")
        headline = Headline(
            label=_req(h, "label", str, f"{where} [headline]"),
            tops=_figure(f"{where} [headline].tops", _req(h, "tops", dict, f"{where} [headline]")),
        )
    bandwidth = _figure(f"{where} [memory].bandwidth_gbs", _req(mem, "bandwidth_gbs", dict, where))
    gpu = _gpu(f"{where} [gpu]", _table(data, "gpu", where)) if "gpu" in data else None
    dla_table = _table(data, "dla_compute", where)
    dla_peaks = _peaks(f"{where} [dla_compute]", dla_table, COMPUTE_SUFFIXES)
    cpu_clock = _opt(cpu, "clock_ghz", f"{where} [cpu]", _figure)
    base = {
        "memory_bandwidth_gbs": bandwidth,
        "gpu_clock_mhz": gpu.max_clock_mhz if gpu else None,
        "cpu_clock_ghz": cpu_clock,
        "headline_tops": headline.tops if headline else None,
        "compute_gops": peaks,
        "cpu_core_gops": cpu_peaks,
        "dla_gops": dla_peaks,
    }
    modes, mode = _power_modes(where, data.get("power_modes"), data.get("default_power_mode"), base)
    return HardwareProfile(
        name=name,
        description=str(data.get("description", "")),
        arch=arch,
        cpu_cores=cores,
        cpu_isa=tuple(cpu.get("isa", [])),
        memory_gb=_figure(f"{where} [memory].size_gb", _req(mem, "size_gb", dict, where)),
        memory_bandwidth_gbs=bandwidth,
        memory_bandwidth_per_core_gbs=(
            _figure(f"{where} [memory].bandwidth_per_core_gbs", per_core_bw)
            if per_core_bw is not None
            else None
        ),
        compute_scope=scope,
        compute_gops=MappingProxyType(peaks),
        backends=backends,
        precisions=precisions,
        backend_options=_backend_options(where, _table(data, "backend_options", where)),
        path=path,
        aliases=aliases,
        cpu_core=_opt(cpu, "core", f"{where} [cpu]", _fact, str),
        cpu_clock_ghz=cpu_clock,
        cpu_source=cpu_source.strip(),
        cpu_core_gops=MappingProxyType(cpu_peaks),
        gpu=gpu,
        npu=_npu(f"{where} [npu]", _table(data, "npu", where)) if "npu" in data else None,
        dla_count=_opt(data, "dla_count", where, _fact, int),
        dla_gops=MappingProxyType(dla_peaks),
        headline=headline,
        power_modes=modes,
        power_mode=mode,
    )
