"""Unchanged rebuilds: the whole bundle of an identical earlier build, keyed without loading a
model, restored from the build cache and checked; and storing a fresh bundle for next time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from robopt_compile.compile.buildcache import (
    CACHED_STAGES,
    REPORTED_STAGES,
    export_key,
    record_key,
    transform_config,
)
from robopt_compile.compile.options import CompileOptions
from robopt_compile.compile.quantize import needs_quantization
from robopt_compile.compile.stages import CompileResult, Progress, cache_note
from robopt_compile.store.cache import ENTRY_ERRORS, KEY_ERRORS, STORE_ERRORS


def bundle_key(
    cache: Any, transform_key: str, opts: CompileOptions, profile: Any, backend: Any
) -> str:
    """The key of a finished bundle: the transform stage's key (which chains the export's)
    plus everything the build, the engine check, the analysis and the report depend on.

    The profile enters with its figures (the analysis reads them); a detected host's
    measured figures are stable within a boot (hwprofiles/host.py).
    """
    from importlib.metadata import PackageNotFoundError, version

    from robopt_compile.store.cache import implementation, plain_data, profile_fingerprint

    try:
        mpl = version("matplotlib")
    except PackageNotFoundError:
        mpl = None
    config = {
        "implementation": implementation(type(backend), type(backend).build),
        "backend": backend.name,
        "dla_core": backend.options.get("dla_core"),
        "profile": profile_fingerprint(profile),
        "profile_figures": plain_data(profile),
        "options": {
            "precision": opts.precision,
            "threads": opts.threads,
            "tune_trials": opts.tune_trials,
            "max_batch": opts.max_batch,
            "calibration": opts.quant.calibration,
            "hwprofile": str(opts.hwprofile) if opts.hwprofile else None,
        },
        "matplotlib": mpl,  # draws the report's figures
    }
    return cache.key("bundle", transform_key, config)


def bundle_key_for(
    cache: Any, source: str, opts: CompileOptions, profile: Any, backend: Any
) -> tuple[str, dict[str, Any]] | None:
    """(bundle key, the stored entry's objects) for an identical earlier build, or None.

    Chains the keys without loading a model: the export entry's output hash gives the
    transform key, which gives the bundle key.
    """
    if opts.dump_ir is not None:
        return None
    try:
        exported = cache.peek(export_key(cache, source, opts))
        if exported is None or "export" not in exported:
            return None
        calibration = None
        spec = opts.quant.calibration or ""
        if spec.split(":")[0] == "task":  # the recording is known by its cached content
            recorded = cache.peek(record_key(cache, spec, opts, exported["export"]))
            if not recorded or "calibration" not in recorded:
                return None
            calibration = {"kind": ".npz", "sha256": recorded["calibration"]}
        needs_data = opts.compress.active or needs_quantization(backend.name, opts.precision)
        config = transform_config(opts, backend, profile, needs_data, calibration)
        tkey = cache.key("transform", exported["export"], config)
        if cache.peek(tkey) is None:
            return None
        bkey = bundle_key(cache, tkey, opts, profile, backend)
    except KEY_ERRORS:  # an unhashable or unreadable source: the full path reports it
        return None
    objects = cache.peek(bkey)
    return (bkey, objects) if objects else None


class _ReuseFailed(Exception):
    """A stored bundle that cannot be restored: the full build runs instead."""


def reuse_bundle(
    cache: Any,
    found: tuple[str, dict[str, str]],
    out: Path,
    force: bool,
    timings: dict[str, float],
) -> CompileResult | None:
    """The bundle of an identical earlier build, restored into ``out``; None if there is none.

    Every restored file is checked against its sha256 (a corrupt object makes this a miss).
    The engine check, analysis, per-layer times and report are those of the build that made
    these exact bytes with the same tool versions and robopt code; report.json says so and
    records this run's stage times, and the HTML/Markdown reports carry a note.
    """
    from robopt_compile.compile import bundle

    started = time.perf_counter()
    entry = cache.get(found[0])  # verifies every object's hash
    if entry is None:
        return None
    try:
        with bundle.staged_output(out, force) as tmp:
            try:
                cache.materialize(entry, "bundle", tmp)
                report = json.loads((tmp / "report.json").read_text())
                manifest = json.loads((tmp / bundle.MANIFEST).read_text())
                analysis = tmp / "analysis.json"  # multi-graph bundles have none
                facts = json.loads(analysis.read_text()) if analysis.is_file() else {}
            except ENTRY_ERRORS as exc:  # a damaged entry is a miss: the full build runs
                raise _ReuseFailed(str(exc)) from exc
            _rewrite_reused(tmp, entry, report, manifest, timings, started)
    except _ReuseFailed:
        return None
    return CompileResult(out=out, manifest=manifest, report=report, facts=facts)


def _rewrite_reused(
    tmp: Path,
    entry: Any,
    report: dict[str, Any],
    manifest: dict[str, Any],
    timings: dict[str, float],
    started: float,
) -> None:
    """report.json with this run's stage times and cache states, the manifest's creation
    time and report.json hash, and a note in the HTML/Markdown reports."""
    from robopt_compile.compile import bundle

    built = entry.meta.get("created_utc")
    stages = entry.meta.get("stages", {})
    report["cache"] = {
        k: {"cache": "hit", **({"key": stages[k]["key"]} if "key" in stages[k] else {})}
        for k in REPORTED_STAGES
        if k in stages
    }
    report["cache"]["bundle"] = {
        "cache": "hit",
        "key": entry.key,
        "built_utc": built,
        "reused": entry.meta.get(
            "reused", ["engine check", "analysis", "per-layer times", "report"]
        ),
    }
    report["built_seconds"] = report.get("stage_seconds")
    # This run's stages; "reuse" so far (restoring and checking the files).
    now = {**timings, "reuse": time.perf_counter() - started}
    report["stage_seconds"] = {k: round(v, 4) for k, v in now.items()}
    bundle.write_json(tmp / "report.json", report)
    manifest["created_utc"] = bundle.utc_now()
    manifest["files"]["report.json"] = bundle.sha256_file(tmp / "report.json")
    bundle.write_json(tmp / bundle.MANIFEST, manifest)
    _mark_reports_reused(tmp, built, entry.key)


def _mark_reports_reused(root: Path, built: str | None, key: str) -> None:
    """A note at the top of report.html and report.md: this is the earlier build's report."""
    import html

    text = (
        f"Unchanged rebuild: this bundle was restored from the build cache (key {key[:12]}), "
        f"from the identical build of {built or 'an earlier run'}. The engine check, analysis, "
        "per-layer times and stage times shown are that build's; report.json has this run's."
    )
    page = root / "report.html"
    if page.is_file():
        doc = page.read_text()
        at = doc.find("</h1>")
        if at >= 0:
            doc = doc[: at + 5] + f'<p class="note">{html.escape(text)}</p>' + doc[at + 5 :]
            page.write_text(doc)
    md = root / "report.md"
    if md.is_file():
        lines = md.read_text().split("\n", 1)
        md.write_text(lines[0] + f"\n\n_{text}_\n" + (lines[1] if len(lines) > 1 else ""))


def store_bundle(
    cache: Any,
    out: Path,
    opts: CompileOptions,
    profile: Any,
    backend: Any,
    info: dict[str, dict[str, Any]],
    progress: Progress,
) -> None:
    """Keep a finished bundle (with its report) for an unchanged rebuild; only when every
    stage was cacheable. Never fails the compile."""
    if any(info.get(s, {}).get("cache") not in ("hit", "miss") for s in CACHED_STAGES):
        return
    try:
        tkey = info["transform"]["key"]
        bkey = bundle_key(cache, tkey, opts, profile, backend)
        manifest = json.loads((out / "manifest.json").read_text())
        meta = {"created_utc": manifest.get("created_utc"), "stages": info}
        cache.put(bkey, "bundle", json.loads(json.dumps(meta, default=str)), trees={"bundle": out})
    except STORE_ERRORS as exc:
        cache_note(progress, "bundle not stored for reuse", exc)
