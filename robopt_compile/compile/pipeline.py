"""The compile pipeline: source -> checked ONNX -> passes -> engine -> checked bundle.

This is the session runner the CLI drives. Each stage reports to a ``progress`` callback so the
CLI can draw progress on a terminal and stay silent under ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robopt_compile.compile.compress import CompressOptions
from robopt_compile.compile.quantize import QuantOptions, needs_quantization
from robopt_compile.errors import (
    BackendUnavailableError,
    CheckFailedError,
    InputError,
    UnknownNameError,
)
from robopt_compile.jsonutil import json_default, json_sha, sha256_file
from robopt_compile.precision import PRECISIONS, get_precision

Progress = Callable[[str, str, float], None]  # (stage, "start" | "done", seconds)


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
    eval: Any = None  # robopt_compile.evaluate.closed_loop.EvalSpec: closed-loop task evaluation
    eval_criteria: Any = None  # robopt_compile.evaluate.closed_loop.Criteria for that evaluation
    cache: bool = True  # the build cache in the store (robopt_compile/store/cache.py)
    # Multi-graph bundles on OpenVINO: compute activations in "fp32" or "bf16" (None: the
    # precision's own); see graph_bundle.check_activations.
    activations: str | None = None
    # VLA bundles: the runtime of the language model's decode steps when it is not --backend's
    # (an ``llm-decode`` graph; see vla_compile.validate).
    decode_backend: str | None = None


@dataclass
class CompileResult:
    out: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # closed-loop figures (``--eval``)


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
        if backend.builds_without_runtime:
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
        if not backend.builds_without_runtime:
            backend.require()
        return backend
    reasons = []
    for name in profile.backends:
        if name not in TARGETS:
            reasons.append(f"{name}: not built into this robopt version")
            continue
        backend = get_backend(name)
        ok, why = backend.availability()
        if ok or backend.builds_without_runtime:
            return backend
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(
        f"no backend for target {profile.name!r} can run here ({'; '.join(reasons)})."
    )


def check_precision(profile: Any, backend: Any, precision: str) -> None:
    if get_precision(precision).compute not in profile.precisions:
        raise InputError(
            f"target {profile.name!r} does not support precision {precision!r}; "
            f"it supports {list(profile.precisions)}."
        )
    backend.check_precision(precision)


def check_options(opts: CompileOptions) -> None:
    """Options that would otherwise fail only after the (slow) export."""
    if opts.threads is not None and opts.threads < 1:
        raise InputError("--threads must be >= 1.")
    if opts.simplify not in ("default", "none"):  # the tool table imports onnx-ir: only then
        from robopt_compile.passes.simplify.simplify import TOOLS

        if opts.simplify not in TOOLS:
            raise UnknownNameError("simplify tool", opts.simplify, ["default", *TOOLS])
    if opts.compress.active or opts.compress.distill or opts.compress.prune_layers:
        from robopt_compile.compile.compress import validate

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
    from robopt_compile.compile import bundle

    timings: dict[str, float] = {}
    # Validate everything cheap before the slow work.
    with _stage(progress, "resolve", timings):
        profile = resolve_profile(opts)
        backend = resolve_backend(profile, opts.backend)
        if opts.dla_core is not None:
            backend.configure(dla_core=opts.dla_core)
        check_precision(profile, backend, opts.precision)
        bundle.check_output_dir(out, force)
        check_options(opts)
        eval_task = resolve_eval_task(opts.eval, source) if opts.eval is not None else None

    from robopt_compile.zoo import is_folder_source, zoo_kind

    kind = zoo_kind(source)
    if kind is None and is_folder_source(source):  # a local Hugging Face-style folder
        kind = "vla"
    if kind in ("vla", "diffusion"):  # multi-graph bundles: graphs + the loop that runs them
        from robopt_compile.multigraph.common import compile_cached

        if kind == "vla":  # vision, embed and llm graphs + greedy action decoding
            from robopt_compile.multigraph import vla as mod
        else:  # encoder and denoiser graphs + the DDIM loop
            from robopt_compile.multigraph import diffusion as mod
        if kind == "vla":  # without -b: the combination measured fastest for a VLA
            opts, backend, note = mod.default_recipe(opts, profile, backend)
            if note:
                progress(note, "info", 0.0)
        mod.validate(opts, profile, backend)  # refusals first, cached or not
        compile_fn = mod.compile_vla if kind == "vla" else mod.compile_diffusion
        return compile_cached(
            kind, source, out, opts, profile, backend, force, progress, timings,
            lambda: compile_fn(source, out, opts, profile, backend, force, progress, timings),
        )  # fmt: skip
    if opts.activations is not None:
        raise InputError(
            "--activations is for multi-graph bundles (VLA, diffusion policy); for a "
            "single-graph policy on OpenVINO use --precision bf16."
        )
    if opts.decode_backend is not None:
        raise InputError(
            "--decode-backend is for VLA bundles (a language model decoding action tokens); "
            "drop it for a single-graph policy."
        )

    cache = None
    if opts.cache:
        from robopt_compile.store.cache import BuildCache

        cache = BuildCache.open(lambda m: progress(m, "note", 0.0))
    if cache is not None and eval_task is None:
        # An unchanged rebuild: the whole bundle of the identical earlier build, checked.
        try:
            found = _bundle_key_for(cache, source, opts, profile, backend)
            if found is not None:
                with _stage(progress, "reuse", timings):
                    reused = reuse_bundle(cache, found, out, force, timings)
                if reused is not None:
                    cache.close()
                    built = reused.report["cache"]["bundle"].get("built_utc") or "earlier"
                    progress(f"unchanged rebuild: the bundle built {built} was restored from "
                             "the build cache and checked (--no-cache builds afresh)",
                             "note", 0.0)  # fmt: skip
                    return reused
                progress("build cache: the stored bundle is damaged; building again", "note", 0.0)
        except BaseException:
            cache.close()
            raise

    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import load_source

    cache_info: dict[str, dict[str, Any]] = {}
    if cache is not None:
        cache_info["bundle"] = (
            {"cache": "miss"}
            if eval_task is None
            else {"cache": "off", "reason": "--eval adds closed-loop results to the bundle"}
        )

    def export() -> Any:
        return load_source(
            source,
            dynamic_batch=opts.dynamic_batch,
            opset=opts.opset,
            seed=opts.seed,
            check_parity=opts.check_parity,
            reference_inputs=opts.reference_inputs,
        )

    with _stage(progress, "export", timings):
        if cache is None:
            src = export()
        else:
            src = _cached_export(cache, source, opts, export, cache_info, progress)

    calib_tmp: Path | None = None
    if (opts.quant.calibration or "").split(":")[0] == "task":
        # Calibration data recorded from the fp32 policy driving its own task, on seeds far
        # from the evaluation seeds, so accuracy is never judged on what it calibrated on.
        with _stage(progress, "record", timings):
            calib_tmp = Path(tempfile.mkdtemp(prefix="robopt-calib-")) / "task.npz"
            spec = opts.quant.calibration

            def record() -> None:
                record_calibration(spec, source, src.model, calib_tmp, opts)

            if cache is None:
                record()
            else:
                _cached_record(cache, spec, opts, cache_info, calib_tmp, record, progress)
        requested = opts  # the bundle's cache key names the spec, not the temporary file
        opts = replace(opts, quant=replace(opts.quant, calibration=str(calib_tmp)))
    else:
        requested = opts
    eval_ref: Path | None = None
    if eval_task is not None:
        # The fp32 model as exported, before any pass: the closed-loop reference.
        eval_ref = Path(tempfile.mkdtemp(prefix="robopt-evalref-")) / "reference.onnx"
        rir.save(src.model, eval_ref)
        if opts.quant.max_drop is not None and needs_quantization(backend.name, opts.precision):
            from robopt_compile.evaluate.closed_loop import ClosedLoopGuard

            # An explicit bound with --eval: the quantizer is judged by the task itself.
            opts = replace(
                opts, quant=replace(opts.quant, closed_loop=ClosedLoopGuard(eval_task, opts.eval))
            )
    evaluation: dict[str, Any] = {}

    def finish(staged: Path) -> None:
        """Evaluation and reports, written into the staged bundle before it is published."""
        if eval_task is not None:
            assert eval_ref is not None
            with _stage(progress, "evaluate", timings):
                evaluation.update(
                    evaluate_bundle(
                        staged, eval_task, opts, eval_ref, progress=progress, published=out
                    )
                )
        with _stage(progress, "report", timings):
            write_report(staged, progress, out)

    try:
        result = _compile_rest(
            source, out, opts, force, progress, timings, profile, backend, src, cache, cache_info,
            finish,
        )  # fmt: skip
        if evaluation:
            result.evaluation = evaluation
        if cache is not None and cache_info["bundle"]["cache"] == "miss":
            store_bundle(cache, out, requested, profile, backend, cache_info, progress)
        return result
    finally:
        if cache is not None:
            cache.close()
        if opts.quant.closed_loop is not None:
            opts.quant.closed_loop.close()
        for tmp in (eval_ref, calib_tmp):
            if tmp is not None:
                shutil.rmtree(tmp.parent, ignore_errors=True)


CALIBRATION_SEED_OFFSET = 1_000_000  # task calibration episodes start at this seed
CALIBRATION_SAMPLES = 512


def record_calibration(
    spec: str, source: str, model: Any, out: Path, opts: CompileOptions
) -> dict[str, Any]:
    """``--calibration task[:episodes=N,name=TASK]``: record observations for calibration.

    The fp32 model (ONNX Runtime) drives its task for N episodes (default 4) from seed
    1,000,000 + ``--seed``; up to 512 steps, spread evenly, are kept.
    """
    import numpy as np

    from robopt_compile.evaluate import closed_loop as ev
    from robopt_compile.tasks import get_task

    espec = ev.parse_eval_spec(spec, option="--calibration")
    if "episodes=" not in spec:
        espec.episodes = 4
    name = resolve_eval_task(espec, source)
    seeds = ev.seeds_for(espec.episodes, CALIBRATION_SEED_OFFSET + opts.seed)
    with get_task(name) as task, ev.onnx_policy(model, opts.threads or 1) as pol:
        from robopt_compile import ir as rir

        ev.check_policy_fits(task, [s.to_json() for s in rir.input_specs(model)], source)
        eps = ev.run_episodes(task, pol, seeds, record=True)
    arrays = {n: np.concatenate([e.feeds[n] for e in eps]) for n in task.input_names}
    steps = next(iter(arrays.values())).shape[0]
    keep = np.unique(np.linspace(0, steps - 1, min(steps, CALIBRATION_SAMPLES)).astype(int))
    # One sample per step, with the batch axis of 1 the model expects.
    np.savez(out, **{n: a[keep][:, None] for n, a in arrays.items()})
    return {"task": name, "episodes": len(eps), "seeds": seeds, "samples": int(keep.size)}


def write_report(staged: Path, progress: Progress = _noop, out: Path | None = None) -> None:
    """report.html + report.md in the fresh bundle (staged, to be published at ``out``), with
    per-layer times where the engine runs here. A report problem is a warning: the bundle
    itself is complete."""
    try:
        from robopt_compile.report.html import refresh_reports

        refresh_reports(staged, warn=lambda m: progress(m, "note", 0.0), shown=out)
    except Exception as exc:
        progress(f"report.html not written: {type(exc).__name__}: {exc}", "note", 0.0)


def resolve_eval_task(spec: Any, source: str) -> str:
    """The task ``--eval`` runs: named in the spec, or the trained zoo model's own task."""
    from robopt_compile.tasks import TASKS
    from robopt_compile.zoo import ZOO

    name = spec.task
    if name is None:
        entry = ZOO.get(source.removeprefix("zoo:")) if source.startswith("zoo:") else None
        name = entry.task if entry else None
    if name is None:
        raise InputError(
            f"--eval: {source} has no known task; name one, e.g. --eval "
            f"task:name={next(iter(TASKS))},episodes=50 (tasks: {', '.join(TASKS)})."
        )
    if name not in TASKS:
        raise UnknownNameError("task", name, list(TASKS))
    from robopt_compile.tasks import get_task

    # Start the simulator once now: a missing one fails before the build, not after it.
    get_task(name).close()
    return name


def evaluate_bundle(
    out: Path,
    task_name: str,
    opts: CompileOptions,
    reference: Path,
    progress: Progress = _noop,
    published: Path | None = None,
) -> dict[str, Any]:
    """Closed-loop evaluation of a fresh bundle against the exported fp32 model.

    An engine that cannot run here (a deferred TensorRT build) is stood in for by its
    optimized ONNX in ONNX Runtime, labelled as such. ``out`` may be the staged folder of a
    bundle not yet published at ``published``, the path the result names.
    """
    import json as _json

    from robopt_compile.bench.results import save_result
    from robopt_compile.evaluate import closed_loop as ev
    from robopt_compile.tasks import get_task

    manifest = _json.loads((out / "manifest.json").read_text())
    spec = opts.eval
    done, total = [0], 2 * spec.episodes

    def tick(n: int) -> None:
        done[0] += n
        progress(f"evaluate: episode {done[0]}/{total} on {task_name}", "tick", done[0] / total)

    with get_task(task_name) as task:
        ev.check_policy_fits(task, manifest["inputs"], str(out))
        meta = ev.bundle_meta(out)
        meta["bundle"] = str((published or out).resolve())
        label = f"optimized {manifest['precision']} ({manifest['backend']})"
        with contextlib.ExitStack() as stack:
            ref = stack.enter_context(ev.onnx_policy(reference, opts.threads or 1))
            if engine_runs_here(manifest["engine"].get("config", {})):
                cand = stack.enter_context(ev.bundle_policy(out, opts.threads or 1))
            else:
                cand = stack.enter_context(ev.onnx_policy(out / "model.onnx", opts.threads or 1))
                label += " via its ONNX in onnxruntime (engine does not run here)"
                meta["proxy"] = True
            result = ev.closed_loop(
                task,
                ref,
                [(label, cand, meta)],
                episodes=spec.episodes,
                seed=spec.seed,
                metric=spec.metric,
                criteria=opts.eval_criteria,
                progress=tick,
            )
    saved = save_result(out, f"eval-{task_name}", result)
    result["path"] = str((published or out) / saved.relative_to(out))
    return result


def _compile_rest(
    source: str,
    out: Path,
    opts: CompileOptions,
    force: bool,
    progress: Progress,
    timings: dict[str, float],
    profile: Any,
    backend: Any,
    src: Any,
    cache: Any = None,
    cache_info: dict[str, dict[str, Any]] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> CompileResult:
    """Transform, build, verify and write the bundle; ``finish(staged_folder)`` adds what
    comes after the manifest (evaluation, reports) before the bundle is published."""
    from robopt_compile import ir as rir
    from robopt_compile.compile import analysis, bundle
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner, TimingInstrument
    from robopt_compile.targets import BuildOptions

    cache_info = cache_info if cache_info is not None else {}
    dyn = dynamic_reference(src, opts.seed, progress)  # before any pass changes src.model
    # Graph outputs keep the source's type and shape: some quantizers drop them.
    out_types = {v.name: (v.type, v.shape) for v in src.model.graph.outputs}
    timing = TimingInstrument()
    instruments: list[Any] = [timing]
    if opts.dump_ir is not None:
        instruments.append(DumpIRInstrument(Path(opts.dump_ir)))
    runner = PassRunner(instruments)

    def transform(progress: Progress) -> dict[str, Any]:
        """optimize -> compress -> quantize; updates ``src``'s reference data."""
        with _stage(progress, "optimize", timings):
            passes = build_passes(opts)
            model = runner.run(passes, src.model)
        simplify_report = next(
            (getattr(p, "report", None) for p in passes if hasattr(p, "report")), None
        )

        compress_report = None
        if opts.compress.active:
            from robopt_compile.compile.compress import compress

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
        tol = dict(PRECISIONS[precision].tolerance)
        quant_report = None
        quant_data_used = opts.compress.active
        if (
            not needs_quantization(backend.name, precision)
            and opts.quant.calibration
            and not quant_data_used
        ):
            progress(f"--calibration is not used at --precision {precision}", "note", 0.0)
        if needs_quantization(backend.name, precision):
            from robopt_compile.compile.quantize import quantize

            with _stage(progress, "quantize", timings):
                qres = quantize(
                    model, backend, profile, precision, opts.threads, opts.quant, runner
                )
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
        return {
            "model": model,
            "precision": precision,
            "tol": tol,
            "simplify": simplify_report,
            "compression": compress_report,
            "quantization": quant_report,
            "passes": [r.to_json() for r in timing.records],
        }

    if cache is None:
        done = transform(progress)
    else:
        done = _cached_transform(
            cache, opts, backend, profile, src, transform, cache_info, progress, timings
        )
    model, precision, tol = done["model"], done["precision"], done["tol"]
    simplify_report = done["simplify"]
    compress_report = done["compression"]
    quant_report = done["quantization"]

    with _stage(progress, "analyze", timings):
        facts = analysis.analyze(
            model,
            profile,
            precision=PRECISIONS[precision].compute,
            threads=opts.threads or profile.cpu_cores,
        )

    for v in model.graph.outputs:
        typ, shape = out_types.get(v.name, (None, None))
        if v.type is None and typ is not None:
            v.type = typ
        if v.shape is None and shape is not None:
            v.shape = shape
    with bundle.staged_output(out, force) as tmp:
        with _stage(progress, "build", timings):
            model_files = rir.save(model, tmp / "model.onnx")
            dynamic = any(
                s.shape and not isinstance(s.shape[0], int) for s in rir.input_specs(model)
            )
            build_opts = BuildOptions(
                precision=precision,
                threads=opts.threads,
                tune_trials=opts.tune_trials,
                dynamic_batch=(1, 1, opts.max_batch) if dynamic else None,
            )
            put_build = None
            if cache is None:
                artifact = backend.build(tmp / "model.onnx", profile, build_opts, tmp / "engine")
            else:
                artifact, put_build = _cached_build(
                    cache, model_files, backend, profile, build_opts, tmp, cache_info, progress
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
            dyn_fig = None
            if dyn is not None:
                dyn_fig = verify_dynamic(dyn, backend, artifact, tmp, opts.threads, tol,
                                         compress_report, progress)  # fmt: skip
            if put_build is not None:  # cached only once it passed the engine check
                put_build()
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
            "passes": done["passes"],
            "simplify": simplify_report,
            "compression": compress_report,
            "quantization": quant_report,
            "stage_seconds": {k: round(v, 4) for k, v in timings.items()},
            "cache": _cache_states(cache_info),
            "summary": facts.get("summary", {}),
        }
        bundle.write_json(tmp / "report.json", report)
        parity = dict(src.parity)
        if simplify_report and simplify_report.get("parity"):
            parity["simplify"] = simplify_report["parity"]
        parity["engine"] = engine_fig
        if dyn_fig is not None:
            parity["engine_dynamic"] = dyn_fig
        from robopt_compile.multigraph.common import manifest_common

        manifest = {
            **manifest_common(
                {"name": src.name, "source": src.source, "source_kind": src.kind},
                profile,
                backend,
                precision,
                opts.precision,
                opts.threads,
            ),
            "inputs": [s.to_json() for s in rir.input_specs(model)],
            "outputs": [s.to_json() for s in rir.output_specs(model)],
            "engine": engine_json,
            "files": bundle.hash_tree(tmp),
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
        if finish is not None:
            finish(tmp)
    return CompileResult(out=out, manifest=manifest, report=report, facts=facts)


def _cache_states(info: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The report's cache states: the three stages, and whether the whole bundle is kept
    for an unchanged rebuild (``bundle``: "miss" when it will be stored)."""
    if not info:
        return {k: {"cache": "off"} for k in (*CACHED_STAGES, "bundle")}
    states = {k: info[k] for k in (*REPORTED_STAGES, "bundle") if k in info}
    off = [s for s in CACHED_STAGES if states.get(s, {}).get("cache") not in ("hit", "miss")]
    if off and states.get("bundle", {}).get("cache") == "miss":
        states["bundle"] = {"cache": "off", "reason": f"the {off[0]} stage is not cached"}
    return states


def _stores_compressed(compress_report: dict[str, Any] | None) -> bool:
    steps = (compress_report or {}).get("steps", [])
    return any(s["pass"] == "prune-magnitude" and not s["rolled_back"] for s in steps)


def _opset(model: Any) -> int | None:
    return model.opset_imports.get("")


def runs_here(artifact: Any) -> bool:
    """False for an engine that cannot run on the build machine: a deferred TensorRT build or
    a library cross-compiled for another CPU."""
    return engine_runs_here(artifact.config)


def engine_runs_here(config: dict[str, Any]) -> bool:
    """``runs_here`` from an engine's config as stored in a manifest."""
    return not (config.get("deferred") or config.get("cross_compiled"))


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
    verdict["checked"] = (
        f"ONNX checked in ONNX Runtime; {artifact.backend} engine not built yet: built and "
        "checked on the device by robopt-bench"
        if artifact.config.get("deferred")
        else f"ONNX checked in ONNX Runtime; the cross-compiled {artifact.backend} engine was "
        "not run here: checked on the device by robopt-bench"
    )
    verdict["note"] = (
        f"the {artifact.backend} engine cannot run here ({why}): the bundle's ONNX was checked "
        "in ONNX Runtime instead; robopt-bench checks the engine on the device"
    )
    return verdict


DYNAMIC_CHECK_SIZE = 3  # every symbolic dim is also checked at this size, not only at 1
DYNAMIC_SEED_OFFSET = 7_000


@dataclass(frozen=True)
class DynamicReference:
    """The source model's outputs on inputs whose symbolic dims are ``DYNAMIC_CHECK_SIZE``."""

    dims: list[str]  # "input[axis]=name" of the non-batch symbolic dims
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def dynamic_reference(src: Any, seed: int, progress: Progress) -> DynamicReference | None:
    """None when only the batch dim (axis 0) is symbolic; else a warning and the reference
    outputs at the second size, so that the engine is checked where the robot may feed it.

    A source that does not itself run at that size gets a warning and the size-1 check only.
    """
    from robopt_compile import ir as rir
    from robopt_compile.numerics import random_feeds, run_onnx

    specs = rir.input_specs(src.model)
    dims = [f"{s.name}[{i}]={d}" for s in specs for i, d in enumerate(s.shape)
            if i > 0 and not isinstance(d, int)]  # fmt: skip
    if not dims:
        return None
    n = DYNAMIC_CHECK_SIZE
    feeds = random_feeds(specs, seed=seed + DYNAMIC_SEED_OFFSET, batch=n)
    try:
        outputs = run_onnx(src.model, feeds)
    except Exception as exc:  # the runtime's own error type; the dims are not really free
        progress(f"dynamic dimension(s) {', '.join(dims)}: the source model does not run with "
                 f"them at {n} ({str(exc).splitlines()[0][:160]}); the engine is checked at 1 "
                 "only. Export with fixed sizes if the robot always feeds one size.",
                 "note", 0.0)  # fmt: skip
        return None
    progress(f"dynamic dimension(s) {', '.join(dims)}: the engine is checked with every "
             f"symbolic dimension at 1 and at {n}; export with fixed sizes if the robot always "
             "feeds one size", "note", 0.0)  # fmt: skip
    return DynamicReference(dims, feeds, outputs)


def verify_dynamic(
    dyn: DynamicReference,
    backend: Any,
    artifact: Any,
    staged: Path,
    threads: int | None,
    tol: dict[str, float],
    compress_report: dict[str, Any] | None,
    progress: Progress,
) -> dict[str, Any] | None:
    """The engine (or, where it cannot run here, the bundle's ONNX) against the source at the
    second size of its dynamic dims; CheckFailedError when it differs or cannot run."""
    from robopt_compile.numerics import judge, run_onnx

    if any(not s.get("rolled_back") for s in (compress_report or {}).get("steps", [])):
        progress("dynamic dimensions: not checked at a second size after compression (the "
                 "compressed model differs from the source by design)", "note", 0.0)  # fmt: skip
        return None
    n = DYNAMIC_CHECK_SIZE
    where = f"the {backend.name} engine"
    try:
        if runs_here(artifact):
            with backend.runner(artifact, threads=threads) as r:
                got = r.infer(dyn.inputs)
        else:
            where = "the bundle's ONNX in ONNX Runtime"
            got = run_onnx(staged / "model.onnx", dyn.inputs, threads)
    except Exception as exc:  # a runtime's own error: the engine fixed the dims
        raise CheckFailedError(
            f"{where} does not run with dynamic dimension(s) {', '.join(dyn.dims)} at {n} "
            f"({str(exc).splitlines()[0][:160]}); export the model with fixed sizes."
        ) from exc
    verdict = judge(dyn.outputs, got, tol)
    verdict["inputs"] = f"seeded random inputs with every symbolic dimension at {n}"
    verdict["dims"] = dyn.dims
    if not verdict["passed"]:
        bad = verdict["outputs"][verdict["output"]]
        raise CheckFailedError(
            f"{where} does not reproduce the source model with dynamic dimension(s) "
            f"{', '.join(dyn.dims)} at {n}: output {verdict['output']!r} {bad['reason']} "
            f"(tolerance {tol}); export the model with fixed sizes."
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
    verdict["engine_checked"] = True
    verdict["checked"] = f"{artifact.backend} engine checked here"
    return verdict


# ---------------------------------------------------------------- build cache (cache.py)

CACHED_STAGES = ("export", "transform", "build")
# In report.json's "cache", in pipeline order; "record" only with --calibration task.
REPORTED_STAGES = ("export", "record", "transform", "build")


def _cache_note(progress: Progress, what: str, exc: BaseException) -> None:
    progress(f"build cache: {what} ({type(exc).__name__}: {exc})", "note", 0.0)


def _save_model_dir(model: Any, dest: Path, inputs: Any, outputs: Any) -> Path:
    """A model with its reference data as a folder: model.onnx[.data], inputs/outputs.npz."""
    from robopt_compile import ir as rir
    from robopt_compile.compile import bundle

    rir.save(model, dest / "model.onnx")
    bundle.save_npz(dest / "inputs.npz", inputs)
    bundle.save_npz(dest / "outputs.npz", outputs)
    return dest


def _load_model_dir(folder: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    import numpy as np

    from robopt_compile import ir as rir

    model = rir.load(folder / "model.onnx")
    with np.load(folder / "inputs.npz") as i, np.load(folder / "outputs.npz") as o:
        return model, {k: i[k] for k in i.files}, {k: o[k] for k in o.files}


def export_key(cache: Any, source: str, opts: CompileOptions) -> str:
    """The export stage's cache key; raises ``cache.Uncacheable`` (or the error of a source
    that cannot be read, which the export itself then reports)."""
    from robopt_compile.compile import frontend
    from robopt_compile.store.cache import implementation, sha256_tree, source_identity

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


def _cached_export(
    cache: Any,
    source: str,
    opts: CompileOptions,
    export: Callable[[], Any],
    info: dict[str, dict[str, Any]],
    progress: Progress,
) -> Any:
    """``export()`` through the cache; records ``info["export"]`` and the export's tree hash."""
    from robopt_compile.compile.frontend import SourceModel
    from robopt_compile.store.cache import Uncacheable

    try:
        key = export_key(cache, source, opts)
    except Exception as exc:  # Uncacheable, or a broken file: the export says what is wrong
        reason = str(exc) if isinstance(exc, Uncacheable) else f"{type(exc).__name__}: {exc}"
        info["export"] = {"cache": "off", "reason": reason}
        return export()
    entry = cache.get(key)
    if entry is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="robopt-cache-") as d:
                folder = cache.materialize(entry, "export", Path(d))
                model, ins, outs = _load_model_dir(folder)
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
        except Exception as exc:  # a damaged entry is a miss
            _cache_note(progress, "export entry unusable, exporting again", exc)
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
            folder = _save_model_dir(
                src.model, Path(d), src.reference_inputs, src.reference_outputs
            )
            entry = cache.put(key, "export", meta, trees={"export": folder})
            # Go on with the model as stored, so a later hit continues from the same bytes.
            src.model = _load_model_dir(folder)[0]
        info["export"]["output"] = entry.objects["export"]
    except Exception as exc:
        _cache_note(progress, "export not stored", exc)
    return src


def record_key(cache: Any, spec: str, opts: CompileOptions, exported: str) -> str:
    """The key of a ``--calibration task`` recording: the exported model (which drives the
    task) plus the spec, seed and threads (ONNX Runtime's numerics follow the thread count)."""
    from robopt_compile.store.cache import implementation_of

    config = {
        "implementation": implementation_of("robopt_compile.compile.pipeline:record_calibration"),
        "spec": spec,
        "seed": opts.seed,
        "threads": opts.threads,
    }
    return cache.key("record", exported, config)


def _cached_record(
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
        except Exception as exc:
            _cache_note(progress, "calibration recording unusable, recording again", exc)
    record()
    info["record"] = {"cache": "miss", "key": key}
    try:
        cache.put(key, "record", {"spec": spec}, files={"calibration": dest})
    except Exception as exc:
        _cache_note(progress, "calibration recording not stored", exc)


# What the transform stage runs (``module:attr``): part of its cache key, see
# cache.implementation_of.
TRANSFORM_IMPLEMENTATION = (
    "robopt_compile.compile.pipeline:build_passes",
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
    from dataclasses import asdict

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
    return {
        "implementation": implementation_of(*TRANSFORM_IMPLEMENTATION),
        "simplify": opts.simplify,
        "seed": opts.seed,
        "compress": asdict(opts.compress),
        "precision": opts.precision,
        "backend": backend.name,
        "profile": profile_fingerprint(profile),
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


def _cached_transform(
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
                folder = _save_model_dir(
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
                _stage(progress, "transform", timings),
                tempfile.TemporaryDirectory(prefix="robopt-cache-") as d,
            ):
                model, ins, outs = _load_model_dir(cache.materialize(entry, "transform", Path(d)))
            m = entry.meta
            src.reference_inputs, src.reference_outputs = ins, outs
            for note in m["notes"]:
                progress(note, "note", 0.0)
            info["transform"] = {"cache": "hit", "key": key}
            return {**{k: m[k] for k in m if k not in ("notes", "_trees")}, "model": model}
        except Exception as exc:
            _cache_note(progress, "transform entry unusable, running the passes", exc)
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
            folder = _save_model_dir(
                done["model"], Path(d), src.reference_inputs, src.reference_outputs
            )
            cache.put(key, "transform", meta, trees={"transform": folder})
            # As stored, so the engine built now is the one a later hit builds (a save after a
            # load can list a few more shapes than the first save of a pass's output).
            done["model"] = _load_model_dir(folder)[0]
    except Exception as exc:
        _cache_note(progress, "transform not stored", exc)
    return done


def _cached_build(
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
    from dataclasses import asdict

    from robopt_compile.store.cache import implementation, profile_fingerprint
    from robopt_compile.targets import Artifact

    engine = tmp / "engine"
    config = {
        "implementation": implementation(type(backend), type(backend).build),
        "backend": backend.name,
        "dla_core": backend.options.get("dla_core"),
        "profile": profile_fingerprint(profile),
        "options": asdict(build_opts),
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
        except Exception as exc:
            shutil.rmtree(engine, ignore_errors=True)
            _cache_note(progress, "build entry unusable, building again", exc)
    artifact = backend.build(tmp / "model.onnx", profile, build_opts, engine)
    info["build"] = {"cache": "miss", "key": key}

    def put() -> None:
        try:
            meta = json.loads(json.dumps({"artifact": artifact.to_json()}, default=json_default))
            cache.put(key, "build", meta, trees={"engine": Path(artifact.root)})
        except Exception as exc:
            _cache_note(progress, "engine not stored", exc)

    return artifact, put


# ---------------------------------------------------------------- whole-bundle reuse


def bundle_key(
    cache: Any, transform_key: str, opts: CompileOptions, profile: Any, backend: Any
) -> str:
    """The key of a finished bundle: the transform stage's key (which chains the export's)
    plus everything the build, the engine check, the analysis and the report depend on.

    The profile enters with its figures (the analysis reads them); a detected host's
    measured figures are stable within a boot (hwprofiles/host.py).
    """
    from importlib.metadata import PackageNotFoundError, version

    from robopt_compile.store.cache import _plain, implementation, profile_fingerprint

    try:
        mpl = version("matplotlib")
    except PackageNotFoundError:
        mpl = None
    config = {
        "implementation": implementation(type(backend), type(backend).build),
        "backend": backend.name,
        "dla_core": backend.options.get("dla_core"),
        "profile": profile_fingerprint(profile),
        "profile_figures": _plain(profile),
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


def _bundle_key_for(
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
    except Exception:  # Uncacheable, or an unreadable source: the full path reports it
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
            except Exception as exc:  # a damaged entry is a miss: the full build runs
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
    except Exception as exc:
        _cache_note(progress, "bundle not stored for reuse", exc)
