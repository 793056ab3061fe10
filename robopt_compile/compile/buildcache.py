"""The build cache's stages: export, task recording, transform and build outputs stored in the
store (``robopt_compile.store.cache``) under keys of their inputs, options, tool versions and
robopt's code, and restored on an unchanged rebuild (docs/STORE.md)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.compile.options import CompileOptions
from robopt_compile.compile.quantize import needs_quantization
from robopt_compile.compile.stages import Progress, cache_note, stage
from robopt_compile.jsonutil import json_default, json_sha, sha256_file
from robopt_compile.store.cache import ENTRY_ERRORS, STORE_ERRORS

CACHED_STAGES = ("export", "transform", "build")


# In report.json's "cache", in pipeline order; "record" only with --calibration task.
REPORTED_STAGES = ("export", "record", "transform", "build")


def save_model_dir(model: Any, dest: Path, inputs: Any, outputs: Any) -> Path:
    """A model with its reference data as a folder: model.onnx[.data], inputs/outputs.npz."""
    from robopt_compile import ir as rir

    rir.save(model, dest / "model.onnx")
    return save_reference(dest, inputs, outputs)


def save_reference(dest: Path, inputs: Any, outputs: Any) -> Path:
    """Reference inputs and the source model's outputs on them: inputs.npz, outputs.npz."""
    from robopt_compile.compile import bundle

    bundle.save_npz(dest / "inputs.npz", inputs)
    bundle.save_npz(dest / "outputs.npz", outputs)
    return dest


def load_reference(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``save_reference`` wrote (numpy only: no ONNX import)."""
    import numpy as np

    with np.load(folder / "inputs.npz") as i, np.load(folder / "outputs.npz") as o:
        return {k: i[k] for k in i.files}, {k: o[k] for k in o.files}


def load_model_dir(folder: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from robopt_compile import ir as rir

    return rir.load(folder / "model.onnx"), *load_reference(folder)


def export_key(cache: Any, source: str, opts: CompileOptions) -> str:
    """The export stage's cache key; raises ``cache.Uncacheable`` (or the error of a source
    that cannot be read, which the export itself then reports)."""
    from robopt_compile.compile import frontend
    from robopt_compile.compile.identity import source_identity
    from robopt_compile.store.cache import implementation, sha256_tree

    ident = source_identity(source)
    config = {
        "implementation": implementation(frontend.load_source, frontend._from_torch),
        "dynamic_batch": opts.dynamic_batch,
        "opset": opts.opset,
        "seed": opts.seed,
        "check_parity": opts.check_parity,
        "reference_inputs": (
            sha256_tree(Path(opts.reference_inputs)) if opts.reference_inputs else None
        ),
    }
    return cache.key("export", json_sha(ident), config)


def cached_export(
    cache: Any,
    source: str,
    opts: CompileOptions,
    export: Callable[[], Any],
    info: dict[str, dict[str, Any]],
    progress: Progress,
) -> Any:
    """``export()`` through the cache; records ``info["export"]`` and the export's tree hash."""
    from robopt_compile.compile.frontend import SourceModel
    from robopt_compile.store.cache import KEY_ERRORS, Uncacheable

    try:
        key = export_key(cache, source, opts)
    except KEY_ERRORS as exc:  # the export itself says what is wrong with a broken file
        reason = str(exc) if isinstance(exc, Uncacheable) else f"{type(exc).__name__}: {exc}"
        info["export"] = {"cache": "off", "reason": reason}
        if isinstance(exc, Uncacheable):  # said once: every rebuild of it will export again
            progress(f"build cache off for this source: {reason}", "info", 0.0)
        return export()
    entry = cache.get(key)
    if entry is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
                folder = cache.materialize(entry, "export", Path(d))
                model, ins, outs = load_model_dir(folder)
            m = entry.meta
            info["export"] = {"cache": "hit", "key": key, "output": entry.objects["export"]}
            return SourceModel(
                model=model,
                name=m["name"],
                source=m["source"],
                kind=m["kind"],
                exporter=m["exporter"],
                reference_inputs=ins,
                reference_outputs=outs,
                parity=m["parity"],
                notes=m["notes"],
            )
        except ENTRY_ERRORS as exc:  # a damaged entry is a miss
            cache_note(progress, "export entry unusable, exporting again", exc)
    src = export()
    info["export"] = {"cache": "miss", "key": key}
    try:
        meta = {
            "name": src.name,
            "source": src.source,
            "kind": src.kind,
            "exporter": src.exporter,
            "parity": src.parity,
            "notes": src.notes,
        }
        meta = json.loads(json.dumps(meta, default=json_default))
        with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
            folder = save_model_dir(src.model, Path(d), src.reference_inputs, src.reference_outputs)
            entry = cache.put(key, "export", meta, trees={"export": folder})
            # Go on with the model as stored, so a later hit continues from the same bytes.
            src.model = load_model_dir(folder)[0]
        info["export"]["output"] = entry.objects["export"]
    except STORE_ERRORS as exc:
        cache_note(progress, "export not stored", exc)
    return src


def record_key(cache: Any, spec: str, opts: CompileOptions, exported: str) -> str:
    """The key of a ``--calibration task`` recording: the exported model (which drives the
    task) plus the spec, seed and threads (ONNX Runtime's numerics follow the thread count)."""
    from robopt_compile.store.cache import implementation_of

    config = {
        "implementation": implementation_of("robopt_compile.compile.tasks:record_calibration"),
        "spec": spec,
        "seed": opts.seed,
        "threads": opts.threads,
    }
    return cache.key("record", exported, config)


def cached_record(
    cache: Any,
    spec: str,
    opts: CompileOptions,
    info: dict[str, dict[str, Any]],
    dest: Path,
    record: Callable[[], None],
    progress: Progress,
) -> None:
    """``record()`` into ``dest`` through the cache (key: :func:`record_key`)."""
    exported = info.get("export", {}).get("output")
    if exported is None:  # the export was not cached: nothing to key the recording on
        record()
        return
    key = record_key(cache, spec, opts, exported)
    entry = cache.get(key)
    if entry is not None:
        try:
            shutil.copyfile(cache.path(entry, "calibration"), dest)
            info["record"] = {"cache": "hit", "key": key}
            return
        except ENTRY_ERRORS as exc:
            cache_note(progress, "calibration recording unusable, recording again", exc)
    record()
    info["record"] = {"cache": "miss", "key": key}
    try:
        cache.put(key, "record", {"spec": spec}, files={"calibration": dest})
    except STORE_ERRORS as exc:
        cache_note(progress, "calibration recording not stored", exc)


# What the transform stage runs (``module:attr``): part of its cache key, see
# cache.implementation_of.
TRANSFORM_IMPLEMENTATION = (
    "robopt_compile.compile.resolve:build_passes",
    "robopt_compile.passes.base:PassRunner.run",
    "robopt_compile.compile.compress:compress",
    "robopt_compile.compile.quantize:quantize",
    "robopt_compile.passes.quantize.base:QuantizePass.__init__",
    "robopt_compile.compile.accuracy:Evaluator.outputs",
)


def transform_config(
    opts: CompileOptions,
    backend: Any,
    profile: Any,
    needs_data: bool,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The transform stage's key configuration; raises ``cache.Uncacheable``.

    ``calibration``: the data's identity when it is known without the file (a cached
    ``--calibration task`` recording); otherwise it is hashed from ``opts``.
    """
    from dataclasses import fields

    from robopt_compile.store.cache import (
        Uncacheable,
        data_identity,
        implementation_of,
        profile_fingerprint,
    )

    q = opts.quant
    if opts.dump_ir is not None:
        raise Uncacheable("--dump-ir writes every pass's IR, so the passes must run")
    if q.metric:
        raise Uncacheable(f"the accuracy metric {q.metric} is user code that cannot be hashed")
    if q.closed_loop is not None:
        raise Uncacheable("a closed-loop accuracy guard (--eval with --max-drop) runs the task")
    if opts.compress.arch_guard is not None:
        raise Uncacheable("the architecture search's finalists run the task (--eval)")
    return {
        "implementation": implementation_of(*TRANSFORM_IMPLEMENTATION),
        "simplify": opts.simplify,
        "seed": opts.seed,
        # ``task`` follows from the calibration spec (keyed below): the pipeline sets it after
        # recording, the bundle lookup before, and both must give the same key.
        "compress": {
            f.name: getattr(opts.compress, f.name)
            for f in fields(opts.compress)
            if f.name not in ("task", "arch_guard", "search_budget_s")
        },
        "precision": opts.precision,
        "backend": backend.name,
        "profile": profile_fingerprint(profile),
        # the search's latency table is timed here, at these threads
        "arch_timing": _arch_timing(opts) if opts.compress.search_arch else None,
        "quant": {
            "calibration": (calibration or data_identity(q.calibration)) if needs_data else None,
            "method": q.method,
            "max_drop": q.max_drop,
            "strict": q.strict,
            "measure_sensitivity": q.measure_sensitivity,
            "block_size": q.block_size,
            "holdout_fraction": q.holdout_fraction,
            "seed": q.seed,
        },
    }


def _arch_timing(opts: CompileOptions) -> dict[str, Any]:
    from robopt_compile.bench.machine import machine_profile

    return {"threads": opts.threads or 1, "cpu": machine_profile()}


def cached_transform(
    cache: Any,
    opts: CompileOptions,
    backend: Any,
    profile: Any,
    src: Any,
    transform: Callable[[Progress], dict[str, Any]],
    info: dict[str, dict[str, Any]],
    progress: Progress,
    timings: dict[str, float],
) -> dict[str, Any]:
    """optimize + compress + quantize through the cache (key: export hash + pass config)."""
    from robopt_compile.store.cache import Uncacheable, sha256_tree

    needs_data = opts.compress.active or needs_quantization(backend.name, opts.precision)
    try:
        config = transform_config(opts, backend, profile, needs_data)
        exported = info.get("export", {}).get("output")
        if exported is None:  # the export was not cached: hash it as saved
            with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
                folder = save_model_dir(
                    src.model, Path(d), src.reference_inputs, src.reference_outputs
                )
                exported = sha256_tree(folder)
        key = cache.key("transform", exported, config)
    except Uncacheable as exc:
        info["transform"] = {"cache": "off", "reason": str(exc)}
        return transform(progress)
    entry = cache.get(key)
    if entry is not None:
        try:
            with (
                stage(progress, "transform", timings),
                tempfile.TemporaryDirectory(prefix="robopt-cache-") as d,
            ):
                model, ins, outs = load_model_dir(cache.materialize(entry, "transform", Path(d)))
            m = entry.meta
            src.reference_inputs, src.reference_outputs = ins, outs
            for note in m["notes"]:
                progress(note, "note", 0.0)
            info["transform"] = {"cache": "hit", "key": key}
            return {**{k: m[k] for k in m if k not in ("notes", "_trees")}, "model": model}
        except ENTRY_ERRORS as exc:
            cache_note(progress, "transform entry unusable, running the passes", exc)
    notes: list[str] = []

    def recording(stage: str, event: str, seconds: float) -> None:
        if event == "note":
            notes.append(stage)
        progress(stage, event, seconds)

    done = transform(recording)
    info["transform"] = {"cache": "miss", "key": key}
    try:
        meta = {k: v for k, v in done.items() if k != "model"}
        meta["notes"] = notes
        meta = json.loads(json.dumps(meta, default=json_default))
        with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
            folder = save_model_dir(
                done["model"], Path(d), src.reference_inputs, src.reference_outputs
            )
            cache.put(key, "transform", meta, trees={"transform": folder})
            # As stored, so the engine built now is the one a later hit builds (a save after a
            # load can list a few more shapes than the first save of a pass's output).
            done["model"] = load_model_dir(folder)[0]
    except STORE_ERRORS as exc:
        cache_note(progress, "transform not stored", exc)
    return done


def cached_build(
    cache: Any,
    model_files: list[Path],
    backend: Any,
    profile: Any,
    build_opts: Any,
    tmp: Path,
    info: dict[str, dict[str, Any]],
    progress: Progress,
) -> tuple[Any, Callable[[], None] | None]:
    """``backend.build`` through the cache (key: the model files + backend, profile, options).

    Returns the artifact and, on a miss, a function that stores it (called after the engine
    passed its check).
    """
    from robopt_compile.store.cache import implementation, profile_fingerprint
    from robopt_compile.targets import Artifact

    engine = tmp / "engine"
    config = {
        "implementation": implementation(type(backend), type(backend).build),
        "backend": backend.name,
        "dla_core": backend.options.get("dla_core"),
        "profile": profile_fingerprint(profile),
        "options": build_opts.key(),
    }
    key = cache.key("build", json_sha([[p.name, sha256_file(p)] for p in model_files]), config)
    entry = cache.get(key)
    if entry is not None:
        try:
            if engine.exists():
                shutil.rmtree(engine)
            cache.materialize(entry, "engine", engine)
            info["build"] = {"cache": "hit", "key": key}
            return Artifact.from_json(entry.meta["artifact"], engine), None
        except ENTRY_ERRORS as exc:
            shutil.rmtree(engine, ignore_errors=True)
            cache_note(progress, "build entry unusable, building again", exc)
    artifact = backend.build(tmp / "model.onnx", profile, build_opts, engine)
    info["build"] = {"cache": "miss", "key": key}

    def put() -> None:
        try:
            meta = json.loads(json.dumps({"artifact": artifact.to_json()}, default=json_default))
            cache.put(key, "build", meta, trees={"engine": Path(artifact.root)})
        except STORE_ERRORS as exc:
            cache_note(progress, "engine not stored", exc)

    return artifact, put


def cache_states(info: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The report's cache states: the three stages, and whether the whole bundle is kept
    for an unchanged rebuild (``bundle``: "miss" when it will be stored)."""
    if not info:
        return {k: {"cache": "off"} for k in (*CACHED_STAGES, "bundle")}
    states = {k: info[k] for k in (*REPORTED_STAGES, "bundle") if k in info}
    off = [s for s in CACHED_STAGES if states.get(s, {}).get("cache") not in ("hit", "miss")]
    if off and states.get("bundle", {}).get("cache") == "miss":
        states["bundle"] = {"cache": "off", "reason": f"the {off[0]} stage is not cached"}
    return states
