"""``--resume ID`` for a planner search: the plans measured before come back from the store
(their measurements and bundles), a plan whose build was cut off is built again, and the choice
is made over all, with the executor and settings the search was started with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.plan.planner import Candidate, Measured
from robopt_compile.plan.search import MEASUREMENT, RUN_KEY, Log, SearchResult, plan_and_search


def is_search_session(record: Any) -> bool:
    """Whether a store session is a planner search (else a plain compile)."""
    return RUN_KEY in (record.criteria or {})


def resume_search(
    store: Any, session_id: str, log: Log = lambda m: None, force: bool = False
) -> SearchResult:
    """Continue an interrupted planner session from its last finished step.

    The plans measured before are not built again (their measurements and bundles come from
    the store); a plan whose build was cut off is built again; the choice is made over all.
    """
    import json

    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.plan.planner import OptimizationCriteria

    rec = store.get_session(session_id)
    crit_json = dict(rec.criteria)
    run = crit_json.pop(RUN_KEY, None)
    if run is None or rec.source is None:
        raise InputError(f"session {rec.id[:12]} is not a planner session; it cannot be resumed.")
    for k in ("techniques", "precisions"):
        if crit_json.get(k) is not None:
            crit_json[k] = tuple(crit_json[k])
    criteria = OptimizationCriteria(**crit_json)
    from robopt_compile.evaluate import EvalSpec

    base = CompileOptions(
        target=run["target"],
        hwprofile=None if run["hwprofile"] is None else Path(run["hwprofile"]),
        threads=run["threads"],
        seed=run["seed"],
        quant=QuantOptions(calibration=run["calibration"], max_drop=run["max_drop"]),
        eval=EvalSpec(**run["eval"]) if run.get("eval") else None,
        executor=run.get("executor", "local"),
    )
    session = store.resume_session(rec.id)  # refuses a running or finished session
    measured, failed = [], []
    steps = {st.index: st for st in store.steps(rec.id)}
    for r in store.results(rec.id):
        if r.kind != MEASUREMENT:
            continue
        d = r.data if isinstance(r.data, dict) else json.loads(r.data)
        st = steps.get(r.step_index)
        measured.append(Measured(
            candidate=Candidate(d["backend"], d["precision"], d.get("prune"), d.get("arch")),
            latency_ms=d["latency_ms"], size_mb=d["size_mb"], memory_mb=d.get("memory_mb"),
            accuracy_drop=d.get("accuracy_drop"), bundle=None, rolled_back=d["rolled_back"],
            artifact=st.output_hash if st else None, accuracy_metric=d.get("accuracy_metric"),
            applied=d.get("applied"), measured_on=d.get("measured_on"),
        ))  # fmt: skip
    for st in steps.values():
        if st.state == "failed":
            failed.append({"plan": st.name, "error": st.error or "failed"})
    from robopt_compile.executor import open_executor

    with open_executor(base.executor, log) as ex:
        return plan_and_search(
            rec.source, Path(run["out"]), base, criteria,
            backends=tuple(run["backends"]) or None, max_builds=run["max_builds"],
            bench_runs=run["bench_runs"], force=True, log=log, store=store,
            resume=(session, measured, failed), executor=ex,
        )  # fmt: skip
