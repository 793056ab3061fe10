"""The job table of ``robopt-bench serve``: queue, one worker, cancelling, recent results.

A job is an upload that passed every check (``server.BenchServer.submit``). ``JobTable`` queues
it for its one worker thread, which runs the same ``harness.run_benchmark`` as
``robopt-bench BUNDLE`` (or a test's runner), deletes the job's folder when it ends and keeps
the result in memory for the last ``max_results`` jobs. A job is stopped (``DELETE``, the
``--max-job-s`` limit, shutdown) through the harness's progress callback, between chunks of
timed runs: the one place a runtime is not inside a call.

Uploads under way are counted here too: each holds a queue slot and one of its client
address's slots, so ``check_capacity`` can refuse (503) before an upload's body is read.

Standard library only: the harness (numpy, the runtime) loads with the first job.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robopt_compile import __version__
from robopt_compile.errors import BackendUnavailableError, RoboptError

from ..remote import API
from .intake import ENDED, MAX_WAIT_S, HTTPError, scrub

Progress = Callable[[int], None]
# (bundle folder, settings for run_benchmark, progress) -> the harness result
Runner = Callable[[Path, dict[str, Any], Progress], dict[str, Any]]
Log = Callable[[str], None]


class JobCancelledError(BackendUnavailableError):
    """Raised from the progress callback to stop a job (DELETE, time limit, shutdown)."""


def harness_runner(bundle: Path, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The default runner: ``run_benchmark``, exactly as ``robopt-bench BUNDLE`` runs it."""
    from ..harness import run_benchmark

    return run_benchmark(bundle, progress=progress, **settings)


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Job:
    """One uploaded, checked bundle and what became of it."""

    id: str
    settings: dict[str, Any]
    folder: Path
    bundle: Path
    upload_bytes: int
    upload_ms: float
    validate_ms: float
    queued_at: float = field(default_factory=time.monotonic)
    created_utc: str = field(default_factory=_utc)
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    done_runs: int = 0
    overlapping_uploads: int = 0
    cancel: str | None = None  # why the job must stop; seen by its progress callback
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    exit_code: int | None = None


class JobTable:
    """The queue, the jobs' states and results, the upload slots and the one worker thread.

    ``start_worker()`` starts the worker (the server does so once it listens);
    ``stop_jobs()`` ends it. ``root`` is the work folder (named "the work dir" in errors);
    ``hostname`` goes into each result's ``remote`` block.
    """

    def __init__(
        self,
        runner: Runner,
        log: Log,
        root: Path,
        hostname: str,
        max_queue: int,
        max_results: int,
        max_uploads_per_ip: int,
        max_job_s: float,
        debug: bool = False,
    ) -> None:
        self.runner = runner
        self.log = log
        self.root = root
        self.hostname = hostname
        self.max_queue = max_queue
        self.max_results = max_results
        self.max_uploads_per_ip = max_uploads_per_ip
        self.max_job_s = max_job_s
        self.debug = debug
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: Job | None = None
        self._reserved = 0  # uploads being received, each holding a queue slot
        self._uploading: dict[str, int] = {}  # by client address
        self._uploads_seen = 0
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="robopt-bench-job", daemon=True)

    def start_worker(self) -> None:
        self._worker.start()

    def stop_jobs(self, grace_s: float) -> bool:
        """Fail the queued jobs, cancel the running one and wait up to ``grace_s`` for it.

        Returns:
            True when the worker stopped; False when the running job is stuck inside its
            runtime (see ``BenchServer.close``).
        """
        with self._lock:
            self._closing = True
            cancelled = list(self._queue)
            self._queue.clear()
            for job in cancelled:
                self._finish(job, error="the server shut down before the job ran", code=3)
            running = self._running
            if running is not None:
                running.cancel = running.cancel or "the server shut down"
            self._lock.notify_all()
        for job in cancelled:
            shutil.rmtree(job.folder, ignore_errors=True)
        if running is not None and self._worker.is_alive():
            self.log(f"cancelling job {running.id}; waiting up to {grace_s:g} s for it")
        self._worker.join(grace_s)
        if self._worker.is_alive():
            self.log(
                f"the running job did not stop within {grace_s:g} s (it is inside its "
                "runtime): leaving it"
            )
            return False
        return True

    # -- upload slots --

    def check_capacity(self, client: str = "-") -> None:
        """503 when no queue slot is free, or ``client`` already has its uploads under way
        (checked before an upload's body is read)."""
        with self._lock:
            if self._closing:
                raise HTTPError(503, "the server is shutting down.")
            if self._uploading.get(client, 0) >= self.max_uploads_per_ip:
                raise HTTPError(
                    503,
                    f"{self.max_uploads_per_ip} uploads from your address are under way "
                    "(--max-uploads-per-ip); try again when one has ended.",
                    {"Retry-After": "10"},
                )
            if len(self._queue) + self._reserved >= self.max_queue:
                raise HTTPError(
                    503,
                    f"the queue is full ({self.max_queue} jobs waiting or uploading); try "
                    "again when a job has ended.",
                    {"Retry-After": "10"},
                )

    def reserve_upload(self, client: str) -> None:
        """Take a queue slot and one of ``client``'s upload slots (503 when none is free)."""
        with self._lock:
            self.check_capacity(client)
            self._reserved += 1
            self._uploading[client] = self._uploading.get(client, 0) + 1
            self._uploads_seen += 1

    def release_upload(self, client: str) -> None:
        """Give back an upload's slots (the upload failed)."""
        with self._lock:
            self._release_upload(client)

    def _release_upload(self, client: str) -> None:
        """Give back an upload's queue slot and its address's slot (lock held)."""
        self._reserved -= 1
        left = self._uploading.get(client, 1) - 1
        if left > 0:
            self._uploading[client] = left
        else:
            self._uploading.pop(client, None)

    def enqueue(self, job: Job, client: str) -> None:
        """Queue a checked upload's job, giving back its upload slots whatever happens
        (503 when the server began to shut down meanwhile)."""
        with self._lock:
            self._release_upload(client)
            if self._closing:
                raise HTTPError(503, "the server is shutting down.")
            self._queue.append(job)
            self._jobs[job.id] = job
            self._lock.notify_all()

    # -- jobs --

    def cancel(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """DELETE /v1/jobs/<id>: take a queued job off the queue, or stop a running one at
        its next progress call; the view, after waiting up to ``wait_s`` for it to end."""
        with self._lock:
            job = self._job(job_id)
            if job.state in ENDED:
                raise HTTPError(409, f"job {job_id} has already ended ({job.state}).")
            reason = f"DELETE {API}/jobs/{job_id}"
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, error=f"the job was cancelled ({reason}) before it ran",
                             error_type=JobCancelledError.__name__, code=3)  # fmt: skip
            else:
                job.cancel = job.cancel or reason
        if job.state == "failed" and job.started is None:
            shutil.rmtree(job.folder, ignore_errors=True)
        return self.view(job_id, wait_s)

    def _finish(
        self,
        job: Job,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str = "BackendUnavailableError",
        code: int = 1,
    ) -> None:
        """Record the end of ``job`` (call with the lock held) and forget old jobs."""
        job.finished = time.monotonic()
        if error is None:
            job.state, job.result = "done", result
        else:
            job.state, job.error, job.error_type, job.exit_code = "failed", error, error_type, code
        ended = [j for j in self._jobs.values() if j.state in ENDED]
        for old in ended[: max(0, len(ended) - self.max_results)]:
            del self._jobs[old.id]
        self._lock.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                job = self._queue.popleft()
                job.state, job.started = "running", time.monotonic()
                self._running = job
                uploads_before = self._uploads_seen
                uploading = self._reserved
                self._lock.notify_all()
            self._run(job, uploads_before, uploading)

    def _run(self, job: Job, uploads_before: int, uploading: int) -> None:
        assert job.started is not None
        deadline = job.started + self.max_job_s

        def progress(n: int) -> None:
            """The harness calls this between chunks of timed runs: the one place a job
            can be stopped cleanly (the runtime is not inside a call)."""
            job.done_runs += n
            if job.cancel is None and time.monotonic() > deadline:
                job.cancel = f"it ran longer than --max-job-s ({self.max_job_s:g} s)"
            if job.cancel is not None:
                raise JobCancelledError(f"the job was cancelled: {job.cancel}.")

        result: dict[str, Any] | None = None
        error, etype, code = None, "", 1
        try:
            result = self.runner(job.bundle, dict(job.settings), progress)
            if job.cancel is not None:  # asked while the harness could not stop (paced loop)
                raise JobCancelledError(f"the job was cancelled: {job.cancel}.")
        except RoboptError as exc:
            error, etype, code = str(exc), type(exc).__name__, exc.exit_code
        except Exception as exc:  # a bug in the harness or a runtime fails the job, not the worker
            self.log(f"job {job.id}: internal error: {type(exc).__name__}: {exc}")
            error, etype = f"internal error: {type(exc).__name__} (see the server log)", "Error"
            if self.debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__)
        shutil.rmtree(job.folder, ignore_errors=True)  # before "done": an ended job has no folder
        with self._lock:
            end = time.monotonic()
            job.overlapping_uploads = uploading + self._uploads_seen - uploads_before
            if result is not None and error is None:
                result = dict(result)
                result["bundle"] = job.bundle.name
                result["remote"] = {
                    "host": self.hostname,
                    "server_version": __version__,
                    "api": API.strip("/"),
                    "job_id": job.id,
                    "queue_wait_ms": (job.started - job.queued_at) * 1e3,
                    "upload_bytes": job.upload_bytes,
                    "upload_ms": job.upload_ms,
                    "validate_ms": job.validate_ms,
                    "run_ms": (end - job.started) * 1e3,
                    "overlapping_uploads": job.overlapping_uploads,
                }
            self._running = None
            msg = None
            if error is not None:
                text = scrub(error, {job.bundle: "the bundle", self.root: "the work dir"})
                msg = " ".join(text.split())[:500]
            self._finish(job, result if msg is None else None, msg, etype, code)
        state = "done" if msg is None else f"failed: {msg}"
        self.log(f"job {job.id} {state} ({(end - job.started):.2f} s)")

    # -- views --

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise HTTPError(
                404,
                f"no job {job_id[:40]!r} here (this server keeps the last {self.max_results} "
                "results, and none across restarts).",
            )
        return job

    def view(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """A job's state for GET /v1/jobs/<id>; waits up to ``wait_s`` for it to end."""
        with self._lock:
            job = self._job(job_id)
            if wait_s > 0:
                self._lock.wait_for(lambda: job.state in ENDED or self._closing, timeout=wait_s)
            position = None
            if job.state == "queued":
                position = next(i for i, j in enumerate(self._queue, 1) if j is job)
            return {
                "id": job.id,
                "state": job.state,
                "position": position,
                "created_utc": job.created_utc,
                "settings": job.settings,
                "progress": {"done": job.done_runs, "total": job.settings["runs"]},
                "cancelling": job.cancel is not None and job.state == "running",
                "upload_bytes": job.upload_bytes,
                "validate_ms": job.validate_ms,
                "result": job.result,
                "error": job.error,
                "error_type": job.error_type,
                "exit_code": job.exit_code,
            }

    def wait_done(self, job_id: str) -> dict[str, Any]:
        """The job's view once it has ended (or the server is closing)."""
        while True:
            view = self.view(job_id, MAX_WAIT_S)
            if view["state"] in ENDED or self._closing:
                return view

    def queue_state(self) -> dict[str, Any]:
        """The queue for GET /v1/health: waiting, uploading, the running job, the limit."""
        with self._lock:
            return {
                "waiting": len(self._queue),
                "uploading": self._reserved,
                "running": None if self._running is None else self._running.id,
                "max": self.max_queue,
            }
