"""Hardware profiles: one TOML file per board in this folder, loaded into frozen dataclasses.

Every figure in a profile is a table ``{ value = ..., source = "..." }`` and may say
``estimate = true``; the loader refuses a figure without a source. ``host`` is not a file: it is
detected from the machine robopt runs on (``robopt_compile.hwprofiles.host``).

Compute peaks are GOP/s per precision. ``compute_scope = "core"`` means per CPU core (the roofline
multiplies by the threads in use); ``"device"`` means for the whole accelerator (on a Jetson: the
GPU alone, dense, which is what a TensorRT engine on the GPU can reach).

Optional parts (absent from the x86 files and from ``host``):

* ``[sources]``: ``KEY = "citation"``; a figure's source may cite ``[KEY]`` and the loader spells
  it out, so every ``Figure.source`` stands on its own.
* ``[compute]`` keys ``<precision>_sparse`` (2:4 structured sparsity) beside the dense ones; the
  roofline reads only plain precision keys. Precisions are ``precision.HARDWARE_FORMATS``
  (robopt's ``COMPUTE_FORMATS`` plus fp8/fp4, which the hardware has and robopt does not
  produce yet).
* ``[cpu]``: ``core`` (what the cores are), ``clock_ghz``, ``source`` (for ``cores``/``isa``) and,
  on device-scope boards, ``[cpu.compute]``: per-core peaks for a CPU runtime on the same board.
* ``[gpu]``, ``[npu]``, ``dla_count``, ``[dla_compute]`` (all DLAs together), ``[headline]`` (the
  vendor's advertised AI figure, in its own unit, with a label saying exactly what it adds up).
* ``[[power_modes]]`` with ``default_power_mode``: the top-level figures are the default mode's;
  ``HardwareProfile.with_power_mode(name)`` returns the profile with another mode's figures.
* ``aliases``: other names ``load_profile`` accepts for the board.

The package: ``schema.py`` (the frozen dataclasses), ``parse.py`` (a TOML table validated into
them), ``host.py`` (the detected ``host`` profile) and this module, the loader (``load_profile``,
``load_profile_file``, ``profile_names``, ``profile_aliases``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from robopt_compile.errors import ProfileError, UnknownNameError
from robopt_compile.hwprofiles.parse import (
    COMPUTE_SUFFIXES,
    KNOWN_BACKENDS,
    SCHEMA_VERSION,
    name_list,
    parse_profile,
)
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

__all__ = [
    "COMPUTE_SUFFIXES",
    "KNOWN_BACKENDS",
    "MODE_FIGURES",
    "PROFILE_DIR",
    "SCHEMA_VERSION",
    "Fact",
    "Figure",
    "GpuInfo",
    "HardwareProfile",
    "Headline",
    "NpuInfo",
    "PowerMode",
    "load_profile",
    "load_profile_file",
    "parse_profile",
    "profile_aliases",
    "profile_names",
]

PROFILE_DIR = Path(__file__).parent


def load_profile_file(path: str | Path) -> HardwareProfile:
    """A profile from any TOML file (a board robopt does not ship); the name need not match."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"hardware profile not found: {p}.")
    return parse_profile(_read(p), str(p))


def _read(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p}: not valid TOML ({exc}).") from exc


def profile_names() -> list[str]:
    """Every built-in target name: ``host`` plus one per TOML file here (aliases not listed)."""
    return ["host", *sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))]


def profile_aliases() -> dict[str, str]:
    """Alias -> canonical name for the built-in profiles; a clash is a ProfileError."""
    canonical = set(profile_names())
    out: dict[str, str] = {}
    for p in sorted(PROFILE_DIR.glob("*.toml")):
        raw = _read(p).get("aliases", [])
        for alias in name_list(raw, f"{p} aliases") if raw else ():
            if alias in canonical or alias in out:
                other = alias if alias in canonical else out[alias]
                raise ProfileError(f"{p}: alias {alias!r} is already taken by {other!r}.")
            out[alias] = p.stem
    return out


def load_profile(name: str) -> HardwareProfile:
    """A built-in profile by name or alias (``host`` is detected from this machine)."""
    if name == "host":
        from robopt_compile.hwprofiles.host import detect_host

        return detect_host()
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        aliases = profile_aliases()
        if name not in aliases:
            raise UnknownNameError("target", name, [*profile_names(), *aliases])
        path = PROFILE_DIR / f"{aliases[name]}.toml"
    profile = load_profile_file(path)
    if profile.name != path.stem:
        raise ProfileError(f"{path}: `name = {profile.name!r}` must match the file name.")
    return profile
