"""The compile pipeline: source -> checked ONNX -> passes -> engine -> checked bundle.

``compile_model`` is the session runner the API and the CLI drive: it resolves the target,
sends multi-graph models (VLA, diffusion policy) to ``robopt_compile.compile.multigraph``, and runs
the single-graph stages (export, record, optimize, compress, quantize, analyze, build,
verify, evaluate, report), each reporting to a ``progress`` callback and each cached where its
inputs are unchanged."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from robopt_compile.compile.buildcache import (
    cache_states,
    cached_build,
    cached_export,
    cached_record,
    cached_transform,
)
from robopt_compile.compile.options import CompileOptions
from robopt_compile.compile.quantize import needs_quantization
from robopt_compile.compile.resolve import (
    build_passes,
    check_options,
    check_precision,
    resolve_backend,
    resolve_profile,
)
from robopt_compile.compile.reuse import bundle_key_for, reuse_bundle, store_bundle
from robopt_compile.compile.stages import CompileResult, Progress, noop, stage, write_report
from robopt_compile.compile.tasks import (
    check_task_fits,
    evaluate_bundle,
    record_calibration,
    resolve_eval_task,
)
from robopt_compile.compile.verify import (
    dynamic_reference,
    runs_here,
    verify_dynamic,
    verify_engine,
    verify_onnx,
)
from robopt_compile.errors import (
    CheckFailedError,
    InputError,
)
from robopt_compile.precision import PRECISIONS


def compile_model(
    source: str, out: Path, opts: CompileOptions, *, force: bool = False, progress: Progress = noop
) -> CompileResult:
    """Compile ``source`` for ``opts.target`` into a bundle at ``out``.

    Without ``opts.backend``, a backend that cannot convert or build the model (``BuildError``:
    an operator its frontend lacks, a failed build) hands it to the board's next available
    backend, with a warning naming the reason; the report and the manifest say which backend
    was chosen and why (``backend_choice``). ``--backend`` keeps the strict behaviour, and so
    do multi-graph bundles (their default recipe picks the backends).
    """
    from robopt_compile.compile.resolve import fallback_backends
    from robopt_compile.errors import BuildError
    from robopt_compile.zoo import is_folder_source, zoo_kind

    names: list[str] = []
    if (
        opts.backend is None
        and zoo_kind(source) not in ("vla", "diffusion")
        and not (is_folder_source(source))
    ):
        names = fallback_backends(resolve_profile(opts), opts.precision)
    if len(names) < 2:
        return _compile_one(source, out, opts, force=force, progress=progress)
    failed: list[dict[str, str]] = []
    for i, name in enumerate(names):
        choice = {"chosen": name, "order": names, "failed": list(failed)}
        try:
            return _compile_one(source, out, replace(opts, backend=name, backend_choice=choice),
                                force=force, progress=progress)  # fmt: skip
        except BuildError as exc:
            if i == len(names) - 1:
                raise
            why = " ".join(str(exc).split())
            failed.append({"backend": name, "reason": why})
            progress(f"backend {name} cannot build this model ({why}); falling back to "
                     f"{names[i + 1]}, the board's next backend (--backend {name} keeps it "
                     "strict)", "note", 0.0)  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


def _compile_one(
    source: str, out: Path, opts: CompileOptions, *, force: bool = False, progress: Progress = noop
) -> CompileResult:
    """One compile with the backend ``opts.backend`` names (or the board's first)."""
    from robopt_compile.compile import bundle

    timings: dict[str, float] = {}
    # Validate everything cheap before the slow work.
    with stage(progress, "resolve", timings):
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
        from robopt_compile.compile.multigraph.common import compile_cached

        if kind == "vla":  # vision, embed and llm graphs + greedy action decoding
            from robopt_compile.compile.multigraph import vla as mod
        else:  # encoder and denoiser graphs + the DDIM loop
            from robopt_compile.compile.multigraph import diffusion as mod
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
            found = bundle_key_for(cache, source, opts, profile, backend)
            if found is not None:
                with stage(progress, "reuse", timings):
                    reused = reuse_bundle(cache, found, out, force, timings)
                if reused is not None:
                    cache.close()
                    built = reused.report["cache"]["bundle"].get("built_utc") or "earlier"
                    progress(f"unchanged rebuild: the bundle built {built} was restored from "
                             "the build cache and checked (--no-cache builds afresh)",
                             "info", 0.0)  # fmt: skip
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

    with stage(progress, "export", timings):
        if cache is None:
            src = export()
        else:
            src = cached_export(cache, source, opts, export, cache_info, progress)

    calib_tmp: Path | None = None
    if (opts.quant.calibration or "").split(":")[0] == "task":
        # Calibration data recorded from the fp32 policy driving its own task, on seeds far
        # from the evaluation seeds, so accuracy is never judged on what it calibrated on.
        with stage(progress, "record", timings):
            calib_tmp = Path(tempfile.mkdtemp(prefix="robopt-calib-")) / "task.npz"
            spec = opts.quant.calibration

            def record() -> None:
                record_calibration(spec, source, src.model, calib_tmp, opts, progress)

            if cache is None:
                record()
            else:
                cached_record(cache, spec, opts, cache_info, calib_tmp, record, progress)
        requested = opts  # the bundle's cache key names the spec, not the temporary file
        from robopt_compile.evaluate import parse_eval_spec

        task_of = resolve_eval_task(parse_eval_spec(spec, option="--calibration"), source)
        opts = replace(opts, quant=replace(opts.quant, calibration=str(calib_tmp)),
                       compress=replace(opts.compress, task=task_of))  # fmt: skip
    else:
        requested = opts
    eval_ref: Path | None = None
    if eval_task is not None:
        check_task_fits(eval_task, src.model, source)  # before minutes of building
        # The fp32 model as exported, before any pass: the closed-loop reference.
        eval_ref = Path(tempfile.mkdtemp(prefix="robopt-evalref-")) / "reference.onnx"
        rir.save(src.model, eval_ref)
        if opts.quant.max_drop is not None and (
            needs_quantization(backend.name, opts.precision) or opts.compress.active
        ):
            from robopt_compile.evaluate import ClosedLoopGuard

            # An explicit bound with --eval: compression and the quantizer are judged by the
            # task itself, against the exported fp32 model.
            opts = replace(
                opts, quant=replace(opts.quant, closed_loop=ClosedLoopGuard(eval_task, opts.eval))
            )
        if opts.compress.search_arch is not None:  # the search's finalists by task success
            from robopt_compile.evaluate import ClosedLoopGuard

            guard = opts.quant.closed_loop or ClosedLoopGuard(eval_task, opts.eval)
            opts = replace(opts, compress=replace(opts.compress, arch_guard=guard))
    evaluation: dict[str, Any] = {}

    def finish(staged: Path) -> None:
        """Evaluation and reports, written into the staged bundle before it is published."""
        if eval_task is not None:
            assert eval_ref is not None
            with stage(progress, "evaluate", timings):
                evaluation.update(
                    evaluate_bundle(
                        staged, eval_task, opts, eval_ref, progress=progress, published=out
                    )
                )
        with stage(progress, "report", timings):
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
        if opts.compress.arch_guard is not None:
            opts.compress.arch_guard.close()
        for tmp in (eval_ref, calib_tmp):
            if tmp is not None:
                shutil.rmtree(tmp.parent, ignore_errors=True)


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
        with stage(progress, "optimize", timings):
            passes = build_passes(opts)
            model = runner.run(passes, src.model)
        simplify_report = next(
            (getattr(p, "report", None) for p in passes if hasattr(p, "report")), None
        )

        compress_report = None
        if opts.compress.active:
            from robopt_compile.compile.compress import compress

            with stage(progress, "compress", timings):
                cres = compress(model, opts.compress, opts.quant, opts.threads, runner, progress,
                                cache=cache)  # fmt: skip
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

            with stage(progress, "quantize", timings):
                qres = quantize(
                    model,
                    backend,
                    profile,
                    precision,
                    opts.threads,
                    opts.quant,
                    runner,
                    progress=lambda i, n: progress(
                        f"quantize: layer sensitivity {i}/{n}", "tick", i / n
                    ),
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
        done = cached_transform(
            cache, opts, backend, profile, src, transform, cache_info, progress, timings
        )
    model, precision, tol = done["model"], done["precision"], done["tol"]
    simplify_report = done["simplify"]
    compress_report = done["compression"]
    quant_report = done["quantization"]

    with stage(progress, "analyze", timings):
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
    if backend.static_shapes and not opts.dynamic_batch:
        fixed = rir.fix_batch(model, 1)
        if fixed:
            progress(f"the model's batch dim is symbolic and {backend.name} builds fixed shapes: "
                     f"built for batch 1 (inputs {', '.join(fixed)}); a backend that keeps a "
                     "symbolic batch: -b onnxruntime or -b openvino", "info", 0.0)  # fmt: skip
    with bundle.staged_output(out, force) as tmp:
        with stage(progress, "build", timings):
            rir.check_graph(model, "the optimization passes")
            model_files = rir.save(model, tmp / "model.onnx")
            dynamic = any(
                s.shape and not isinstance(s.shape[0], int) for s in rir.input_specs(model)
            )
            with contextlib.ExitStack() as stack:
                executor = None
                if opts.tune_trials and opts.executor != "local" and backend.name == "tvm":
                    from robopt_compile.executor import open_executor

                    executor = stack.enter_context(
                        open_executor(opts.executor, lambda m: progress(m, "note", 0.0))
                    )
                build_opts = BuildOptions(
                    precision=precision,
                    threads=opts.threads,
                    robot_threads=opts.robot_threads,
                    tune_trials=opts.tune_trials,
                    dynamic_batch=(1, 1, opts.max_batch) if dynamic else None,
                    executor=executor,
                )
                put_build = None
                if cache is None:
                    artifact = backend.build(
                        tmp / "model.onnx", profile, build_opts, tmp / "engine"
                    )
                else:
                    artifact, put_build = cached_build(
                        cache, model_files, backend, profile, build_opts, tmp, cache_info,
                        progress,
                    )  # fmt: skip
        with stage(progress, "verify", timings):
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
            "cache": cache_states(cache_info),
            "summary": facts.get("summary", {}),
        }
        if opts.backend_choice is not None:
            report["backend_choice"] = opts.backend_choice
        bundle.write_json(tmp / "report.json", report)
        parity = dict(src.parity)
        if simplify_report and simplify_report.get("parity"):
            parity["simplify"] = simplify_report["parity"]
        parity["engine"] = engine_fig
        if dyn_fig is not None:
            parity["engine_dynamic"] = dyn_fig
        from robopt_compile.compile.multigraph.common import manifest_common

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
        if opts.backend_choice is not None:
            manifest["backend_choice"] = opts.backend_choice
        bundle.write_json(tmp / bundle.MANIFEST, manifest)
        if finish is not None:
            finish(tmp)
    return CompileResult(out=out, manifest=manifest, report=report, facts=facts)


def _stores_compressed(compress_report: dict[str, Any] | None) -> bool:
    steps = (compress_report or {}).get("steps", [])
    return any(s["pass"] == "prune-magnitude" and not s["rolled_back"] for s in steps)


def _opset(model: Any) -> int | None:
    return model.opset_imports.get("")
