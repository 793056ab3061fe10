"""The planner's search: build and measure the most promising plans, keep the best.

``plan_and_search`` exports the model once to get its analysis facts, asks the planner
(``robopt_compile.plan.planner``) for ranked candidate plans, and then, within the search budget,
compiles each proposed plan with the normal pipeline (so every plan gets the same checks,
accuracy guard and bundle as a hand-written command), benchmarks it with the harness on this
machine, feeds the measurement back into the predictions of the plans not yet tried, and
finally keeps the best plan that meets every bound as the output bundle. A plan that fails to
build is recorded and skipped (the next candidate is tried). Plans whose engine cannot run
here are ranked on estimates only and never reported as measured.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError, RoboptError
from robopt_compile.plan.facts import search_facts
from robopt_compile.plan.measure import OUTPUT_MEASURE, applied_label, output_drop
from robopt_compile.plan.planner import (
    Candidate,
    Decision,
    Facts,
    History,
    Measured,
    OptimizationCriteria,
    candidates,
    choose,
    pareto,
    plan,
    predict,
    with_measurement,
)
from robopt_compile.precision import PRECISIONS

Log = Callable[[str], None]
DEFAULT_MAX_BUILDS = 6


@dataclass
class SearchResult:
    decisions: list[Decision]
    measured: list[Measured] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    best: Measured | None = None
    front: list[Measured] = field(default_factory=list)
    choice_notes: list[dict[str, Any]] = field(default_factory=list)
    estimate_only: list[str] = field(default_factory=list)  # backends that cannot run here
    seconds: float = 0.0
    stopped: str = ""  # why the search stopped
    session_id: str | None = None  # the store's session, when one was kept
    criteria: OptimizationCriteria | None = None  # what the search was held to
    accuracy_measure: str | None = None  # the one measure every plan's drop is in

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "plan",
            "criteria": None if self.criteria is None else self.criteria.to_json(),
            "decisions": [d.to_json() for d in self.decisions],
            "measured": [m.to_json() for m in self.measured],
            "failed": self.failed,
            "best": None if self.best is None else self.best.to_json(),
            "pareto": [m.candidate.label for m in self.front],
            "choice": self.choice_notes,
            "estimate_only": self.estimate_only,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "session": self.session_id,
            "accuracy_measure": self.accuracy_measure,
        }


def plan_compression(c: Candidate, base: Any) -> Any:
    """The compression options of a plan: its channel pruning or architecture search
    (``--search-arch latency=Rx``), recovered by distillation.

    A pruned plan is distilled on the calibration inputs (``--distill`` as given, else its
    defaults) when the search has real calibration data (a file, a folder or ``task``
    recordings); pruning a trained policy without recovery rarely keeps its task success.
    With no calibration the plan is pruned only (distilling on random inputs teaches the
    student nothing about the robot's inputs). A plan without pruning carries no ``--distill``.
    """
    comp = base.compress
    if not c.prune and not c.arch:
        return replace(comp, distill=None) if not comp.active else comp
    calib = base.quant.calibration
    distill = comp.distill or ("on" if calib and calib != "random" else None)
    if c.arch:  # the architecture search at that latency ratio, then the same recovery
        return replace(comp, prune=(), search_arch=f"latency={c.arch}x", distill=distill)
    return replace(comp, prune=(f"channels:{c.prune}",), distill=distill)


MEASUREMENT = "planner.measurement"  # result kind of one measured plan in the store


def history_from_store(store: Any, source: str, target: str) -> History:
    """Memory: what earlier planner sessions measured for this model on this target.

    Latency corrections (measured / roofline) come from every earlier measurement of the same
    backend and precision on this target (any model: they describe the runtime on this
    machine); precisions that broke the accuracy bound before for this model go last.
    """
    import json
    import statistics

    rows = store.query(
        "SELECT s.source, r.data FROM results r JOIN sessions s ON s.id = r.session_id "
        "WHERE r.kind = ? AND s.target = ?",
        (MEASUREMENT, target),
    )
    ratios: dict[tuple[str, str], list[float]] = {}
    broke: set[str] = set()
    for row in rows:
        d = json.loads(row["data"])
        key = (d["backend"], d["precision"])
        if d.get("ratio") is not None:
            ratios.setdefault(key, []).append(float(d["ratio"]))
        if row["source"] == source and d.get("broke_accuracy"):
            broke.add(d["precision"])
    return History(
        ratios={k: statistics.median(v) for k, v in ratios.items()}, broke_accuracy=broke
    )


def plan_and_search(
    source: str,
    out: Path,
    base: Any,  # CompileOptions
    criteria: OptimizationCriteria,
    *,
    plan_only: bool = False,
    backends: tuple[str, ...] | None = None,
    history: History | None = None,
    max_builds: int = DEFAULT_MAX_BUILDS,
    bench_runs: int = 200,
    force: bool = False,
    log: Log = lambda m: None,
    store: Any = None,
    resume: Any = None,  # (Session, prior measured, prior failed) from ``resume_search``
    progress: Any = None,  # (line, "tick", done fraction) per build: the CLI's progress bar
    executor: Any = None,  # executor.Executor: where plans are built and measured
) -> SearchResult:
    """Plan, then build and measure within the budget; the best plan's bundle goes to ``out``.

    With an ``executor`` of N workers, plans are built and measured N at a time (a wave), and
    the measurements of a wave correct the predictions for the rest, as one build does alone.
    """
    from robopt_compile.bench.machine import machine_profile, same_hardware
    from robopt_compile.compile import bundle as bundle_mod
    from robopt_compile.compile.resolve import resolve_profile, target_status
    from robopt_compile.evaluate import evaluation_drop
    from robopt_compile.executor import Executor, unpack_tree
    from robopt_compile.plan.distributed import build_plan
    from robopt_compile.targets import TARGETS, get_backend

    t0 = time.perf_counter()
    profile = resolve_profile(base)
    if not plan_only:
        bundle_mod.check_output_dir(out, force)
    names = [b for b in (backends or profile.backends) if b in TARGETS]
    status = {b: target_status(profile, b) for b in names}
    buildable = [b for b in names if status[b]["build"] in ("yes", "deferred")]
    if not buildable:
        raise InputError(
            f"no backend of target {profile.name!r} builds here: "
            + "; ".join(f"{b}: {status[b]['reason']}" for b in names)
        )
    runs_here = [b for b in buildable if status[b]["run"]]
    cands = candidates(
        buildable,
        {b: get_backend(b).precisions for b in buildable},
        profile.precisions,
        criteria,
    )
    calib = base.quant.calibration
    kept, pre_rejected = [], []
    for c in cands:
        if PRECISIONS[c.precision].calibrated and not calib:
            pre_rejected.append(Decision(c, "reject", "static int8 needs --calibration"))
        elif c.backend == "tvm" and not base.tune_trials:
            pre_rejected.append(Decision(c, "reject", (
                "untuned TVM runs 100-1000x slower than ONNX Runtime here (docs/TVM.md); "
                "give --tune-trials N to let the planner try it")))  # fmt: skip
        else:
            kept.append(c)
    precisions = {PRECISIONS[c.precision].compute for c in kept} | {"fp32"}
    aside = f" ({len(pre_rejected)} of them rejected before ranking)" if pre_rejected else ""
    log(f"planning: {len(cands)} candidate plans on {', '.join(buildable)}{aside}")
    facts, ref_inputs, ref_outputs = search_facts(source, base, profile, precisions, log)
    if history is None:
        history = history_from_store(store, source, profile.name) if store else History()
        if history.ratios or history.broke_accuracy:
            log(f"memory: {len(history.ratios)} latency corrections from earlier sessions"
                + (f"; broke accuracy before: {sorted(history.broke_accuracy)}"
                   if history.broke_accuracy else ""))  # fmt: skip
    decisions = plan(kept, facts, criteria, history) + pre_rejected
    result = SearchResult(
        decisions, estimate_only=[b for b in buildable if b not in runs_here], criteria=criteria
    )
    if plan_only:
        result.seconds = time.perf_counter() - t0
        result.stopped = "--plan-only: nothing built"
        return result

    session = None
    tried: set[str] = set()
    if resume is not None:
        session, prior_measured, prior_failed = resume
        result.measured.extend(prior_measured)
        result.failed.extend(prior_failed)
        tried = {m.candidate.label for m in prior_measured} | {f["plan"] for f in prior_failed}
        for m in prior_measured:
            if not m.rolled_back:
                roof = facts.roofline_ms.get(
                    PRECISIONS[m.candidate.precision].compute, float("nan")
                )
                history = with_measurement(history, m.candidate, m.latency_ms["p50"], roof)
        log(f"resuming session {session.id[:12]}: {len(tried)} plan(s) already done")
    elif store is not None:
        run = {
            "out": str(out), "target": base.target,
            "hwprofile": None if base.hwprofile is None else str(base.hwprofile),
            "threads": base.threads, "seed": base.seed, "calibration": calib,
            "max_drop": base.quant.max_drop, "backends": list(backends or ()),
            "max_builds": max_builds, "bench_runs": bench_runs,
            "eval": None if base.eval is None else asdict(base.eval),
            "executor": base.executor,
        }  # fmt: skip
        session = store.create_session(
            source, profile.name, {**criteria.to_json(), RUN_KEY: run},
            [d.to_json() for d in decisions if d.verdict == "propose"],
        )  # fmt: skip
        for d in decisions:
            session.emit("metric", name="decision", **d.to_json())
    # Candidate bundles live in the system's temporary folder (a kill -9 leaves them there,
    # never beside the user's output); the chosen one is copied into ``out``.
    work = Path(tempfile.mkdtemp(prefix="robopt-search-"))
    try:
        queue = [d.candidate for d in decisions if d.verdict == "propose"
                 and d.candidate.backend in runs_here
                 and d.candidate.label not in tried]  # fmt: skip
        builds = len(tried)
        ex = executor if executor is not None else Executor()
        local = ex.name == "local"
        here = machine_profile()
        while queue:
            if builds >= max_builds:
                result.stopped = f"{max_builds} builds (the search's build limit)"
                break
            spent = time.perf_counter() - t0
            if criteria.search_budget_s is not None and spent > criteria.search_budget_s:
                result.stopped = f"search budget {criteria.search_budget_s:g} s spent"
                break
            # A wave: as many plans as the executor has workers (one here, as before).
            wave: list[tuple[int, Candidate, Path, Any]] = []
            while queue and len(wave) < ex.workers and builds < max_builds:
                c = queue.pop(0)
                builds += 1
                log(f"[{builds}] building {c.label} ..."
                    + ("" if local else f" (on {ex.name})"))  # fmt: skip
                opts = replace(base, backend=c.backend, precision=c.precision,
                               compress=plan_compression(c, base), executor="local")  # fmt: skip
                wave.append((builds, c, work / c.key().replace("/", "_"), opts))
            total = min(max_builds, builds + len(queue))
            if progress is not None:
                progress(f"plan {builds}/{total}: " + ", ".join(w[1].label for w in wave), "tick",
                         (builds - len(wave)) / total)  # fmt: skip
            outs = ex.map(build_plan, [(source, str(b) if local else None, o, bench_runs)
                                       for _, _, b, o in wave])  # fmt: skip
            for (n, c, bdir, _), r in zip(wave, outs, strict=True):
                if session is not None:
                    cfg = {"backend": c.backend, "precision": c.precision, "prune": c.prune,
                           "arch": c.arch}  # fmt: skip
                    session.start_step(c.label, config=cfg)
                try:
                    if r["error"] is not None:
                        raise InputError(r["error"])
                    if r["tar"] is not None:
                        unpack_tree(r["tar"], bdir)
                    lat = r["latency"]
                    rolled = bool((r["report"].get("quantization") or {}).get("rolled_back"))
                    judged = evaluation_drop(r["evaluation"])  # --eval: the task decides
                    if judged is not None:
                        drop, metric = judged  # "task:return" or "task:success"
                    else:
                        drop, metric = output_drop(bdir, ref_inputs, ref_outputs), OUTPUT_MEASURE
                    result.accuracy_measure = metric
                    applied = applied_label(c, r["manifest"], r["report"])
                except RoboptError as exc:  # graceful degradation: record, try the next plan
                    msg = str(exc).splitlines()[0]
                    log(f"[{n}] {c.label} failed: {msg}")
                    result.failed.append({"plan": c.label, "error": msg})
                    if session is not None:
                        session.fail_step(msg)
                    continue
                elsewhere = not same_hardware(r["machine"], here)
                m = Measured(
                    candidate=c,
                    latency_ms={"p50": lat["p50"], "p99": lat["p99"]},
                    size_mb=r["size_mb"],
                    memory_mb=lat["memory_mb"],
                    accuracy_drop=drop,
                    bundle=str(bdir),
                    rolled_back=rolled,
                    accuracy_metric=metric,
                    applied=applied,
                    measured_on=None if not elsewhere else
                    f"{r['machine']['cpu_model']} on {r['machine']['host']}",
                )  # fmt: skip
                result.measured.append(m)
                shown = "-" if drop is None else f"{drop:.3g} ({metric})"
                other = f"; measured on other hardware: {m.measured_on}" if elsewhere else ""
                log(f"[{n}] {c.label}: p50 {lat['p50']:.4g} ms, accuracy drop {shown}"
                    + (f"; built as {applied}" if applied else "") + other)  # fmt: skip
                roof = facts.roofline_ms.get(PRECISIONS[c.precision].compute, float("nan"))
                # a rolled-back plan ran another engine (fp32, or unpruned): it corrects nothing
                if not rolled and not elsewhere and applied is None:
                    history = with_measurement(history, c, lat["p50"], roof)
                if session is not None:
                    from robopt_compile.plan.planner import violations

                    v = violations(m, criteria)
                    m.artifact = session.put_tree(bdir)  # resume needs the bundle itself
                    session.finish_step(output_hash=m.artifact, results={MEASUREMENT: {
                        **m.to_json(), "backend": c.backend, "precision": c.precision,
                        "roofline_ms": roof,
                        "ratio": None if rolled else history.ratios.get((c.backend, c.precision)),
                        "violations": v,
                        "broke_accuracy": rolled or any(x.startswith("accuracy") for x in v),
                    }})  # fmt: skip
            # Re-predict what is left with the corrections these measurements gave.
            queue = [q for q in queue if not _now_hopeless(q, facts, criteria, history)]
        else:
            result.stopped = "every proposed plan that runs here was measured"
        result.best, result.choice_notes = choose(result.measured, criteria)
        result.front = pareto(result.measured, criteria)
        result.seconds = time.perf_counter() - t0
        best = result.best
        if best is not None and (best.bundle is None or not Path(best.bundle).is_dir()):
            # Measured before a resume: its bundle comes back from the store.
            if store is None or not best.artifact:
                raise InputError(
                    f"the chosen plan {best.candidate.label}'s bundle is not in the store; run "
                    "the search again without --resume."
                )
            dest = work / "resumed-best"
            store.materialize_tree(best.artifact, dest)
            best.bundle = str(dest)
        if result.best is not None and result.best.bundle:
            from robopt_compile.bench.results import save_result

            with bundle_mod.staged_output(out, force) as tmp:
                shutil.rmtree(tmp)
                shutil.copytree(result.best.bundle, tmp)
                result.best.bundle = str(out)
                save_result(tmp, "plan", result.to_json())  # published with the bundle
                from robopt_compile.report.write import write_reports

                try:  # the report shows the search (its planner section reads plan.json)
                    write_reports(tmp, shown=out)
                except RoboptError as exc:  # the bundle stands without a refreshed report
                    log(f"report not refreshed with the search: {exc}")
        if session is not None:
            summary = {
                "best": result.best.candidate.label if result.best else None,
                "measured": len(result.measured),
                "failed": len(result.failed),
                "stopped": result.stopped,
                "bundle": str(out) if result.best else None,
            }
            if result.best is not None:
                tree = session.put_tree(out)
                session.record_model(f"{source} [{result.best.candidate.label}]", tree,
                                     None, pass_name="planner")  # fmt: skip
            session.finish(summary)
            result.session_id = session.id
    except BaseException as exc:
        if session is not None:
            if isinstance(exc, KeyboardInterrupt):
                session.cancel("interrupted by the user")
            else:
                session.fail(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def criteria_from(
    given: OptimizationCriteria | Mapping[str, Any] | None = None, recipe: str | Path | None = None
) -> OptimizationCriteria:
    """The criteria a search is held to: a recipe file's, with ``given`` over them.

    Raises:
        InputError: a bad recipe, an unknown criterion or a bad value (one line).
    """
    from dataclasses import fields

    from robopt_compile.plan.recipe import load_recipe

    if isinstance(given, OptimizationCriteria):
        if recipe is not None:
            raise InputError("give the criteria as a mapping to combine them with a recipe.")
        return given
    given = dict(given or {})
    known = {f.name for f in fields(OptimizationCriteria)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"unknown criteria {unknown}; known: {', '.join(sorted(known))}.")
    return OptimizationCriteria(**{**(load_recipe(Path(recipe)) if recipe else {}), **given})


def planner_options(source: str, opts: Any, criteria: OptimizationCriteria) -> Any:
    """The compile options every plan starts from: a trained policy with a task calibrates on
    what it sees doing the task (unless calibration data was given), and the accuracy bound
    is the accuracy guard's unless one was set for the guard itself."""
    from robopt_compile.evaluate import task_for_source

    if opts.quant.calibration is None and task_for_source(source):
        opts = replace(opts, quant=replace(opts.quant, calibration="task"))
    if criteria.max_accuracy_drop is not None and opts.quant.max_drop is None:
        opts = replace(opts, quant=replace(opts.quant, max_drop=criteria.max_accuracy_drop))
    return opts


def run_search(
    source: str,
    out: Path,
    opts: Any,  # CompileOptions
    criteria: OptimizationCriteria,
    *,
    plan_only: bool = False,
    force: bool = False,
    log: Log = lambda m: None,
    store: str | Path | None = None,
    progress: Any = None,
) -> SearchResult:
    """Planner mode as ``robopt-compile`` runs it: the planner's options
    (:func:`planner_options`), ``opts.backend`` (if any) as the only backend, and the session,
    measurements and memory in the store named by ``store`` (default: ``$ROBOPT_STORE``)."""
    from robopt_compile.executor import open_executor
    from robopt_compile.store import open_store

    opts = planner_options(source, opts, criteria)
    backends = (opts.backend,) if opts.backend is not None else None
    db = open_store(None if store is None else str(store))
    try:
        with open_executor("local" if plan_only else opts.executor, log) as ex:
            return plan_and_search(
                source, out, opts, criteria, plan_only=plan_only, backends=backends,
                force=force, log=log, store=db, progress=progress, executor=ex,
            )  # fmt: skip
    finally:
        db.close()


RUN_KEY = "_run"  # the search settings kept with a session's criteria, for --resume


def _now_hopeless(c: Candidate, facts: Facts, criteria: OptimizationCriteria, h: History) -> bool:
    if criteria.max_latency_ms is None:
        return False
    return predict(c, facts, h).latency_low_ms > criteria.max_latency_ms
