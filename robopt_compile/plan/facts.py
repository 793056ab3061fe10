"""What a planner search knows before it builds anything: the analysis facts per compute
precision, whether channel pruning applies, and the reference inputs with the fp32 source
model's outputs on them (the one accuracy measure of every plan), through the build cache."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.plan.planner import Facts

Log = Callable[[str], None]


def search_facts(
    source: str, opts: Any, profile: Any, precisions: set[str], log: Log
) -> tuple[Facts, dict[str, Any], dict[str, Any]]:
    """The analysis facts per compute precision, and the search's reference inputs with the
    fp32 source model's outputs on them (the one accuracy measure of every plan).

    Through the build cache like a compile: the export is the compiles' own cached export, and
    the facts with the reference data are kept under the export's hash, the precisions, the
    board's figures and the threads. An unchanged search neither exports, nor analyses, nor
    even loads the ONNX model (loading alone imports onnx, about 3 s of a 6 s rerun).
    """
    from robopt_compile.compile.buildcache import cached_export, export_key, load_reference
    from robopt_compile.store.cache import ENTRY_ERRORS, KEY_ERRORS, BuildCache

    cache = BuildCache.open(lambda m: log(m)) if opts.cache else None
    if cache is None:
        return _analyze(_export(source, opts), profile, precisions, opts, log)
    try:
        key = None
        try:
            entry = cache.get(export_key(cache, source, opts))
            if entry is not None:
                key = _facts_key(cache, entry.objects["export"], profile, precisions, opts)
                hit = cache.get(key)
                if hit is not None:
                    with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
                        folder = cache.materialize(hit, "reference", Path(d))
                        ins, outs = load_reference(folder)
                    m = hit.meta
                    return Facts.from_analysis(m["facts"], m["prunable"]), ins, outs
        except (*KEY_ERRORS, *ENTRY_ERRORS) as exc:  # a cache problem never fails a search
            log(f"build cache: planner facts not reused ({exc})")
        info: dict[str, dict[str, Any]] = {}
        src = cached_export(cache, source, opts, lambda: _export(source, opts), info,
                            lambda *a: None)  # fmt: skip
        facts, by_prec, prunable = _analysis(src, profile, precisions, opts, log)
        exported = (info.get("export") or {}).get("output")
        if exported:
            _store_facts(cache, _facts_key(cache, exported, profile, precisions, opts),
                         by_prec, prunable, src, log)  # fmt: skip
        return facts, src.reference_inputs, src.reference_outputs
    finally:
        cache.close()


def _export(source: str, opts: Any) -> Any:
    from robopt_compile.compile.frontend import load_source

    return load_source(
        source, dynamic_batch=opts.dynamic_batch, opset=opts.opset, seed=opts.seed,
        check_parity=opts.check_parity, reference_inputs=opts.reference_inputs,
    )  # fmt: skip


def _facts_key(cache: Any, exported: str, profile: Any, precisions: set[str], opts: Any) -> str:
    from robopt_compile.store.cache import profile_fingerprint

    config = {"precisions": sorted(p for p in precisions if p in profile.precisions),
              "threads": opts.threads or 1, "profile": profile_fingerprint(profile)}  # fmt: skip
    return cache.key("analysis", exported, config)


def _store_facts(
    cache: Any, key: str, by_prec: dict[str, Any], prunable: bool, src: Any, log: Log
) -> None:
    from robopt_compile.compile.buildcache import save_reference
    from robopt_compile.store.cache import STORE_ERRORS

    try:
        with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
            save_reference(Path(d), src.reference_inputs, src.reference_outputs)
            cache.put(key, "analysis", {"facts": by_prec, "prunable": prunable},
                      trees={"reference": Path(d)})  # fmt: skip
    except STORE_ERRORS as exc:  # a cache problem never fails a search
        log(f"build cache: planner facts not stored ({exc})")


def _analyze(
    src: Any, profile: Any, precisions: set[str], opts: Any, log: Log
) -> tuple[Facts, dict[str, Any], dict[str, Any]]:
    facts = _analysis(src, profile, precisions, opts, log)[0]
    return facts, src.reference_inputs, src.reference_outputs


def _analysis(
    src: Any, profile: Any, precisions: set[str], opts: Any, log: Log
) -> tuple[Facts, dict[str, Any], bool]:
    """Analyse the exported model per compute precision (fp32 first: ``Facts`` reads it)."""
    from robopt_compile.compile import analysis

    threads = opts.threads or 1
    by_prec = {
        p: analysis.analyze(src.model, profile, precision=p, threads=threads)
        for p in ["fp32", *sorted(precisions - {"fp32"})]
        if p in profile.precisions
    }
    prunable = True
    try:
        from robopt_compile.passes.prune.groups import Analysis

        prunable = any(not g.blocked and g.size >= 16 for g in Analysis(src.model).final_groups())
    except Exception as exc:  # the channel analysis on any graph: the build then says why
        log(f"channel analysis failed ({type(exc).__name__}); pruning plans stay in")
    return Facts.from_analysis(by_prec, prunable), by_prec, prunable
