"""A bundle's quantization report and reports, and the board profiles (``targets``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.api.common import Warn
from robopt_compile.errors import InputError


@dataclass(frozen=True)
class QuantReport:
    """A quantized bundle's per-layer precision, sensitivity and error contribution."""

    bundle: Path
    backend: str
    precision: str
    quantization: dict[str, Any]  # report.json's "quantization"

    def to_json(self) -> dict[str, Any]:
        return self.quantization


def quant_report(bundle: str | Path) -> QuantReport:
    """The quantization section of a bundle's report.

    Raises:
        InputError: not a bundle, an unreadable report.json, or no quantization in it.
    """
    import json

    from robopt_compile.bench.manifest import load_manifest

    bundle = Path(bundle)
    manifest = load_manifest(bundle, verify=False)
    try:
        rep = json.loads((bundle / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{bundle}/report.json cannot be read ({exc}).") from exc
    q = rep.get("quantization")
    if not q:
        raise InputError(
            f"{bundle} was compiled at {manifest['precision']} without quantization; "
            "nothing to report."
        )
    return QuantReport(bundle, manifest["backend"], manifest["precision"], q)


def report(
    bundle: str | Path, *, profile_layers: bool = True, runs: int = 20, warn: Warn | None = None
) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into a bundle (docs/REPORTS.md), measuring
    per-layer times first when they are missing and the engine runs here."""
    from robopt_compile.report import refresh_reports

    return refresh_reports(bundle, profile_layers, runs, warn)


@dataclass(frozen=True)
class Targets:
    """Board profiles, their backends and what builds and runs on this machine."""

    targets: tuple[dict[str, Any], ...]
    backends: dict[str, dict[str, Any]]  # backend -> {"available", "reason"}

    def to_json(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "backends": self.backends}


def targets() -> Targets:
    """Every board profile with its backends' build/run status here."""
    from robopt_compile.compile.resolve import target_status
    from robopt_compile.hwprofiles import load_profile, profile_aliases, profile_names
    from robopt_compile.targets import TARGETS, get_backend

    avail = {}
    for b in TARGETS:
        ok, why = get_backend(b).availability()
        avail[b] = {"available": ok, "reason": why}
    rows = []
    aliases = profile_aliases()
    for name in profile_names():
        p = load_profile(name)
        rows.append({
            "name": name, "aliases": sorted(a for a, n in aliases.items() if n == name),
            "description": p.description, "arch": p.arch,
            "backends": {b: target_status(p, b) for b in p.backends},
            "precisions": list(p.precisions),
        })  # fmt: skip
    return Targets(tuple(rows), avail)
