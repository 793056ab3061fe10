"""Compile, plan and resume: the calls that write bundles (``robopt-compile``, ``plan``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robopt_compile.api.common import (
    Log,
    Progress,
    StorePath,
    Warn,
    compile_options,
    quiet,
    source_of,
)
from robopt_compile.errors import InputError

if TYPE_CHECKING:
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.plan.planner import OptimizationCriteria
    from robopt_compile.plan.search import SearchResult


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

    src = source_of(source, example_inputs)
    opts = compile_options(options, target=target, **option_fields)
    progress = progress or quiet
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
        return run(source_of(source, None), Path(out), list(targets), opts, ex, force=force,
                   log=log or quiet)  # fmt: skip


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

    src = source_of(source, example_inputs)
    opts = compile_options(options, target=target, **option_fields)
    crit = criteria_from(criteria, recipe)
    if out is None and not plan_only:
        raise InputError("plan: give out (the bundle folder), or plan_only=True.")
    dest = Path(out) if out is not None else Path("plan-only")  # never written with plan_only
    return run_search(src, dest, opts, crit, plan_only=plan_only, force=force,
                      log=log or quiet, store=store, progress=progress)  # fmt: skip


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
            return resume_search(db, rec.id, log=log or quiet)
        if rerun is None and compile_command(rec) is not None:
            raise InputError(
                f"session {rec.id[:12]} is a compile: resume it with "
                f"robopt-compile {source} --resume {rec.id[:12]}."
            )
        resume_compile(db, rec, rerun or quiet)
        return None
    finally:
        db.close()
