"""``/api/v1/jobs`` and ``/api/v1/sessions``: submit, watch, cancel, resume, download.

A job names a registered model (``model``: its id) or a ``source`` (``zoo:NAME``), a
``target`` board and the compile options the CLI takes (``precision``, ``backend``,
``calibration``, ``eval``, ``max_drop`` ...: ``robopt_compile.api.compile_options``), or
planner ``criteria`` for ``kind: plan``. Everything is checked before it is queued: an unknown
target, precision or option is a 422 with the CLI's own message, and nothing is queued.

``GET /jobs/ID/events`` streams Server-Sent Events: ``job`` (the job's row whenever its state,
stage or progress changes) and ``session`` (each store event of its session: steps, metrics,
warnings, rollbacks), and ends after the job ends.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from robopt_compile.service import queue
from robopt_compile.service import routes_calibration as calibrations
from robopt_compile.service.auth import OPERATOR, VIEWER, ApiError
from robopt_compile.service.notify import notify
from robopt_compile.service.tokens import Token

router = APIRouter(tags=["jobs"])


class JobRequest(BaseModel):
    kind: Literal["compile", "plan", "analyze", "evaluate", "bench"] = "compile"
    model: str | None = Field(None, description="a registered model's id")
    bundle_job: str | None = Field(
        None, description="kind bench or evaluate: a finished compile job's id"
    )
    episodes: int = Field(20, ge=2, le=1000, description="kind evaluate: paired episodes")
    device: str | None = Field(
        None,
        description="kind bench: a registered device's id, or "
        "any:BOARD for the first free robot of that board",
    )
    runs: int = Field(100, ge=1, le=100_000, description="kind bench: timed runs")
    source: str | None = Field(None, description="or a source: zoo:NAME")
    target: str = "host"
    options: dict[str, Any] = Field(
        default_factory=dict, description="compile options, as robopt-compile's flags"
    )
    criteria: dict[str, Any] = Field(default_factory=dict, description="kind plan: bounds")
    plan_only: bool = False
    priority: int = Field(0, ge=-100, le=100)
    timeout_s: float | None = Field(None, gt=0)


# Compile options a request may set. Everything else (output and profile paths, reference
# inputs, module:function metrics, calibration folders or iterators) would make the server read
# its own files or import code a client names: refused, with the reason.
SAFE_OPTIONS = {
    "backend", "precision", "threads", "robot_threads", "dynamic_batch", "opset", "simplify",
    "check_parity", "seed", "tune_trials", "max_batch", "dla_core", "eval", "cache", "activations",
    "decode_backend", "calibration", "method", "max_drop", "strict", "measure_sensitivity",
    "block_size", "holdout_fraction", "prune", "prune_layers", "low_rank", "distill",
}  # fmt: skip


def _check_options(options: dict[str, Any]) -> None:
    bad = sorted(set(options) - SAFE_OPTIONS)
    if bad:
        allowed = ", ".join(sorted(SAFE_OPTIONS))
        raise ApiError(422, f"option(s) {bad} are not accepted over the API (they name files "
                       f"or code on the server); allowed: {allowed}.")  # fmt: skip
    cal = options.get("calibration")
    if cal is not None and not (cal == "random" or str(cal).startswith(("task", "upload:"))):
        raise ApiError(422, "calibration over the API is 'random', 'task[:episodes=N]' or "
                       "'upload:ID' (POST /api/v1/calibrations).")  # fmt: skip
    ev = options.get("eval")
    if ev is not None and not (isinstance(ev, str) and ev.startswith("task")):
        raise ApiError(422, "eval over the API is a 'task[:episodes=N,...]' spec.")


def _check_bench(store: Any, body: JobRequest) -> dict[str, Any]:
    from robopt_compile.farm import get_device, list_devices
    from robopt_compile.farm.queue import canonical_board

    if body.bundle_job is None or body.device is None:
        raise ApiError(422, "a bench job needs bundle_job (a finished compile job) and device.")
    bundle = _bundle(store, body.bundle_job)
    if body.device.startswith("any:"):
        board = canonical_board(body.device[4:], "device any:")
        if not list_devices(store, board):
            raise ApiError(422, f"no {board} robot is registered: POST /api/v1/devices first.")
        device, name = body.device, body.device
    else:
        dev = get_device(store, body.device)
        device, name, board = dev["id"], dev["name"], dev["board"]
    return {"source": str(bundle), "label": f"{bundle.parent.name[:12]} on {name}",
            "bundle": str(bundle), "device": device, "target": board,
            "runs": body.runs}  # fmt: skip


def _check(store: Any, body: JobRequest) -> dict[str, Any]:
    """The request as the runner reads it; raises what the CLI would for bad input."""
    import robopt_compile.api as robopt
    from robopt_compile.hwprofiles import load_profile

    if body.kind == "bench":
        return _check_bench(store, body)
    if body.kind == "evaluate":
        if body.bundle_job is None:
            raise ApiError(422, "an evaluate job needs bundle_job (a finished compile job).")
        bundle = _bundle(store, body.bundle_job)
        return {
            "source": str(bundle),
            "label": f"evaluate {bundle.parent.name[:12]}",
            "bundle": str(bundle),
            "target": body.target,
            "episodes": body.episodes,
        }
    if (body.model is None) == (body.source is None):
        raise ApiError(422, "give either model (a registered model's id) or source (zoo:NAME).")
    if body.model is not None:
        rec = store.get_model(body.model)
        source, label = rec.source, rec.name
        if not source:
            raise ApiError(422, f"model {body.model} has no source to compile from.")
    else:
        source = label = body.source or ""
        if not source.startswith("zoo:"):
            raise ApiError(422, "a job's source is zoo:NAME; upload a file first "
                           "(POST /api/v1/models) and give its id as model.")  # fmt: skip
        from robopt_compile.zoo import zoo_names

        if source[4:] not in zoo_names():
            raise ApiError(422, f"unknown zoo model {source[4:]!r}; known: "
                           f"{', '.join(zoo_names())}.")  # fmt: skip
    load_profile(body.target)  # an unknown board: ProfileError, the CLI's message
    _check_options(body.options)
    options = dict(body.options)
    if str(options.get("calibration", "")).startswith(calibrations.PREFIX):
        options["calibration"] = calibrations.resolve(store, options["calibration"])
        if body.model is not None:
            calibrations.check_inputs(options["calibration"], store.get_model(body.model).inputs)
    opts = robopt.compile_options(target=body.target, **options)
    if opts.precision is not None:
        from robopt_compile.precision import PRECISIONS

        if opts.precision not in PRECISIONS:
            raise ApiError(422, f"unknown precision {opts.precision!r}: one of "
                           f"{', '.join(PRECISIONS)}.")  # fmt: skip
    if body.kind == "plan":
        from robopt_compile.plan.search import criteria_from

        criteria_from(body.criteria, None)
    return {
        "source": source,
        "label": label,
        "model": body.model,
        "target": body.target,
        "options": options,
        "criteria": body.criteria,
        "plan_only": body.plan_only,
    }


@router.post("/jobs", status_code=201)
def submit_job(body: JobRequest, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Queue a compile or a planner search; its id comes back at once."""
    store = request.app.state.store
    req = _check(store, body)
    job = queue.submit(store, body.kind, req, priority=body.priority, owner=token.id,
                       timeout_s=body.timeout_s)  # fmt: skip
    notify(store, "job_queued", job_id=job.id, kind=job.kind, source=req["source"],
           target=body.target, by=token.name)  # fmt: skip
    return job.to_json()


@router.get("/jobs")
def list_jobs(request: Request, state: str | None = None, token: Token = VIEWER
              ) -> list[dict[str, Any]]:  # fmt: skip
    if state is not None and state not in queue.JOB_STATES:
        raise ApiError(422, f"unknown state {state!r}: one of {', '.join(queue.JOB_STATES)}.")
    return [j.to_json() for j in queue.list_jobs(request.app.state.store, state)]


@router.get("/jobs/{job_id}", response_model=None)
async def show_job(job_id: str, request: Request, token: Token = VIEWER) -> JSONResponse:
    """A job (with its queue position). The endpoint clients poll: it runs in the event loop
    (two indexed reads; WAL reads never wait for a writer) and skips response validation."""
    store = request.app.state.store
    d = queue.get_job(store, job_id).to_json()
    d["queue_position"] = None
    if d["state"] == "queued":
        ahead = store.query("SELECT COUNT(*) FROM jobs WHERE state='queued' AND (priority>? OR "
                            "(priority=? AND created<?))",
                            (d["priority"], d["priority"], d["created"]))  # fmt: skip
        d["queue_position"] = int(ahead[0][0])
    return JSONResponse(jsonable(d))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Cancel: a queued job ends now; a running one stops at once (its session: cancelled)."""
    store = request.app.state.store
    job = queue.cancel(store, job_id)
    if job.state == "cancelled":
        notify(store, "job_cancelled", job_id=job.id, error="cancelled before it started")
    return job.to_json()


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Queue a failed, cancelled or interrupted job again; it goes on in its session."""
    return queue.resume(request.app.state.store, job_id).to_json()


def _bundle(store: Any, job_id: str) -> Path:
    from robopt_compile.service.runner import job_dir

    job = queue.get_job(store, job_id)
    bundle = job_dir(store, job.id) / "bundle"
    if job.state != "finished" or not (bundle / "manifest.json").is_file():
        raise ApiError(409, f"job {job.id[:12]} is {job.state} and has no bundle"
                       + ("" if job.state != "finished" else " (a plan-only search)"))  # fmt: skip
    return bundle


def _chunks(f: Any) -> Any:
    with f:
        while chunk := f.read(1 << 20):
            yield chunk


@router.get("/jobs/{job_id}/bundle.tar.gz")
def download_bundle(job_id: str, request: Request, token: Token = VIEWER) -> StreamingResponse:
    """The bundle folder as a .tar.gz (its manifest.json lists every file's sha256)."""
    bundle = _bundle(request.app.state.store, job_id)
    # Large bundles spill to disk; _chunks closes it when the response is sent.
    buf = tempfile.SpooledTemporaryFile(max_size=64 * 2**20)  # noqa: SIM115
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    buf.seek(0)
    return StreamingResponse(_chunks(buf), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="robopt-{job_id[:12]}.tar.gz"',
        "X-Robopt-Backend": str(manifest.get("backend")),
    })  # fmt: skip


@router.get("/jobs/{job_id}/report.html")
def job_report(job_id: str, request: Request, token: Token = VIEWER) -> FileResponse:
    bundle = _bundle(request.app.state.store, job_id)
    if not (bundle / "report.html").is_file():
        raise ApiError(404, "this bundle has no report.html (robopt-compile report BUNDLE).")
    return FileResponse(bundle / "report.html", media_type="text/html")


@router.get("/jobs/{job_id}/log")
def job_log(job_id: str, request: Request, token: Token = VIEWER) -> PlainTextResponse:
    """The job process's warnings and errors (the last 64 KB)."""
    from robopt_compile.service.runner import job_dir

    store = request.app.state.store
    log = job_dir(store, queue.get_job(store, job_id).id) / "log.txt"
    text = log.read_bytes()[-65536:].decode(errors="replace") if log.is_file() else ""
    return PlainTextResponse(text)


@router.get("/sessions/{session_id}")
def show_session(session_id: str, request: Request, token: Token = VIEWER) -> dict[str, Any]:
    """OptimizationSession: state, progress, steps, results and events."""
    store = request.app.state.store
    rec = store.get_session(session_id)
    d = rec.to_dict()
    d["progress"] = (rec.steps_done / rec.steps_total) if rec.steps_total else None
    d["steps"] = [s.to_dict() for s in store.steps(rec.id)]
    d["results"] = [r.to_dict() for r in store.results(rec.id)]
    d["events"] = [e.to_dict() for e in store.events(rec.id)]
    return d


def jsonable(d: dict[str, Any]) -> Any:
    """``d`` as strict JSON values (NaN and infinity as null, as the store writes them)."""
    from robopt_compile.jsonutil import finite

    return finite(d)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request, token: Token = VIEWER) -> StreamingResponse:
    """Server-Sent Events of the job and its session until the job ends."""
    store = request.app.state.store
    job = await run_in_threadpool(queue.get_job, store, job_id)

    async def stream():  # type: ignore[no-untyped-def]
        last, seq = None, 0
        while True:
            cur = await run_in_threadpool(queue.get_job, store, job.id)
            key = (cur.state, cur.stage, round(cur.progress, 3), cur.session_id)
            if key != last:
                last = key
                yield _sse("job", cur.to_json())
            if cur.session_id:
                events = await run_in_threadpool(store.events, cur.session_id, seq)
                for e in events:
                    seq = e.seq
                    yield _sse("session", e.to_dict())
            if cur.state in queue.ENDED or await request.is_disconnected():
                yield _sse("end", {"state": cur.state})
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})  # fmt: skip
