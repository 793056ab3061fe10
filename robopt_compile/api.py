"""robopt's Python API: compile, plan, analyze, evaluate and bench a robot policy.

    import robopt_compile.api as robopt

    r = robopt.compile("zoo:state-mlp", out="out/mlp", threads=1)
    r = robopt.compile(module, example_inputs=(torch.rand(1, 12),), out="out/m")
    s = robopt.plan("zoo:visuomotor-cnn", out="out/auto", criteria={"max_latency_ms": 5})
    a = robopt.analyze("zoo:state-mlp", target="x86-64-avx512")
    e = robopt.evaluate("out/hop", episodes=20)
    b = robopt.bench("out/mlp", runs=200)

This is the layer every interface calls: the ``robopt-compile`` CLI (``robopt_compile.cli``)
only parses its options into these calls and prints what they return, and the coming web
service does the same. A source is a string (``zoo:NAME``, an ``.onnx`` or ``.pt2`` file,
``package.module:factory``, a local model folder) or a ``torch.nn.Module`` with
``example_inputs`` (a tensor, a tuple of tensors, or a dict name -> tensor, as a factory
returns them). Results are frozen dataclasses with ``to_json()`` (a search returns the
planner's ``SearchResult``). Errors are ``robopt_compile.errors.RoboptError`` children, each
with the ``exit_code`` the CLI exits with. docs/API.md has examples.

Nothing heavy is imported here (no torch, numpy or runtime): each call imports what it needs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robopt_compile.errors import InputError

if TYPE_CHECKING:
    from robopt_compile.compile.inspect import ModelInfo
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.plan.planner import OptimizationCriteria
    from robopt_compile.plan.search import SearchResult

__all__ = [
    "Analysis", "Benchmark", "Compiled", "Evaluation", "QuantReport", "Targets", "analyze",
    "bench", "compile", "compile_options", "evaluate", "inspect", "plan", "quant_report",
    "report", "resume", "targets",
]  # fmt: skip

Progress = Callable[[str, str, float], None]  # (stage, "start"|"done"|"note"|"info"|"tick", s)
Log = Callable[[str], None]
Warn = Callable[[str], None]
StorePath = str | Path | None  # a folder, a .db file or sqlite:///path; None: $ROBOPT_STORE


def _quiet(*_: Any) -> None:
    pass


# --------------------------------------------------------------------------- inputs


def _source(source: Any, example_inputs: Any) -> str:
    """A source string; a ``torch.nn.Module`` becomes a ``frontend.ModuleSource``."""
    torch = sys.modules.get("torch")  # a module object means torch is imported already
    if torch is not None and isinstance(source, torch.nn.Module):
        if example_inputs is None:
            raise InputError(
                "a torch.nn.Module source needs example_inputs: a tensor, a tuple of tensors "
                "or a dict name -> tensor."
            )
        from robopt_compile.compile.frontend import ModuleSource

        return ModuleSource(source, example_inputs)
    if example_inputs is not None:
        raise InputError(
            "example_inputs go with a torch.nn.Module source; a string source brings its own."
        )
    if isinstance(source, str | Path):
        return str(source)
    raise InputError(
        f"a source is zoo:NAME, an .onnx or .pt2 file, package.module:factory, a model folder "
        f"or a torch.nn.Module, not {type(source).__name__}."
    )


_PATHS = ("hwprofile", "dump_ir", "reference_inputs")


def compile_options(base: CompileOptions | None = None, **option_fields: Any) -> CompileOptions:
    """``CompileOptions`` from ``base`` (default: all defaults) with fields replaced by name.

    Any field of ``CompileOptions`` (``backend``, ``precision``, ``threads``, ``eval`` as a
    spec string such as ``"task:episodes=20"`` ...), of its ``QuantOptions`` (``calibration``,
    ``max_drop``, ``strict`` ...) or of its ``CompressOptions`` (``prune``, ``low_rank``,
    ``distill``, ``search_arch``, ``search_budget_s`` ...). ``seed`` seeds both the export
    and the quantizer, as ``--seed`` does. None values are ignored (the base's stands).

    Raises:
        InputError: an unknown field.
    """
    from robopt_compile.compile.options import CompileOptions, CompressOptions, QuantOptions

    given = {k: v for k, v in option_fields.items() if v is not None}
    classes = (CompileOptions, QuantOptions, CompressOptions)
    internal = {"closed_loop", "arch_guard", "task"}  # set by the pipeline, not the user
    groups = [{f.name for f in fields(cls)} - internal for cls in classes]
    unknown = sorted(k for k in given if not any(k in g for g in groups))
    if unknown:
        known = sorted(set().union(*groups) - {"quant", "compress"})
        raise InputError(f"unknown compile option(s) {unknown}; known: {', '.join(known)}.")
    top = {k: v for k, v in given.items() if k in groups[0]}
    quant = {k: v for k, v in given.items() if k in groups[1] and k not in groups[0]}
    compress = {k: v for k, v in given.items() if k in groups[2]}
    for k in _PATHS:
        if isinstance(top.get(k), str):
            top[k] = Path(top[k])
    if isinstance(top.get("eval"), str):
        from robopt_compile.evaluate import parse_eval_spec

        top["eval"] = parse_eval_spec(top["eval"])
    if "seed" in top:
        quant["seed"] = top["seed"]
    for k in ("prune", "prune_layers"):
        if isinstance(compress.get(k), str):
            compress[k] = (compress[k],)
        elif k in compress:
            compress[k] = tuple(compress[k])
    opts = replace(base or CompileOptions(), **top)
    return replace(
        opts, quant=replace(opts.quant, **quant), compress=replace(opts.compress, **compress)
    )


# --------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class Compiled:
    """A compiled bundle: where it is, its manifest, report and facts, and the verdicts."""

    bundle: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    facts: dict[str, Any]
    evaluation: dict[str, Any] | None  # closed-loop figures (``eval=``)
    verdict: dict[str, Any]  # status "pass" | "pending-device", engine_checked, checked
    criteria_failures: tuple[str, ...]  # every bound that did not hold (the bundle is written)
    session_id: str | None = None  # the store session that recorded it

    @property
    def engine_checked(self) -> bool:
        """Whether the engine itself ran here and matched the source (else only its ONNX)."""
        return bool(self.verdict["engine_checked"])

    def to_json(self) -> dict[str, Any]:
        """What ``robopt-compile --json`` prints (without ``--device`` results)."""
        return {
            "bundle": str(self.bundle), "verdict": self.verdict, "manifest": self.manifest,
            "report": self.report, "evaluation": self.evaluation,
            "criteria_failures": list(self.criteria_failures),
        }  # fmt: skip


def _engine_verdict(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the compile checked: ``pass`` when the engine itself ran and matched the source,
    ``pending-device`` when only its ONNX could be checked here (the engine is built or run on
    the device, where robopt-bench checks it). A failed check never gets this far (exit 4)."""
    eng = (manifest.get("parity") or {}).get("engine") or {}
    if "graphs" in manifest or eng.get("engine_checked", True):
        text = eng.get("checked") or f"{manifest['backend']} engine(s) checked here"
        return {"status": "pass", "engine_checked": True, "checked": text}
    text = eng.get("checked") or "ONNX checked in ONNX Runtime; engine checked on the device"
    return {"status": "pending-device", "engine_checked": False, "checked": text}


def _criteria_failures(report: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    """Every bound the user set that did not hold (for --fail-on-criteria)."""
    out = []
    q = report.get("quantization") or {}
    if q.get("rolled_back"):
        out.append(f"accuracy guard rolled back to fp32: {q.get('rollback_reason')}")
    for step in (report.get("compression") or {}).get("steps", []):
        if step.get("rolled_back"):
            out.append(f"compression: {step.get('rollback_reason', 'a step was rolled back')}")
    crit = (evaluation or {}).get("criteria")
    if crit and not crit["passed"]:
        out.extend(f"closed loop: {f}" for f in crit["failures"])
    return out


def compile(
    source: Any,
    *,
    out: str | Path,
    target: str | None = None,
    example_inputs: Any = None,
    options: CompileOptions | None = None,
    force: bool = False,
    progress: Progress | None = None,
    store: StorePath = None,
    record: bool = True,
    command: Sequence[str] | None = None,
    resume: Any = None,
    **option_fields: Any,
) -> Compiled:
    """Compile ``source`` for a board into a checked, deployable bundle at ``out``.

    Args:
        source: see the module docstring; a module with ``example_inputs``.
        out: the bundle folder; refused if it exists, unless ``force`` (which replaces only a
            bundle robopt wrote). Nothing is left half-written on failure.
        target: a board profile name (``host`` by default; ``robopt_compile.api.targets()``).
        options: ``CompileOptions``; ``option_fields`` replace its fields
            (:func:`compile_options`).
        progress: called with (stage, event, seconds) as stages start and finish.
        store, record: the store session recording the compile (``record=False``: none).
        command: the command line to record for ``--resume`` (the CLI's; None from Python).
        resume: a session claimed by :func:`resume` to go on in (the CLI's ``--resume``).

    Raises:
        InputError (2), BackendUnavailableError / BuildError (3), CheckFailedError (4).
    """
    from robopt_compile.compile.pipeline import compile_model

    src = _source(source, example_inputs)
    opts = compile_options(options, target=target, **option_fields)
    progress = progress or _quiet
    out = Path(out)
    session_id = None
    if not record and resume is None:
        result = compile_model(src, out, opts, force=force, progress=progress)
    else:
        from robopt_compile.compile.session import compile_session

        where = str(opts.hwprofile) if opts.hwprofile else opts.target
        spec = None if store is None else str(store)
        with compile_session(src, where, command, progress, spec, resume) as recorder:
            result = compile_model(src, out, opts, force=force, progress=recorder)
            recorder.finished(result)
        session_id = getattr(recorder.session, "id", None)
    failures = tuple(_criteria_failures(result.report, result.evaluation))
    return Compiled(out, result.manifest, result.report, result.facts, result.evaluation,
                    _engine_verdict(result.manifest), failures, session_id)  # fmt: skip


def compile_fleet(
    source: str,
    *,
    out: str | Path,
    targets: Sequence[str],
    options: CompileOptions | None = None,
    force: bool = False,
    log: Log | None = None,
    warn: Warn | None = None,
    **option_fields: Any,
) -> dict[str, Any]:
    """One bundle per board in ``targets`` at ``out/<board>/`` (``--target a,b,c``), built in
    parallel on ``options.executor`` (docs/SCALE.md). A board that fails does not stop the
    others; the summary (also ``out/fleet.json``) lists each board's bundle or error.

    Raises:
        InputError: an unknown board or a bad option (before any build);
        NoBoardBuiltError (3): every board failed (nothing written).
    """
    from robopt_compile.compile.fleet import compile_fleet as run
    from robopt_compile.executor import open_executor

    opts = compile_options(options, **option_fields)
    with open_executor(opts.executor, warn) as ex:
        return run(_source(source, None), Path(out), list(targets), opts, ex, force=force,
                   log=log or _quiet)  # fmt: skip


# --------------------------------------------------------------------------- plan


def plan(
    source: Any,
    *,
    out: str | Path | None = None,
    criteria: OptimizationCriteria | Mapping[str, Any] | None = None,
    recipe: str | Path | None = None,
    target: str | None = None,
    example_inputs: Any = None,
    options: CompileOptions | None = None,
    plan_only: bool = False,
    force: bool = False,
    store: StorePath = None,
    log: Log | None = None,
    progress: Progress | None = None,
    **option_fields: Any,
) -> SearchResult:
    """Let robopt choose the backend and precision (docs/PLANNER.md): rank the plans, build
    and measure the promising ones, keep the best that meets every bound at ``out``.

    Args:
        criteria: ``OptimizationCriteria`` or its fields (``max_latency_ms``, ``objective``,
            ``max_accuracy_drop``, ``search_budget_s`` ...), over a ``recipe`` file's.
        options, option_fields: the compile options every plan starts from; ``backend``
            restricts the search to one backend. A trained zoo policy calibrates on its task.
        plan_only: rank and predict only; nothing is built and ``out`` is not needed.
        store: the store that keeps the session, the measurements and the planner's memory.
        log: called with one line per decision and build.
        progress: called ``(line, "tick", done fraction)`` as each build starts.

    Returns:
        The ``SearchResult``: ``best`` is None when no plan met every bound (nothing written).
    """
    from robopt_compile.plan.search import criteria_from, run_search

    src = _source(source, example_inputs)
    opts = compile_options(options, target=target, **option_fields)
    crit = criteria_from(criteria, recipe)
    if out is None and not plan_only:
        raise InputError("plan: give out (the bundle folder), or plan_only=True.")
    dest = Path(out) if out is not None else Path("plan-only")  # never written with plan_only
    return run_search(src, dest, opts, crit, plan_only=plan_only, force=force,
                      log=log or _quiet, store=store, progress=progress)  # fmt: skip


def resume(
    source: str,
    session_id: str,
    *,
    rerun: Callable[[list[str], Any], None] | None = None,
    store: StorePath = None,
    log: Log | None = None,
) -> SearchResult | None:
    """Continue an interrupted session (an id or an unambiguous prefix) of ``source``.

    A planner search goes on without rebuilding the plans it measured and returns its
    ``SearchResult``. A plain compile recorded its command line: ``rerun(argv, session)`` is
    called from the folder it started in to parse it and compile with ``resume=session``
    (the CLI does); the stages it finished come back from the build cache. Returns None then.

    Raises:
        InputError: another source, an unknown session, a finished or running one, or a
            compile session without ``rerun``. StoreError: no store there.
    """
    from robopt_compile.compile.session import compile_command, resume_compile
    from robopt_compile.plan.resume import is_search_session, resume_search
    from robopt_compile.store import open_store

    db = open_store(None if store is None else str(store), create=False)
    try:
        rec = db.get_session(session_id)
        if rec.source != str(source):
            raise InputError(
                f"session {rec.id[:12]} optimized {rec.source}, not {source}: give the "
                "same SOURCE (its other settings come from the session)."
            )
        if is_search_session(rec):
            return resume_search(db, rec.id, log=log or _quiet)
        if rerun is None and compile_command(rec) is not None:
            raise InputError(
                f"session {rec.id[:12]} is a compile: resume it with "
                f"robopt-compile {source} --resume {rec.id[:12]}."
            )
        resume_compile(db, rec, rerun or _quiet)
        return None
    finally:
        db.close()


# --------------------------------------------------------------------------- inspect


def inspect(path: str | Path) -> ModelInfo:
    """Load and check an ``.onnx`` file (the ONNX checker and strict shape inference, as a
    compile does before anything else) and describe it (``compile/inspect.py``).

    Raises:
        ModelLoadError: not a readable, valid ONNX model.
    """
    from robopt_compile.compile.inspect import inspect_onnx

    return inspect_onnx(Path(path))


# --------------------------------------------------------------------------- analyze


@dataclass(frozen=True)
class Analysis:
    """Facts about a model for a target: ops, params, FLOPs, memory, roofline, support."""

    source: str
    target: str
    description: str  # the target's
    parity: dict[str, Any]  # the export's checks against the source
    facts: dict[str, Any]  # by analysis pass, plus "summary" and "timing"

    @property
    def summary(self) -> dict[str, Any]:
        return self.facts.get("summary", {})

    def table(self, top: int = 10) -> str:
        """The facts for people (what ``robopt-compile analyze`` prints)."""
        from robopt_compile.compile.analysis import format_table

        return format_table(self.facts, top=top)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "parity": self.parity,
                "facts": self.facts}  # fmt: skip


def analyze(
    source: Any,
    *,
    target: str | None = None,
    precision: str | None = None,
    example_inputs: Any = None,
    options: CompileOptions | None = None,
    progress: Progress | None = None,
    **option_fields: Any,
) -> Analysis:
    """Export and check ``source``, simplify it, and run every analysis pass for ``target``;
    ``precision`` is what the roofline estimate assumes (fp32 by default)."""
    from robopt_compile.compile.analysis import analyze_source

    src = _source(source, example_inputs)
    opts = compile_options(options, target=target, precision=precision, **option_fields)
    profile, loaded, facts = analyze_source(src, opts, progress)
    return Analysis(str(src), profile.name, profile.description, loaded.parity, facts)


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class Evaluation:
    """Original vs optimized: closed-loop task figures or open-loop action errors."""

    kind: str  # "closed_loop" | "open_loop" | "recording" (``record=``: nothing evaluated)
    result: dict[str, Any]
    path: Path | None  # the saved result in BUNDLE/results/

    @property
    def criteria_failures(self) -> list[str]:
        from robopt_compile.evaluate.run import criteria_failures

        return criteria_failures(self.result)

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return dict(self.result)
        return {**self.result, "path": str(self.path)}


def evaluate(
    bundle: str | Path,
    *,
    task: str | None = None,
    episodes: int = 50,
    seed: int = 0,
    reference: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    dataset: str | Path | None = None,
    gripper_dim: int | None = None,
    record: str | Path | None = None,
    metric: str | None = None,
    max_return_drop: float | None = None,
    max_success_drop: float | None = None,
    threads: int | None = 1,
    progress: Progress | None = None,
    warn: Warn | None = None,
    executor: str | None = None,
    resume: bool = False,
    success_return: float | None = None,
) -> Evaluation:
    """Does the engine in ``bundle`` still do the task? (docs/EVALUATION.md)

    Closed loop by default: the original (``reference``, else the bundle's recorded source in
    fp32) and the engine drive the model's simulated task (``task``, else the zoo model's) on
    the same ``episodes`` seeds; ``compare`` adds bundles. ``dataset``: open loop on recorded
    observations. ``record``: record the original's episodes to that .npz and stop. The result
    is saved in ``bundle/results/`` and the bundle's report regenerated (problems: ``warn``).
    ``executor``: where the episodes run (``local``, ``ray``, ``ray://HOST:PORT``, ``auto``;
    docs/SCALE.md); the per-seed results are the same everywhere. On a cluster (or with
    ``resume``) each batch of episodes is recorded in the store as it finishes; ``resume``
    reads back those an earlier, killed run of the same evaluation recorded. ``task`` may be
    a gymnasium id or ``module:factory`` (``tasks/gym.py``); ``success_return`` is then its
    success threshold on the return, when the environment reports no ``info["success"]``.
    """
    from robopt_compile.compile.frontend import load_fp32
    from robopt_compile.evaluate import Criteria
    from robopt_compile.evaluate.run import run_evaluation
    from robopt_compile.executor import open_executor
    from robopt_compile.report.write import regenerate_reports
    from robopt_compile.store.cache import BuildCache, UnitMemo

    if success_return is not None:
        from robopt_compile.tasks import TASKS
        from robopt_compile.tasks.gym import task_name

        if task is None or task in TASKS:
            raise InputError(
                "--success-return applies to a user task (a gymnasium id or module:factory "
                "given with --task); robopt's own tasks define their success."
            )
        task = task_name(task, success_return)
    with contextlib.ExitStack() as stack:
        ex = stack.enter_context(open_executor(executor, warn))
        memo = None
        if dataset is None and record is None and (resume or ex.name != "local"):
            cache = BuildCache.open(warn or (lambda m: None))
            if cache is not None:
                stack.callback(cache.close)
                memo = UnitMemo(cache, "episodes", reuse=resume)
            elif resume:
                raise InputError("--resume needs the store, which cannot be opened (above).")
        result, path = run_evaluation(
            bundle, task=task, episodes=episodes, seed=seed,
            reference=None if reference is None else str(reference), compare=compare,
            dataset=dataset, gripper_dim=gripper_dim, record=record, metric=metric,
            criteria=Criteria(max_return_drop, max_success_drop), threads=threads,
            progress=progress, load=load_fp32, executor=ex, memo=memo,
        )  # fmt: skip
    if record is not None:
        return Evaluation("recording", result, None)
    regenerate_reports(bundle, warn)
    return Evaluation(result["kind"], result, path)


# --------------------------------------------------------------------------- bench


@dataclass(frozen=True)
class Benchmark:
    """The harness's result (latency percentiles, fidelity, memory, control-loop figures)."""

    result: dict[str, Any]
    saved: Path | None = None  # a remote result, saved in BUNDLE/results/

    @property
    def latency(self) -> dict[str, Any]:
        return self.result["latency"]

    @property
    def passed(self) -> bool:
        """Whether the engine's outputs matched the bundle's reference outputs."""
        return bool(self.result["fidelity"]["passed"])

    def to_json(self) -> dict[str, Any]:
        return self.result


def bench(
    bundle: str | Path,
    *,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    control_rate: float | None = None,
    verify: bool = True,
    device: str | None = None,
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
    warn: Warn | None = None,
    store: StorePath = None,
    queue_timeout_s: float = 3600.0,
) -> Benchmark:
    """Benchmark a bundle here, or on the robot serving ``robopt-bench serve`` at ``device``
    (with its ``token``; ``bench.remote.read_token_file`` reads one), or on the device farm
    of ``store``: ``device`` a registered robot's name or ``any:BOARD`` (no token: the
    registry has it; queued up to ``queue_timeout_s``). Fidelity against the reference
    outputs, then ``runs`` timed runs. A remote result is saved in the bundle's ``results/``
    and its report regenerated. A fidelity failure is in the result (``passed``), not
    raised; ``progress`` gets the number of timed runs just finished."""
    from robopt_compile.bench.remote import is_device_name

    if device is not None and token is None and is_device_name(device):
        from robopt_compile.bench.remote import save_remote_result
        from robopt_compile.farm import bench_on_farm
        from robopt_compile.report.write import regenerate_reports
        from robopt_compile.store import open_store

        with open_store(None if store is None else str(store)) as st:
            r = bench_on_farm(
                st, bundle, device, runs=runs, warmup=warmup, threads=threads,
                control_rate=control_rate, verify=verify, progress=progress, warn=warn,
                queue_timeout_s=queue_timeout_s,
            )  # fmt: skip
        saved = save_remote_result(bundle, r)
        regenerate_reports(bundle, warn)
        return Benchmark(r, saved)
    if (device is None) != (token is None):
        raise InputError("a device URL and its token go together: give both or neither.")
    if device is None:
        from robopt_compile.bench.harness import run_benchmark

        r = run_benchmark(
            bundle, runs=runs, warmup=warmup, threads=threads, control_rate=control_rate,
            progress=progress, verify=verify,
        )  # fmt: skip
        return Benchmark(r)
    from robopt_compile.bench.remote import remote_benchmark, save_remote_result
    from robopt_compile.report.write import regenerate_reports

    assert token is not None
    r = remote_benchmark(
        bundle, device, token, runs=runs, warmup=warmup, threads=threads,
        control_rate=control_rate, verify=verify, progress=progress, on_retry=warn,
    )  # fmt: skip
    saved = save_remote_result(bundle, r)
    regenerate_reports(bundle, warn)  # the remote figures join report.html
    return Benchmark(r, saved)


# --------------------------------------------------------------------------- bundles, boards


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
