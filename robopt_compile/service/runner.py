"""One job in its own process: ``python -m robopt_compile.service.runner STORE JOB_ID``.

The worker (:mod:`robopt_compile.service.workers`) starts this for each job it claims. It calls
the same library function the CLI calls (``robopt_compile.api.compile`` / ``plan`` /
``evaluate``), mirrors the compile's stages into the job's ``progress`` and ``stage`` and into
notifications, and ends the job with the result or the one-line error.

- Cancel and timeout arrive as SIGINT: the compile stops where it is, its session is recorded
  ``cancelled`` (the CLI's Ctrl-C path) and nothing is published.
- A compile job records its store session before it starts and keeps its id in the job row: a
  job queued again after a crash (``queue.recover``) goes on in the same session, and the
  stages that finished come back from the build cache (the ``--resume`` machinery).
- The process dies with its worker (``PR_SET_PDEATHSIG``): a ``kill -9`` of the server never
  leaves a compile running unowned. It runs at nice 10, below the API server.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# The stages a plain compile reports, in order: the job's progress is the share finished.
STAGES = ("resolve", "export", "record", "optimize", "compress", "quantize", "analyze", "build",
          "verify", "evaluate", "report")  # fmt: skip


def _die_with_parent() -> None:
    # Jobs are batch work: the API stays responsive on a busy machine (nice 10 under Linux's
    # fair scheduler leaves the server most of a core when both want one).
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the server's recover() still requeues the job
        pass


def job_dir(store: Any, job_id: str) -> Path:
    """Where a job's outputs go: ``<store>/jobs/<job id>/`` (``bundle/`` for a compile)."""
    return Path(store.root) / "jobs" / job_id


class _Progress:
    """The compile's progress callback: the job's stage and progress, a notification per
    finished stage."""

    def __init__(self, store: Any, job: Any) -> None:
        self.store, self.job = store, job
        self.done: list[str] = []

    def __call__(self, stage: str, event: str, seconds: float) -> None:
        from robopt_compile.service import queue
        from robopt_compile.service.notify import notify

        if event == "start" and stage in STAGES:
            frac = min(0.97, len(self.done) / len(STAGES))
            queue.update(self.store, self.job.id, stage=stage, progress=frac)
        elif event == "done" and stage in STAGES:
            self.done.append(stage)
            i = STAGES.index(stage) + 1
            queue.update(self.store, self.job.id, progress=min(0.97, i / len(STAGES)))
            notify(
                self.store,
                "stage_finished",
                job_id=self.job.id,
                session_id=self.job.session_id,
                stage=stage,
                seconds=round(seconds, 3),
            )


def _compile(store: Any, job: Any, request: dict[str, Any]) -> dict[str, Any]:
    import robopt_compile.api as robopt
    from robopt_compile.service import queue
    from robopt_compile.service.notify import notify

    out = job_dir(store, job.id) / "bundle"
    session = None
    if job.session_id:  # an earlier run of this job died (or was cancelled): go on in its session
        store.mark_interrupted()
        rec = store.get_session(job.session_id)
        if rec.state == "finished" and (out / "manifest.json").is_file():
            # It died after publishing the bundle, before ending the job: nothing to redo.
            return {"bundle": str(out), "recovered": True, "backend": rec.summary.get("backend"),
                    "precision": rec.summary.get("precision"), "criteria_failures": []}  # fmt: skip
        session = store.resume_session(job.session_id)
    if session is None:
        session = store.create_session(request["source"], request.get("target") or "host",
                                       {"_job": job.id}, ["compile"])  # fmt: skip
        queue.update(store, job.id, session_id=session.id)
    job = queue.get_job(store, job.id)
    options = dict(request.get("options") or {})
    r = robopt.compile(request["source"], out=out, target=request.get("target"), force=True,
                       progress=_Progress(store, job), resume=session, **options)  # fmt: skip
    if request.get("model"):  # lineage: the uploaded model -> this compile's source -> engine
        from robopt_compile.store.records import dump_json

        edge = dump_json({"session_id": session.id, "step": "compile job", "pass": "job",
                          "config": {"job": job.id}})  # fmt: skip
        store.write(lambda c: c.execute(
            "UPDATE models SET parent_id=?, derived_by=? WHERE session_id=? AND parent_id IS NULL "
            "AND id<>?", (request["model"], edge, session.id, request["model"])))  # fmt: skip
    for f in r.criteria_failures:
        kind = "rolled_back" if "rolled back" in f else "criteria_violated"
        notify(store, kind, job_id=job.id, session_id=r.session_id, message=f)
    return {
        "bundle": str(out),
        "verdict": r.verdict,
        "criteria_failures": list(r.criteria_failures),
        "backend": r.manifest.get("backend"),
        "precision": r.manifest.get("precision"),
        "evaluation": r.evaluation,
        "report": {k: r.report.get(k) for k in ("summary", "quantization") if k in r.report},
    }


def _plan(store: Any, job: Any, request: dict[str, Any]) -> dict[str, Any]:
    import robopt_compile.api as robopt

    out = job_dir(store, job.id) / "bundle"
    plan_only = bool(request.get("plan_only"))
    res = robopt.plan(request["source"], out=None if plan_only else out,
                      criteria=request.get("criteria") or {}, target=request.get("target"),
                      plan_only=plan_only, force=True, store=str(store.root),
                      **(request.get("options") or {}))  # fmt: skip
    data = res.to_json()
    data["bundle"] = str(out) if res.best is not None and not plan_only else None
    return data


def _analyze(store: Any, job: Any, request: dict[str, Any]) -> dict[str, Any]:
    import robopt_compile.api as robopt

    options = dict(request.get("options") or {})
    a = robopt.analyze(request["source"], target=request.get("target"), **options)
    return {"analysis": a.to_json(), "table": a.table()}


def _evaluate(store: Any, job: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Closed loop: the bundle's engine against its recorded source in fp32, paired seeds (the
    call ``robopt-compile evaluate BUNDLE`` makes)."""
    import robopt_compile.api as robopt

    e = robopt.evaluate(request["bundle"], episodes=int(request.get("episodes") or 20))
    return {"evaluation": e.to_json(), "criteria_failures": e.criteria_failures}


def _bench(store: Any, job: Any, request: dict[str, Any]) -> dict[str, Any]:
    """On the device farm (robopt_compile/farm): the registered robot ``device`` (queued while
    another job holds it) or ``any:BOARD`` (the first free robot of the board, moved to
    another one if it drops off)."""
    import robopt_compile.api as robopt
    from robopt_compile.errors import BackendUnavailableError, RoboptError
    from robopt_compile.service.notify import notify

    try:
        b = robopt.bench(request["bundle"], runs=int(request.get("runs") or 100),
                         device=request["device"], store=str(store.db_path))  # fmt: skip
    except BackendUnavailableError as exc:
        notify(store, "device_unreachable", job_id=job.id, device=request["device"],
               error=str(exc))  # fmt: skip
        raise RoboptError(f"device {request['device']} does not answer ({exc})") from None
    dev = b.result["remote"]["farm"]["device"]
    return {"benchmark": b.to_json(), "device": dev["id"], "saved": str(b.saved)}


def close_session(store: Any, session_id: str | None, why: str) -> None:
    """Record a job's session ``cancelled`` when its compile was stopped before the compile's
    own Ctrl-C path could (SIGINT during start-up, or the process killed)."""
    if not session_id:
        return
    from robopt_compile.store.records import utc_now

    if store.get_session(session_id).state in ("running", "interrupted", "queued"):
        store.write(lambda c: c.execute(
            "UPDATE steps SET state='interrupted', finished=? WHERE session_id=? AND "
            "state='running'", (utc_now(), session_id)))  # fmt: skip
        store.open_session(session_id).cancel(why)


def stopped(store: Any, job_id: str) -> str:
    """End a job whose process got SIGINT: ``cancelled``, or ``failed`` when it timed out."""
    from robopt_compile.service import queue
    from robopt_compile.service.notify import notify

    job = queue.get_job(store, job_id)
    why = job.error or ("cancelled" if job.cancel else "stopped")
    state = "failed" if "timed out" in why else "cancelled"
    close_session(store, job.session_id, why)
    if queue.end(store, job_id, state, error=why):
        notify(store, f"job_{state}", job_id=job_id, session_id=job.session_id, error=why)
    return state


def run_job(store: Any, job_id: str) -> str:
    """Run a claimed job to its end; its final state."""
    from robopt_compile.errors import RoboptError
    from robopt_compile.service import queue
    from robopt_compile.service.notify import notify

    try:
        job = queue.get_job(store, job_id)
        notify(store, "job_started", job_id=job.id, kind=job.kind, attempt=job.attempts,
               source=job.request.get("source"))  # fmt: skip
        t0 = time.monotonic()
        if job.kind == "compile":
            result = _compile(store, job, job.request)
        elif job.kind == "plan":
            result = _plan(store, job, job.request)
        elif job.kind == "analyze":
            result = _analyze(store, job, job.request)
        elif job.kind == "evaluate":
            result = _evaluate(store, job, job.request)
        elif job.kind == "bench":
            result = _bench(store, job, job.request)
        else:
            raise RoboptError(f"job kind {job.kind!r} is not run by this server")
    except KeyboardInterrupt:
        return stopped(store, job_id)
    except (RoboptError, OSError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        job = queue.get_job(store, job_id)
        queue.end(store, job_id, "failed", error=msg)
        notify(store, "job_failed", job_id=job_id, session_id=job.session_id, error=msg)
        return "failed"
    result["seconds"] = round(time.monotonic() - t0, 3)
    job = queue.get_job(store, job_id)
    queue.end(store, job_id, "finished", result=result)
    notify(store, "job_finished", job_id=job_id, session_id=job.session_id,
           seconds=result["seconds"], bundle=result.get("bundle"))  # fmt: skip
    return "finished"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    from robopt_compile.store import open_store

    store = open_store(args[0], create=False)
    try:
        state = run_job(store, args[1])
    except KeyboardInterrupt:  # SIGINT while ending the job: end it as stopped
        state = stopped(store, args[1])
    finally:
        store.close()
    return 0 if state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
