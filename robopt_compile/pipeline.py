"""The compile pipeline: source -> checked ONNX -> passes -> engine -> checked bundle.

This is the session runner the CLI drives. Each stage reports to a ``progress`` callback so the
CLI can draw progress on a terminal and stay silent under ``--json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopt_compile.compress import CompressOptions
from robopt_compile.errors import BackendUnavailableError, CheckFailedError, InputError
from robopt_compile.quantize import QuantOptions, needs_quantization

Progress = Callable[[str, str, float], None]  # (stage, "start" | "done", seconds)

# The engine must reproduce the source model's outputs this closely on the reference inputs.
ENGINE_TOLERANCE = {
    "fp32": {"cosine_min": 0.9999, "atol": 1e-3, "rtol": 1e-3},
    # bf16 keeps 8 mantissa bits: ~0.4% relative error per op, accumulating over layers.
    "bf16": {"cosine_min": 0.995, "atol": 5e-2, "rtol": 5e-2},
}


@dataclass(frozen=True)
class CompileOptions:
    target: str = "host"
    hwprofile: Path | None = None  # a user's TOML file; overrides ``target``
    backend: str | None = None  # None: the profile's first available backend
    precision: str = "fp32"
    threads: int | None = None  # None: the runtime's default (all cores)
    dynamic_batch: bool = False
    opset: int | None = None
    simplify: str = "default"  # a SimplifyPass tool name, "default" or "none"
    dump_ir: Path | None = None
    check_parity: bool = True
    seed: int = 0
    reference_inputs: Path | None = None  # .npz of real samples keyed by input name
    quant: QuantOptions = field(default_factory=QuantOptions)
    compress: CompressOptions = field(default_factory=CompressOptions)
    tune_trials: int | None = None  # TVM MetaSchedule budget
    max_batch: int = 16  # upper bound of a dynamic batch (TensorRT optimization profile)
    dla_core: int | None = None  # TensorRT: run on this DLA core, GPU fallback


@dataclass
class CompileResult:
    out: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)


def _noop(stage: str, event: str, seconds: float) -> None:
    pass


@contextmanager
def _stage(progress: Progress, name: str, timings: dict[str, float]) -> Iterator[None]:
    progress(name, "start", 0.0)
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t
    progress(name, "done", timings[name])


def resolve_profile(opts: CompileOptions):
    from robopt_compile.hwprofiles import load_profile, load_profile_file

    if opts.hwprofile is not None:
        return load_profile_file(opts.hwprofile)
    return load_profile(opts.target)


def target_status(profile: Any, backend_name: str) -> dict[str, Any]:
    """Whether ``backend_name`` can build for ``profile`` here, and run (benchmark) here."""
    import platform

    from robopt_compile.targets import TARGETS, get_backend

    if backend_name not in TARGETS:
        return {"build": "no", "run": False, "reason": "not built into this robopt version"}
    backend = get_backend(backend_name)
    ok, why = backend.availability()
    host_arch = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    if not ok:
        if getattr(backend, "builds_without_runtime", False):
            return {
                "build": "deferred",
                "run": False,
                "reason": f"{why}; the bundle carries a deferred build for the device",
            }
        return {"build": "no", "run": False, "reason": why}
    if profile.arch != host_arch:
        return {
            "build": "yes",
            "run": False,
            "reason": f"{profile.arch} engine, this machine is {host_arch}",
        }
    runs, reason = backend.runs_here(profile)
    if not runs:
        return {"build": "yes", "run": False, "reason": reason}
    return {"build": "yes", "run": True, "reason": why}  # fmt: skip


def resolve_backend(profile: Any, requested: str | None):
    """The requested backend (checked against the profile) or the first available one."""
    from robopt_compile.errors import UnknownNameError
    from robopt_compile.targets import TARGETS, get_backend

    if requested is not None:
        if requested not in TARGETS:
            raise UnknownNameError("backend", requested, list(TARGETS))
        if requested not in profile.backends:
            raise InputError(
                f"target {profile.name!r} does not support backend {requested!r}; "
                f"it supports {list(profile.backends)}."
            )
        backend = get_backend(requested)
        if not getattr(backend, "builds_without_runtime", False):
            backend.require()
        return backend
    reasons = []
    for name in profile.backends:
        if name not in TARGETS:
            reasons.append(f"{name}: not built into this robopt version")
            continue
        backend = get_backend(name)
        ok, why = backend.availability()
        if ok or getattr(backend, "builds_without_runtime", False):
            return backend
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(
        f"no backend for target {profile.name!r} can run here ({'; '.join(reasons)})."
    )


# The hardware number format each robopt precision computes in (what a profile lists).
HARDWARE_PRECISION = {
    "fp32": "fp32",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8",
    "int8-dynamic": "int8",
    "int8-weight": "fp32",  # weights stored in int8/int4, dequantized to fp32 for compute
    "int4-weight": "fp32",
}


def check_precision(profile: Any, backend: Any, precision: str) -> None:
    if precision not in HARDWARE_PRECISION:
        from robopt_compile.errors import UnknownNameError

        raise UnknownNameError("precision", precision, list(HARDWARE_PRECISION))
    if HARDWARE_PRECISION[precision] not in profile.precisions:
        raise InputError(
            f"target {profile.name!r} does not support precision {precision!r}; "
            f"it supports {list(profile.precisions)}."
        )
    if precision not in backend.precisions:
        raise InputError(
            f"backend {backend.name!r} does not build {precision!r} in this robopt version; "
            f"it builds {list(backend.precisions)}."
        )


def check_options(opts: CompileOptions) -> None:
    """Options that would otherwise fail only after the (slow) export."""
    from robopt_compile.passes.simplify.simplify import TOOLS

    if opts.threads is not None and opts.threads < 1:
        raise InputError("--threads must be >= 1.")
    if opts.simplify not in ("default", *TOOLS):
        from robopt_compile.errors import UnknownNameError

        raise UnknownNameError("simplify tool", opts.simplify, ["default", *TOOLS])
    if opts.compress.active or opts.compress.distill or opts.compress.prune_layers:
        from robopt_compile.compress import validate

        validate(opts.compress, opts.quant.calibration is not None)
    if opts.dump_ir is not None and Path(opts.dump_ir).exists() and not Path(opts.dump_ir).is_dir():
        raise InputError(f"--dump-ir {opts.dump_ir} is a file; give a folder.")


def build_passes(opts: CompileOptions) -> list[Any]:
    """The transform passes of the plan (analysis runs separately, after them)."""
    from robopt_compile.passes import get_pass_class

    passes = []
    if opts.simplify != "none":
        cls = get_pass_class("simplify")
        tool = {} if opts.simplify == "default" else {"tool": opts.simplify}
        passes.append(cls(seed=opts.seed, **tool))
    return passes


def compile_model(
    source: str, out: Path, opts: CompileOptions, *, force: bool = False, progress: Progress = _noop
) -> CompileResult:
    """Compile ``source`` for ``opts.target`` into a bundle at ``out``."""
    from robopt_compile import bundle

    timings: dict[str, float] = {}
    # Validate everything cheap before the slow work.
    with _stage(progress, "resolve", timings):
        profile = resolve_profile(opts)
        backend = resolve_backend(profile, opts.backend)
        if opts.dla_core is not None:
            if backend.name != "tensorrt":
                raise InputError(f"--dla-core needs the tensorrt backend, not {backend.name!r}.")
            backend.dla_core = opts.dla_core
        check_precision(profile, backend, opts.precision)
        bundle.check_output_dir(out, force)
        check_options(opts)

    from robopt_compile import analysis
    from robopt_compile import ir as rir
    from robopt_compile.frontend import load_source
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner, TimingInstrument
    from robopt_compile.targets import BuildOptions

    with _stage(progress, "export", timings):
        src = load_source(
            source,
            dynamic_batch=opts.dynamic_batch,
            opset=opts.opset,
            seed=opts.seed,
            check_parity=opts.check_parity,
            reference_inputs=opts.reference_inputs,
        )

    timing = TimingInstrument()
    instruments: list[Any] = [timing]
    if opts.dump_ir is not None:
        instruments.append(DumpIRInstrument(Path(opts.dump_ir)))
    runner = PassRunner(instruments)
    with _stage(progress, "optimize", timings):
        passes = build_passes(opts)
        model = runner.run(passes, src.model)
    simplify_report = next(
        (getattr(p, "report", None) for p in passes if hasattr(p, "report")), None
    )

    compress_report = None
    if opts.compress.active:
        from robopt_compile.compress import compress

        with _stage(progress, "compress", timings):
            cres = compress(model, opts.compress, opts.quant, opts.threads, runner, progress)
        compress_report = cres.report
        if cres.compressed:
            model = cres.model
            # The engine must reproduce the compressed model; its cost against the source is
            # in the report (held-out figures), not in the engine check.
            src.reference_inputs = cres.reference_inputs
            src.reference_outputs = cres.reference_outputs

    precision = opts.precision
    tol = ENGINE_TOLERANCE.get(precision, ENGINE_TOLERANCE["fp32"])
    quant_report = None
    quant_data_used = opts.compress.active
    if (
        not needs_quantization(backend.name, precision)
        and opts.quant.calibration
        and not quant_data_used
    ):
        progress(f"--calibration is not used at --precision {precision}", "note", 0.0)
    if needs_quantization(backend.name, precision):
        from robopt_compile.quantize import quantize

        with _stage(progress, "quantize", timings):
            qres = quantize(model, backend, profile, precision, opts.threads, opts.quant, runner)
        quant_report = qres.report
        precision = qres.precision
        if quant_report.get("data_note"):
            progress(quant_report["data_note"], "note", 0.0)
        if not quant_report.get("rolled_back"):
            model = qres.model
            # The engine is judged on a held-out sample against the fp32 model, with the
            # tolerance its measured quality earned (see quantize.engine_tolerance).
            src.reference_inputs = qres.reference_inputs
            src.reference_outputs = qres.reference_outputs
            tol = qres.tolerance
        if quant_report.get("rolled_back"):
            progress(f"rolled back to fp32: {quant_report['rollback_reason']}", "note", 0.0)

    with _stage(progress, "analyze", timings):
        facts = analysis.analyze(
            model,
            profile,
            precision=HARDWARE_PRECISION[precision],
            threads=opts.threads or profile.cpu_cores,
        )

    with bundle.staged_output(out, force) as tmp:
        with _stage(progress, "build", timings):
            model_files = rir.save(model, tmp / "model.onnx")
            dynamic = any(
                s.shape and not isinstance(s.shape[0], int) for s in rir.input_specs(model)
            )
            artifact = backend.build(
                tmp / "model.onnx",
                profile,
                BuildOptions(
                    precision=precision,
                    threads=opts.threads,
                    tune_trials=opts.tune_trials,
                    dynamic_batch=(1, 1, opts.max_batch) if dynamic else None,
                ),
                tmp / "engine",
            )
        with _stage(progress, "verify", timings):
            if runs_here(artifact):
                engine_fig = verify_engine(backend, artifact, src, opts.threads, tol)
            else:
                engine_fig = verify_onnx(tmp / "model.onnx", src, opts.threads, tol, artifact)
                progress(engine_fig["note"], "note", 0.0)
            if not engine_fig["passed"]:
                bad = engine_fig["outputs"][engine_fig["output"]]
                raise CheckFailedError(
                    f"the {backend.name} engine does not reproduce the source model on output "
                    f"{engine_fig['output']!r}: {bad['reason']} (tolerance {tol})."
                )
        engine_json = {"dir": "engine", **artifact.to_json()}
        if _stores_compressed(compress_report):
            from robopt_compile.bench.compress import compress_engine

            # Unstructured sparsity is a size optimization: the zeros compress, the kernels
            # stay dense. robopt-bench unpacks the engine once into its cache.
            compressed = compress_engine(tmp / "engine")
            engine_json["files"] = sorted(compressed["files"])
            engine_json["compressed"] = compressed
        bundle.save_npz(tmp / "reference" / "inputs.npz", src.reference_inputs)
        bundle.save_npz(tmp / "reference" / "outputs.npz", src.reference_outputs)
        bundle.write_json(tmp / "analysis.json", facts)
        report = {
            "source": src.source,
            "exporter": src.exporter,
            "notes": src.notes,
            "passes": [r.to_json() for r in timing.records],
            "simplify": simplify_report,
            "compression": compress_report,
            "quantization": quant_report,
            "stage_seconds": {k: round(v, 4) for k, v in timings.items()},
            "summary": facts.get("summary", {}),
        }
        bundle.write_json(tmp / "report.json", report)
        parity = dict(src.parity)
        if simplify_report and simplify_report.get("parity"):
            parity["simplify"] = simplify_report["parity"]
        parity["engine"] = engine_fig
        manifest = {
            "schema_version": bundle.SCHEMA_VERSION,
            "robopt_version": bundle.tool_versions()["robopt"],
            "created_utc": bundle.utc_now(),
            "model": {"name": src.name, "source": src.source, "source_kind": src.kind},
            "inputs": [s.to_json() for s in rir.input_specs(model)],
            "outputs": [s.to_json() for s in rir.output_specs(model)],
            "target": {
                "profile": profile.name,
                "arch": profile.arch,
                "description": profile.description,
            },
            "backend": backend.name,
            "precision": precision,
            "requested_precision": opts.precision,
            "engine": engine_json,
            "files": bundle.hash_tree(tmp),
            "tool_versions": bundle.tool_versions(),
            "parity": parity,
            "reference": {
                "inputs": "reference/inputs.npz",
                "outputs": "reference/outputs.npz",
                "tolerance": tol,
            },
            "build": {
                "threads": opts.threads,
                # from the model itself: a .pt2 or .onnx may carry a symbolic batch dim
                "dynamic_batch": any(
                    s.shape and not isinstance(s.shape[0], int) for s in rir.input_specs(model)
                ),
                "opset": _opset(model),
                # "2:4" after --prune 2:4: a TensorRT build enables SPARSE_WEIGHTS from this
                "sparsity": model.metadata_props.get("robopt.sparsity"),
                "model_files": [p.name for p in model_files],
            },
        }
        bundle.write_json(tmp / bundle.MANIFEST, manifest)
    return CompileResult(out=out, manifest=manifest, report=report, facts=facts)


def _stores_compressed(compress_report: dict[str, Any] | None) -> bool:
    steps = (compress_report or {}).get("steps", [])
    return any(s["pass"] == "prune-magnitude" and not s["rolled_back"] for s in steps)


def _opset(model: Any) -> int | None:
    return model.opset_imports.get("")


def runs_here(artifact: Any) -> bool:
    """False for an engine that cannot run on the build machine: a deferred TensorRT build or
    a library cross-compiled for another CPU."""
    cfg = artifact.config
    return not (cfg.get("deferred") or cfg.get("cross_compiled"))


def verify_onnx(
    path: Path, src: Any, threads: int | None, tol: dict[str, float], artifact: Any
) -> dict[str, Any]:
    """The bundle's ONNX judged in ONNX Runtime when its engine cannot run here."""
    from robopt_compile.numerics import judge, run_onnx

    verdict = judge(src.reference_outputs, run_onnx(path, src.reference_inputs, threads), tol)
    why = artifact.config.get("deferred_reason") or (
        "deferred build" if artifact.config.get("deferred") else "cross-compiled engine"
    )
    verdict["inputs"] = "bundle reference inputs (not used during export)"
    verdict["checked_in"] = "onnxruntime"
    verdict["engine_checked"] = False
    verdict["note"] = (
        f"the {artifact.backend} engine cannot run here ({why}): the bundle's ONNX was checked "
        "in ONNX Runtime instead; robopt-bench checks the engine on the device"
    )
    return verdict


def verify_engine(
    backend: Any, artifact: Any, src: Any, threads: int | None, tol: dict[str, float]
) -> dict[str, Any]:
    """Run the built engine on the reference inputs and judge it against the source's outputs.

    Same rule (``numerics.judge``) and tolerance that ``robopt-bench`` applies on the robot.
    """
    from robopt_compile.numerics import judge

    with backend.runner(artifact, threads=threads) as r:
        got = r.infer(src.reference_inputs)
    verdict = judge(src.reference_outputs, got, tol)
    verdict["inputs"] = "bundle reference inputs (not used during export)"
    return verdict
