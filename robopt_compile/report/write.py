"""Writing ``report.html`` and ``report.md`` into a bundle, measuring per-layer times first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from robopt_compile.bench.results import atomic_write_text, load_results
from robopt_compile.report.data import load_bundle
from robopt_compile.report.html import render_html
from robopt_compile.report.markdown import render_markdown

HTML_NAME = "report.html"
MD_NAME = "report.md"


def write_reports(bundle_dir: Path | str, shown: Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into the bundle folder, atomically.

    Returns:
        ``{"html": path, "md": path}``.

    Raises:
        InputError: the folder is missing or is not a bundle (anything else that is missing
            becomes a "not measured" or "not present" note in the report).
    """
    data = load_bundle(bundle_dir, shown)
    root = Path(bundle_dir)
    html_path = atomic_write_text(root / HTML_NAME, render_html(data))
    md_path = atomic_write_text(root / MD_NAME, render_markdown(data))
    return {"html": html_path, "md": md_path}


def refresh_reports(
    bundle_dir: Path | str,
    profile: bool = True,
    runs: int = 20,
    warn: Callable[[str], None] | None = None,
    shown: Path | None = None,
) -> dict[str, Path]:
    """Measure per-layer times if they are missing (and the engine runs here), then write
    ``report.html`` and ``report.md``. What cannot be measured is a warning, not a failure.

    Raises:
        InputError: the folder is missing or is not a bundle.
    """
    from robopt_compile.bench.results import save_result
    from robopt_compile.errors import RoboptError

    manifest = load_bundle(bundle_dir).manifest  # one-line error for a missing folder
    layers = None
    # Per-layer profiles are of single-graph engines; a multi-graph bundle reports per graph.
    profile = profile and "graphs" not in manifest
    if profile and "layers" not in load_results(bundle_dir):
        from robopt_compile.report.layers import profile_layers as measure

        threads = (manifest.get("build") or {}).get("threads") or 1
        try:
            layers = save_result(bundle_dir, "layers", measure(bundle_dir, runs, threads))
        except RoboptError as exc:  # a report without per-layer times is still a report
            if warn:  # naming the bundle where it will be, not its staging folder
                text = str(exc).replace(str(bundle_dir), str(shown)) if shown else str(exc)
                warn(f"per-layer times not measured: {text}")
    paths = write_reports(bundle_dir, shown)
    if layers is not None:
        paths["layers"] = layers
    return paths


def regenerate_reports(
    bundle_dir: Path | str, warn: Callable[[str], None] | None = None
) -> dict[str, Path] | None:
    """:func:`refresh_reports` after new results landed in ``results/`` (an evaluation, a
    remote benchmark): never fails, since the measurement is already saved. What went wrong
    is one ``warn`` line; returns the paths written, or None."""
    try:
        return refresh_reports(bundle_dir, warn=warn)
    except Exception as exc:  # any report bug: the saved measurement must not be lost to it
        if warn:
            warn(f"report not regenerated: {exc}")
        return None
