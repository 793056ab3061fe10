"""Reading a bundle for its report: the JSON files, the results under ``results/``.

``load_bundle`` fails only for a folder that is not a bundle; anything else unreadable becomes a
line in ``BundleData.problems`` and the report shows the rest. ``bench_results`` and
``control_results`` pick out the measurements several sections and the verdict read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopt_compile.bench.results import load_results, result_kind
from robopt_compile.errors import InputError


@dataclass
class BundleData:
    """Everything a report is built from; missing pieces are None or empty."""

    root: Path
    manifest: dict[str, Any]
    report: dict[str, Any] | None
    analysis: dict[str, Any] | None
    results: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    shown: Path | None = None  # the path the report names (a staged bundle's final place)

    @property
    def where(self) -> Path:
        """The bundle's path as the report's hints print it."""
        return self.shown or self.root

    def results_of(self, *kinds: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, data) of the results whose kind is one of ``kinds``, by name."""
        return [(n, d) for n, d in self.results.items() if result_kind(n, d) in kinds]


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """A JSON object file; None when it is absent, or unreadable (said in ``problems``)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path.name} cannot be read ({str(exc).splitlines()[0][:160]})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return data


def load_bundle(bundle_dir: Path | str, shown: Path | None = None) -> BundleData:
    """Read a bundle's JSON files and results; only a missing or broken manifest is an error.

    Raises:
        InputError: the folder is missing, is not a bundle, or its manifest.json is unreadable.
    """
    root = Path(bundle_dir)
    if not root.exists():
        raise InputError(f"bundle folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is a file, not a bundle folder.")
    if not (root / "manifest.json").is_file():
        raise InputError(
            f"{str(root)!r} is not a robopt bundle (no manifest.json); pass the folder that "
            "`robopt-compile -o` wrote."
        )
    problems: list[str] = []
    manifest = read_json(root / "manifest.json", problems)
    if manifest is None:
        raise InputError(f"{root / 'manifest.json'}: {problems[0]}; the bundle is corrupt.")
    errors: dict[str, str] = {}
    results = load_results(root, errors=errors)
    problems += [f"results/{n}.json {why}" for n, why in sorted(errors.items())]
    report = read_json(root / "report.json", problems)
    analysis = read_json(root / "analysis.json", problems)
    return BundleData(root, manifest, report, analysis, results, problems, shown)


def bench_results(d: BundleData) -> list[tuple[str, dict[str, Any]]]:
    """Results holding a harness benchmark (``robopt-bench --json``, local or remote)."""
    return [
        (n, r) for n, r in d.results_of("bench", "remote") if isinstance(r.get("latency"), dict)
    ]


def control_results(d: BundleData) -> list[tuple[str, dict[str, Any]]]:
    """Control-loop figures: dedicated results, a paced loop inside a benchmark, and the
    deadline figures of back-to-back benchmark runs with a control rate."""
    out = list(d.results_of("control_loop"))
    for name, r in bench_results(d):
        if isinstance(r.get("control_loop"), dict):
            out.append((f"{name} (paced loop)", r["control_loop"]))
        if isinstance(r.get("control"), dict):
            out.append((f"{name} (back-to-back runs)", r["control"]))
    return out
