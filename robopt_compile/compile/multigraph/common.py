"""What the bundle writers share: the manifest's common fields (every bundle), and for the
multi-graph compilers (vla.py, diffusion.py) the backend check, saving and
building each graph, and the manifest's graph entries (docs/BUNDLE.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.store.cache import KEY_ERRORS, STORE_ERRORS


def multigraph_backends() -> list[str]:
    """The backends that run multi-graph bundles (``Backend.multigraph``)."""
    from robopt_compile.targets import TARGETS, get_backend

    return [n for n in TARGETS if get_backend(n).multigraph]


def check_backend(backend: Any, what: str) -> None:
    """Multi-graph bundles are built with a backend that runs them; else one InputError."""
    if not backend.multigraph:
        names = multigraph_backends()
        raise InputError(
            f"a {what} bundle is built with {' or '.join(names)} in this version, not "
            f"{backend.name!r}; pass " + " or ".join(f"-b {n}" for n in names) + "."
        )


# --activations -> OpenVINO's inference precision hint
ACTIVATIONS = {"fp32": "f32", "bf16": "bf16"}


def check_activations(opts: Any, backend: Any, profile: Any, precision_bf16: bool) -> str | None:
    """The OpenVINO hint the graphs compute in: ``--activations`` (or bf16 for ``--precision
    bf16``), refused with one line on another backend or a target without bf16."""
    want = opts.activations or ("bf16" if precision_bf16 else None)
    if want is None:
        return None
    if want not in ACTIVATIONS:
        raise InputError(f"--activations must be fp32 or bf16, not {want!r}.")
    if backend.name != "openvino":
        raise InputError(
            f"--activations {want} sets OpenVINO's inference precision; {backend.name} computes "
            "in the graph's own precision: pass -b openvino or drop --activations."
        )
    if want == "bf16" and "bf16" not in profile.precisions:
        raise InputError(
            f"target {profile.name!r} has no bf16 arithmetic (it supports "
            f"{list(profile.precisions)}); drop --activations bf16."
        )
    return ACTIVATIONS[want]


@dataclass
class BuiltGraph:
    name: str
    files: list[Path]  # the saved model.onnx (and its .data)
    artifact: Any


def build_graphs(
    graphs: Mapping[str, Any], precisions: Mapping[str, str], backend: Any, profile: Any,
    threads: int | None, root: Path, activations: str | None = None,
) -> list[BuiltGraph]:  # fmt: skip
    """Save each graph of ``precisions`` (in its order) as ``graphs/NAME/model.onnx`` under
    ``root`` and build its engine in ``graphs/NAME/engine`` at its own precision (OpenVINO:
    activations in ``activations`` when given, see :func:`check_activations`)."""
    from robopt_compile import ir as rir
    from robopt_compile.targets import BuildOptions

    built = []
    for name in precisions:  # in the order the driver first runs them
        gdir = root / "graphs" / name
        files = rir.save(graphs[name], gdir / "model.onnx")
        options = BuildOptions(precision=precisions[name], threads=threads,
                               activations=activations)  # fmt: skip
        art = backend.build(gdir / "model.onnx", profile, options, gdir / "engine")
        built.append(BuiltGraph(name, files, art))
    return built


def graph_entries(
    built: Sequence[BuiltGraph], graphs: Mapping[str, Any], precisions: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The manifest's ``graphs`` list."""
    from robopt_compile import ir as rir

    return [
        {
            "name": b.name,
            "backend": b.artifact.backend,  # llm-decode may run on another runtime
            "precision": precisions[b.name],
            "model_files": [f"graphs/{b.name}/{f.name}" for f in b.files],
            "engine": {"dir": f"graphs/{b.name}/engine", **b.artifact.to_json()},
            "inputs": [s.to_json() for s in rir.input_specs(graphs[b.name])],
            "outputs": [s.to_json() for s in rir.output_specs(graphs[b.name])],
            "weight_bytes": rir.weight_bytes(graphs[b.name]),
        }
        for b in built
    ]


def manifest_common(
    model: dict[str, Any], profile: Any, backend: Any, precision: str, requested: str,
    threads: int | None, activations: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The fields every bundle manifest starts with (``files`` is added last); multi-graph
    bundles pass the precision their engines compute in (``build.activations``)."""
    from robopt_compile.compile import bundle

    return {
        "schema_version": bundle.SCHEMA_VERSION,
        "producer": bundle.PRODUCER,
        "robopt_version": bundle.tool_versions()["robopt"],
        "created_utc": bundle.utc_now(),
        "model": model,
        "target": {
            "profile": profile.name,
            "arch": profile.arch,
            "description": profile.description,
        },
        "backend": backend.name,
        "precision": precision,
        "requested_precision": requested,
        "build": {"threads": threads, **({"activations": activations} if activations else {})},
        "tool_versions": bundle.tool_versions(),
    }


def seal(tmp: Path, manifest: dict[str, Any]) -> None:
    """Hash every file written so far into the manifest and write it (the bundle's last file
    before the reports)."""
    from robopt_compile.compile import bundle

    manifest["files"] = bundle.hash_tree(tmp)
    bundle.write_json(tmp / bundle.MANIFEST, manifest)


# What a restored multi-graph bundle carries over from the build that made it.
REUSED = ["graph checks", "action fidelity", "report"]


def multigraph_key(
    cache: Any, kind: str, source: str, opts: Any, profile: Any, backend: Any
) -> str:  # fmt: skip
    """The build-cache key of a whole multi-graph bundle: the source (zoo name, or a model
    folder by its bytes), every option the graphs, checks and report depend on, the backend
    and profile (robopt's code and the tool versions are in every key). Raises
    ``cache.Uncacheable`` for what cannot be hashed (a ``module:iterator`` calibration)."""
    from importlib.metadata import PackageNotFoundError, version

    from robopt_compile.jsonutil import json_sha
    from robopt_compile.store.cache import (
        Uncacheable,
        data_identity,
        implementation,
        plain_data,
        profile_fingerprint,
        sha256_tree,
    )

    if opts.eval is not None:
        raise Uncacheable("--eval runs a task evaluation every time")
    if source.startswith("zoo:"):
        ident: dict[str, Any] = {"kind": "zoo", "zoo": source.removeprefix("zoo:")}
    else:
        ident = {"kind": "folder", "sha256": sha256_tree(Path(source))}
    try:
        mpl = version("matplotlib")
    except PackageNotFoundError:
        mpl = None
    config = {
        "kind": kind,
        "implementation": implementation(type(backend), type(backend).build),
        "backend": backend.name,
        "profile": profile_fingerprint(profile),
        "profile_figures": plain_data(profile),
        "options": {
            "precision": opts.precision,
            "activations": opts.activations,
            "decode_backend": opts.decode_backend,
            "threads": opts.threads,
            "seed": opts.seed,
            "max_drop": opts.quant.max_drop,
            # A task spec records the zoo model's own episodes on fixed seeds: its text (with
            # the model and robopt's code, both in the key) names the data.
            "calibration": opts.quant.calibration
            if (opts.quant.calibration or "").startswith("task")
            else data_identity(opts.quant.calibration),
            "hwprofile": str(opts.hwprofile) if opts.hwprofile else None,
        },
        "matplotlib": mpl,  # draws the report's figures
    }
    return cache.key(f"{kind}-bundle", json_sha(ident), config)


def compile_cached(
    kind: str, source: str, out: Path, opts: Any, profile: Any, backend: Any, force: bool,
    progress: Callable[[str, str, float], None], timings: dict[str, float],
    build: Callable[[], Any],
) -> Any:  # fmt: skip
    """``build()`` (a multi-graph compile) through the build cache: an unchanged rebuild
    restores the stored, checked bundle (hashes verified) instead of exporting, compressing,
    building and checking again; a new bundle is stored for next time, unless it is larger
    than ROBOPT_STORE_BUNDLE_MAX_MB (default 512; openvla-mini at fp32 is about 1 GB). The
    cache never fails a compile: a problem is one warning and the full build."""
    from robopt_compile.compile.reuse import reuse_bundle
    from robopt_compile.compile.session import bundle_max_bytes, tree_bytes
    from robopt_compile.compile.stages import cache_note, stage
    from robopt_compile.store.cache import BuildCache

    cache = BuildCache.open(lambda m: progress(m, "note", 0.0)) if opts.cache else None
    if cache is None:
        return build()
    try:
        try:
            key = multigraph_key(cache, kind, source, opts, profile, backend)
        except KEY_ERRORS as exc:  # an unhashable or unreadable folder: the build reports it
            cache_note(progress, "bundle not cached", exc)
            return build()
        if cache.peek(key):
            with stage(progress, "reuse", timings):
                reused = reuse_bundle(cache, (key, {}), out, force, timings)
            if reused is not None:
                return reused
        result = build()
        try:
            if tree_bytes(out) > bundle_max_bytes():  # not copied into the store (as sessions)
                return result
            meta = {"created_utc": result.manifest.get("created_utc"), "stages": {},
                    "reused": REUSED}  # fmt: skip
            cache.put(key, "bundle", meta, trees={"bundle": out})
        except STORE_ERRORS as exc:
            cache_note(progress, "bundle not stored for reuse", exc)
        return result
    finally:
        cache.close()
