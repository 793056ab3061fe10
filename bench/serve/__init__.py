"""``robopt-bench serve``: run uploaded bundles on this robot, one at a time (docs/REMOTE.md).

A ``ThreadingHTTPServer`` takes bundles as tar streams, checks them, and queues them for one
worker thread that runs the same ``harness.run_benchmark`` as ``robopt-bench BUNDLE`` (deferred
TensorRT builds included), so a remote result is a local result plus a ``remote`` block.

Every request needs ``Authorization: Bearer <token>`` (compared with ``hmac.compare_digest``);
without it the answer is 401 and nothing else happens: the body is not read, and after
``max_auth_failures`` wrong tokens in ``auth_window_s`` an address gets 429 without its token
being compared. An upload must declare its length (411 otherwise) within ``--max-upload-mb``
(413, before reading); the stream is cut at the declared length. It is unpacked into a fresh
private folder by ``archive.extract_archive`` (capped headers, names, sizes and compression
ratio), then every path the manifest names is checked on its own and
``load_manifest(verify=True)`` checks every sha256 (422). Only then is the job queued (503
when the queue, or the client address's upload slots, are full: checked before the body is
read too). The folder is deleted when the job ends; the result stays in memory for the last
``max_results`` jobs.

Against slow or greedy clients: at most ``max_connections`` requests are served at once (503
at once beyond), the request line and headers must all arrive within ``header_timeout_s``
(408), an upload must keep ``min_upload_rate`` on average after ``upload_grace_s`` (408), and
a job may not run longer than ``--max-job-s``. Jobs are cancelled (``DELETE``, the time
limit, shutdown) through the harness's progress callback, between chunks of timed runs.

Module level imports the standard library only: numpy and the runtime load with the first job.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import io
import json
import math
import os
import queue
import secrets
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from robopt_compile import __version__
from robopt_compile.errors import BackendUnavailableError, InputError, RoboptError

from ..manifest import native_code
from ..remote import API, DEFAULT_PORT, read_token_file
from .archive import ArchiveError, Limits, WriteError, extract_archive
from .intake import (
    AUTH_WINDOW_S,
    ENDED,
    HEADER_TIMEOUT_S,
    MAX_AUTH_FAILURES,
    MAX_CONNECTIONS,
    MAX_JOB_S,
    MAX_QUEUE,
    MAX_RESULTS,
    MAX_RUNS,
    MAX_UNPACK_RATIO,
    MAX_UNPACKED_MB,
    MAX_UPLOAD_MB,
    MAX_UPLOADS_PER_IP,
    MAX_WAIT_S,
    MAX_WARMUP,
    MIN_UPLOAD_RATE,
    SOCKET_TIMEOUT_S,
    STOP_GRACE_S,
    UPLOAD_GRACE_S,
    HTTPError,
    SocketReader,
    UploadBody,
    bundle_root,
    parse_number,
    parse_settings,
    scrub,
    validate_bundle,
)

__all__ = ["BenchServer", "HTTPError", "Job", "harness_runner", "parse_settings", "serve"]

PROG = "robopt-bench serve"

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


# --- jobs ------------------------------------------------------------------------------------


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


class _AuthLimiter:
    """Wrong tokens per client address in a sliding window; memory bounded."""

    def __init__(self, max_failures: int, window_s: float, max_addresses: int = 4096) -> None:
        self.max_failures, self.window_s, self.max_addresses = max_failures, window_s, max_addresses
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            seen = self._failures.get(address)
            if seen is None:
                return None
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if len(seen) < self.max_failures:
                return None
            return max(1, math.ceil(seen[0] + self.window_s - now))

    def failed(self, address: str) -> None:
        with self._lock:
            seen = self._failures.setdefault(address, deque(maxlen=self.max_failures))
            seen.append(time.monotonic())
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)


class _HTTPServer(http.server.ThreadingHTTPServer):
    """One thread per request, at most ``max_connections`` at once: beyond that a connection
    gets a 503 from a single refusing thread (or is closed when that one is busy too)."""

    daemon_threads = True
    # socketserver's default backlog of 5 makes a burst of connections wait for SYN
    # retransmits (1 s, 3 s, ...) before they are even accepted: let the kernel queue them.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: BenchServer, max_connections: int) -> None:
        self.app = app
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self.open_connections = 0
        self._refusals: queue.Queue[socket.socket | None] = queue.Queue(maxsize=64)
        self._refused = 0
        self._refused_logged = 0.0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        threading.Thread(target=self._refuse_loop, name="robopt-bench-refuse", daemon=True).start()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang a robot
        # without a name server for seconds: bind without it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def _opened(self, delta: int) -> None:
        with self._count_lock:
            self.open_connections += delta

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._note_refusal(client_address)
            try:
                self._refusals.put_nowait(request)
            except queue.Full:
                self.shutdown_request(request)
            return
        self._opened(1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._opened(-1)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._opened(-1)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(queue.Full):
            self._refusals.put_nowait(None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.app.log(f"{client_address[0]}: connection error: {type(exc).__name__}")

    def _note_refusal(self, client_address: Any) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 5.0:  # a flood must not flood the log too
            self.app.log(
                f"{client_address[0]}: refused: {self.max_connections} connections open "
                f"(--max-connections; {self._refused} refused so far)"
            )
            self._refused_logged = now

    def _refuse_loop(self) -> None:
        body = json.dumps(
            {
                "error": f"the server is serving {self.max_connections} connections "
                "(--max-connections); try again shortly."
            }
        ).encode()
        answer = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nRetry-After: 5\r\nContent-Length: "
            + str(len(body) + 1).encode()
            + b"\r\n\r\n"
            + body
            + b"\n"
        )
        while True:
            sock = self._refusals.get()
            if sock is None:  # server_close
                return
            try:
                sock.settimeout(0.2)
                with contextlib.suppress(OSError):
                    sock.recv(65536)  # the request, if sent: closing over unread data resets
                with contextlib.suppress(OSError):
                    sock.sendall(answer)
            finally:
                self.shutdown_request(sock)


class BenchServer:
    """The benchmark server: HTTP front end, job table, one worker thread.

    ``BenchServer(token).start()`` serves in a background thread (tests, ``make bench``);
    ``serve()`` below runs it in the foreground with signal handling (the CLI). ``runner``
    replaces ``run_benchmark`` (tests use it to hold the worker busy deterministically).
    The limits' defaults are the module's constants (docs/REMOTE.md).
    """

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        work_dir: str | Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_MB << 20,
        max_queue: int = MAX_QUEUE,
        max_results: int = MAX_RESULTS,
        max_unpacked_bytes: int = MAX_UNPACKED_MB << 20,
        max_unpack_ratio: float = MAX_UNPACK_RATIO,
        max_connections: int = MAX_CONNECTIONS,
        max_uploads_per_ip: int = MAX_UPLOADS_PER_IP,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        min_upload_rate: float = MIN_UPLOAD_RATE,
        upload_grace_s: float = UPLOAD_GRACE_S,
        max_job_s: float = MAX_JOB_S,
        max_auth_failures: int = MAX_AUTH_FAILURES,
        auth_window_s: float = AUTH_WINDOW_S,
        allow_native_code: bool = False,
        runner: Runner | None = None,
        log: Log | None = None,
        debug: bool = False,
    ) -> None:
        if not token:
            raise InputError("the server needs a token (--token-file).")
        counts = (max_upload_bytes, max_queue, max_results, max_unpacked_bytes, max_connections,
                  max_uploads_per_ip, max_auth_failures)  # fmt: skip
        times = (max_unpack_ratio, header_timeout_s, min_upload_rate, max_job_s, auth_window_s)
        if min(counts) < 1 or min(times) <= 0 or upload_grace_s < 0:
            raise InputError("every server limit must be positive.")
        self.token = token.encode()
        self.max_upload_bytes = max_upload_bytes
        self.max_unpacked_bytes = max_unpacked_bytes
        self.limits = Limits(max_bytes=max_unpacked_bytes, max_ratio=max_unpack_ratio)
        self.max_queue = max_queue
        self.max_results = max_results
        self.max_uploads_per_ip = max_uploads_per_ip
        self.header_timeout_s = header_timeout_s
        self.min_upload_rate = min_upload_rate
        self.upload_grace_s = upload_grace_s
        self.max_job_s = max_job_s
        self.allow_native_code = allow_native_code
        self.auth = _AuthLimiter(max_auth_failures, auth_window_s)
        self.runner: Runner = runner or harness_runner
        self.log: Log = log or (lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
        self.debug = debug
        self.hostname = socket.gethostname()
        self._started = time.monotonic()
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: Job | None = None
        self._reserved = 0  # uploads being received, each holding a queue slot
        self._uploading: dict[str, int] = {}  # by client address
        self._uploads_seen = 0
        self._closing = False
        self._serving = False
        self._runtimes: tuple[float, dict[str, Any]] | None = None
        try:
            if work_dir is not None:
                Path(work_dir).mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="robopt-serve-", dir=work_dir))
        except OSError as exc:
            raise InputError(f"cannot create a folder in work dir {work_dir!r}: {exc}.") from None
        try:
            self.httpd = _HTTPServer((host, port), self, max_connections)
        except OSError as exc:
            shutil.rmtree(self.root, ignore_errors=True)
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server "
                "running there? Choose another --port or --host."
            ) from None
        self._worker = threading.Thread(target=self._work, name="robopt-bench-job", daemon=True)
        self._worker.start()
        self._thread: threading.Thread | None = None

    # -- life cycle --

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        """Requests being served now (each holds one of ``max_connections``)."""
        return self.httpd.open_connections

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Serve in this thread until ``shutdown()`` (another thread or a signal handler);
        ``poll_s`` is how often the accept loop looks for a shutdown request."""
        self._serving = True
        try:
            self.httpd.serve_forever(poll_interval=poll_s)
        finally:
            self._serving = False

    def start(self, poll_s: float = 0.05) -> BenchServer:
        """Serve in a background thread; returns self."""
        self._serving = True
        self._thread = threading.Thread(
            target=self.serve_forever, args=(poll_s,), name="robopt-bench-http", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting requests (returns when the accept loop has ended)."""
        if self._serving:
            self.httpd.shutdown()

    def close(self, grace_s: float = STOP_GRACE_S) -> bool:
        """Stop serving, fail the queued jobs, cancel the running one and wait up to
        ``grace_s`` for it to stop, and delete every job folder.

        Returns:
            True when the worker stopped; False when the running job is stuck inside its
            runtime (a model load, an engine build or a paced loop cannot be interrupted):
            the caller should then end the process with ``os._exit`` rather than let the
            interpreter tear down a runtime that is still running.
        """
        try:
            self.shutdown()
            self.httpd.server_close()
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
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --

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

    def submit(
        self,
        body: IO[bytes],
        length: int,
        settings: dict[str, Any],
        client: str = "-",
        reader: SocketReader | None = None,
    ) -> Job:
        """Receive, unpack and check an upload of ``length`` bytes; queue it as a job."""
        with self._lock:
            self.check_capacity(client)
            self._reserved += 1
            self._uploading[client] = self._uploading.get(client, 0) + 1
            self._uploads_seen += 1
        reserved, folder = True, None
        try:
            t0 = time.perf_counter()
            try:
                folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            except OSError as exc:
                raise WriteError(str(exc)) from exc
            if reader is not None:
                reader.expect_body(self.upload_grace_s, self.min_upload_rate)
            stream = UploadBody(body, length, reader, self.min_upload_rate, self.upload_grace_s)
            try:
                extract_archive(stream, folder / "bundle", self.limits)
            except ArchiveError as exc:
                if exc.status == 400 and stream.short:
                    raise HTTPError(400, f"the upload ended after {stream.count} bytes.") from None
                raise HTTPError(exc.status, exc.message) from None
            finally:
                stream.drain()
            if stream.short:
                raise HTTPError(400, f"the upload ended after {stream.count} of {length} bytes.")
            upload_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            bundle = bundle_root(folder / "bundle")
            manifest = validate_bundle(bundle)
            native = native_code(manifest)
            if native and not self.allow_native_code:
                raise HTTPError(
                    422,
                    f"the bundle runs native code ({'; '.join(native)}), which this server "
                    "refuses: start it with --allow-native-code to run such bundles from "
                    "people you trust (docs/SECURITY.md).",
                )
            validate_ms = (time.perf_counter() - t0) * 1e3
            job = Job(
                id=secrets.token_hex(8),
                settings=settings,
                folder=folder,
                bundle=bundle,
                upload_bytes=stream.count,
                upload_ms=upload_ms,
                validate_ms=validate_ms,
            )
            with self._lock:
                self._release_upload(client)
                reserved = False
                if self._closing:
                    raise HTTPError(503, "the server is shutting down.")
                self._queue.append(job)
                self._jobs[job.id] = job
                folder = None  # the worker owns it now
                self._lock.notify_all()
            return job
        except WriteError as exc:
            self.log(f"{client}: cannot write the upload into the work dir: {exc}")
            raise HTTPError(
                500, "cannot write the upload into the work dir (see the server log)."
            ) from None
        finally:
            if reserved:
                with self._lock:
                    self._release_upload(client)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _release_upload(self, client: str) -> None:
        """Give back an upload's queue slot and its address's slot (lock held)."""
        self._reserved -= 1
        left = self._uploading.get(client, 1) - 1
        if left > 0:
            self._uploading[client] = left
        else:
            self._uploading.pop(client, None)

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
        except Exception as exc:
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

    def health(self) -> dict[str, Any]:
        """GET /v1/health: versions, machine, which runtimes run here, the queue, limits."""
        from ..harness import machine_summary

        machine = machine_summary("-")
        for key in ("runtime", "runtime_version"):
            machine.pop(key, None)
        with self._lock:
            queue_ = {
                "waiting": len(self._queue),
                "uploading": self._reserved,
                "running": None if self._running is None else self._running.id,
                "max": self.max_queue,
            }
        return {
            "status": "ok",
            "api": API.strip("/"),
            "server_version": __version__,
            "robopt_version": __version__,
            "host": self.hostname,
            "machine": machine,
            "runtimes": self._runtime_table(),
            "queue": queue_,
            "max_upload_bytes": self.max_upload_bytes,
            "limits": {
                "max_unpacked_bytes": self.max_unpacked_bytes,
                "max_unpack_ratio": self.limits.max_ratio,
                "max_runs": MAX_RUNS,
                "max_warmup": MAX_WARMUP,
                "max_job_s": self.max_job_s,
                "min_upload_rate": self.min_upload_rate,
                "upload_grace_s": self.upload_grace_s,
            },
            "uptime_s": time.monotonic() - self._started,
        }

    def _runtime_table(self) -> dict[str, Any]:
        """Which backends' runtimes are importable here (cached a minute: probes a GPU)."""
        now = time.monotonic()
        if self._runtimes is None or now - self._runtimes[0] > 60:
            from robopt_compile.targets import TARGETS, get_backend

            table = {}
            for name in TARGETS:
                try:
                    ok, why = get_backend(name).availability()
                except Exception as exc:  # a broken install must not break health
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                table[name] = {"available": ok, "reason": why}
            self._runtimes = (now, table)
        return self._runtimes[1]


# --- HTTP ------------------------------------------------------------------------------------


_ROUTES = {"health": ("GET",), "jobs": ("POST",), "job": ("GET", "DELETE")}  # route -> methods


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes, auth, limits and one log line per request; every answer is JSON."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # for Expect: 100-continue; every answer closes anyway
    server_version = f"robopt-bench/{__version__}"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self._t0 = time.perf_counter()
        self._checked: tuple[dict[str, Any], bool, int] | None = None
        self._answered = False
        self.command, self.path, self.request_version = None, "", "HTTP/1.1"  # type: ignore[assignment]
        self._reader = SocketReader(self.connection, SOCKET_TIMEOUT_S)
        self._reader.deadline = time.monotonic() + self.app.header_timeout_s
        self.rfile.close()
        self.rfile = io.BufferedReader(self._reader, 64 << 10)

    @property
    def app(self) -> BenchServer:
        return self.server.app

    @property
    def client(self) -> str:
        return str(self.client_address[0])

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request comes from _send_json, without headers or secrets

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def parse_request(self) -> bool:
        ok = super().parse_request()  # (answers Expect: 100-continue, see below)
        self._reader.deadline = None  # the headers are in: the body has limits of its own
        return ok

    def handle_one_request(self) -> None:
        super().handle_one_request()  # a timeout closes the connection silently
        if self._reader.why == "headers" and not self._answered:
            self._send_json(
                408,
                {
                    "error": f"the request line and headers did not arrive within "
                    f"{self.app.header_timeout_s:g} s."
                },
                {},
            )

    # -- answers --

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self._answered = True
        data = (json.dumps(body) + "\n").encode()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.settimeout(10.0)  # the reader may have left a deadline's remnant
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.send_header("Cache-Control", "no-store")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass  # the client is gone; the log line below still says what it was told
        ms = (time.perf_counter() - self._t0) * 1e3
        path = "".join(c if c.isprintable() else "?" for c in (self.path or "-"))
        extra = f": {body['error']}" if status >= 400 and "error" in body else ""
        self.app.log(
            f"{self.client} {self.command or '-'} {path[:200]} {status} {ms:.0f} ms{extra[:300]}"
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors found by http.server (bad request line, 501, ...) as JSON too."""
        text = message or self.responses.get(code, ("error",))[0]
        self._send_json(code, {"error": text[:200]}, {})

    def _dispatch(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except Exception as exc:
            # The text may hold paths or request data: it goes to the log, not the client.
            self.app.log(
                f"{self.client} {self.command} {(self.path or '-')[:200]}: internal error: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            )
            if self.app.debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__)
            self._send_json(500, {"error": "internal error (see the server log)."}, {})

    # -- checks --

    def _authorize(self) -> None:
        wait = self.app.auth.retry_after(self.client)
        if wait is not None:
            raise HTTPError(
                429,
                f"too many wrong tokens from your address; try again in {wait} s.",
                {"Retry-After": str(wait)},
            )
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.app.token
        )
        if not ok:
            self.app.auth.failed(self.client)
            raise HTTPError(
                401,
                "missing or wrong token (Authorization: Bearer <token>).",
                {"WWW-Authenticate": 'Bearer realm="robopt-bench"'},
            )

    def _route(self) -> tuple[str, str | None, str]:
        """Authorize, then (route, job id, query); 404 and 405 as HTTP says."""
        self._authorize()
        path, _, query = self.path.partition("?")
        parts = path.rstrip("/").split("/")
        if parts[:2] != ["", API.strip("/")] or len(parts) not in (3, 4):
            raise HTTPError(404, f"no such endpoint {path[:100]!r} (API {API}).")
        name, job_id = parts[2], parts[3] if len(parts) == 4 else None
        route = {"health": "health", "jobs": "job" if job_id else "jobs"}.get(name)
        if route is None or (route == "health" and job_id):
            raise HTTPError(404, f"no such endpoint {path[:100]!r} (API {API}).")
        allowed = _ROUTES[route]
        if self.command not in allowed:
            raise HTTPError(
                405,
                f"{self.command} is not allowed on {path[:100]}.",
                {"Allow": ", ".join(allowed)},
            )
        return route, job_id, query

    def _check_upload(self) -> tuple[dict[str, Any], bool, int]:
        """Everything about a POST that can be refused before its body is read."""
        if self._checked is not None:
            return self._checked
        _, _, query = self._route()
        settings, wait = parse_settings(query, self.app.max_job_s)
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked uploads are not accepted: send a Content-Length.")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise HTTPError(411, "the upload needs a Content-Length header.")
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise HTTPError(400, "bad Content-Length header.")
        length = int(lengths[0])
        if length == 0:
            raise HTTPError(400, "the upload is empty: send the bundle as a tar or tar.gz.")
        limit = self.app.max_upload_bytes
        if length > limit:
            raise HTTPError(
                413,
                f"the upload is {length / 2**20:.1f} MiB; this server takes at most "
                f"{limit / 2**20:.0f} MiB (--max-upload-mb).",
            )
        self.app.check_capacity(self.client)
        self._checked = (settings, wait, length)
        return self._checked

    def handle_expect_100(self) -> bool:
        """Answer refusals (401, 404, 411, 413, 503, ...) before the client sends the body."""
        if self.command == "POST":
            try:
                self._check_upload()
            except HTTPError as exc:
                self._send_json(exc.status, {"error": exc.message}, exc.headers)
                return False
        return super().handle_expect_100()

    def _wait_s(self, query: str) -> float:
        raw = (urllib.parse.parse_qs(query).get("wait") or ["0"])[0]
        return min(parse_number("wait", raw, float, 0.0), MAX_WAIT_S)

    # -- methods --

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def _get(self) -> None:
        route, job_id, query = self._route()
        if route == "health":
            self._send_json(200, self.app.health(), {})
            return
        assert job_id is not None
        self._send_json(200, self.app.view(job_id, self._wait_s(query)), {})

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _post(self) -> None:
        settings, wait, length = self._check_upload()
        job = self.app.submit(self.rfile, length, settings, self.client, self._reader)
        if wait:
            self._send_json(200, self.app.wait_done(job.id), {})
            return
        location = f"{API}/jobs/{job.id}"
        self._send_json(202, {**self.app.view(job.id), "url": location}, {"Location": location})

    def do_DELETE(self) -> None:
        self._dispatch(self._delete)

    def _delete(self) -> None:
        _, job_id, query = self._route()
        assert job_id is not None  # DELETE is allowed on a job only
        view = self.app.cancel(job_id, self._wait_s(query))
        self._send_json(200 if view["state"] in ENDED else 202, view, {})

    def _refuse(self) -> None:
        self._dispatch(self._route)  # 401, 404 or 405: no other method is served

    do_PUT = do_PATCH = do_OPTIONS = _refuse


# --- the CLI's foreground server -------------------------------------------------------------


def serve(
    token_file: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_upload_mb: int = MAX_UPLOAD_MB,
    max_queue: int = MAX_QUEUE,
    work_dir: str | Path | None = None,
    debug: bool = False,
    max_unpacked_mb: int = MAX_UNPACKED_MB,
    max_unpack_ratio: float = MAX_UNPACK_RATIO,
    max_connections: int = MAX_CONNECTIONS,
    max_uploads_per_ip: int = MAX_UPLOADS_PER_IP,
    min_upload_kib_s: float = MIN_UPLOAD_RATE / 1024,
    max_job_s: float = MAX_JOB_S,
    stop_grace_s: float = STOP_GRACE_S,
    allow_native_code: bool = False,
) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM, then stop cleanly.

    The first signal stops accepting, fails queued jobs, cancels the running one and waits
    up to ``stop_grace_s`` for it, and deletes the job folders; a second signal quits at once.
    A job still inside its runtime after the grace is left by ending the process with
    ``os._exit``: letting the interpreter finalize while a runtime's threads run aborts in
    C++ ("terminate called without an active exception").

    Raises:
        InputError: no usable token file, or the address cannot be bound.
    """

    def log(line: str) -> None:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    token = read_token_file(token_file, warn=lambda m: log(f"warning: {m}"))
    app = BenchServer(
        token,
        host=host,
        port=port,
        work_dir=work_dir,
        max_upload_bytes=max_upload_mb << 20,
        max_queue=max_queue,
        max_unpacked_bytes=max_unpacked_mb << 20,
        max_unpack_ratio=max_unpack_ratio,
        max_connections=max_connections,
        max_uploads_per_ip=max_uploads_per_ip,
        min_upload_rate=min_upload_kib_s * 1024,
        max_job_s=max_job_s,
        allow_native_code=allow_native_code,
        log=log,
        debug=debug,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():  # a second signal: quit now
            log(f"{signal.Signals(signum).name} again: quitting at once")
            shutil.rmtree(app.root, ignore_errors=True)
            os._exit(1)
        stopping.set()
        log(f"{signal.Signals(signum).name}: stopping (again to quit at once)")
        threading.Thread(target=app.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    else:
        previous = {}
    stopped = True
    try:
        if host not in ("127.0.0.1", "::1", "localhost"):
            log(
                "warning: plain HTTP on a network interface: anyone who can see the traffic "
                "can read the token and the bundles; use a trusted network or an SSH tunnel"
            )
        log(
            f"listening on {app.url} (robopt {__version__}, token from {token_file}, "
            f"max upload {max_upload_mb} MiB, unpacked {max_unpacked_mb} MiB, queue "
            f"{max_queue}, {max_connections} connections, jobs {max_job_s:g} s, work dir "
            f"{app.root})"
        )
        app.serve_forever()
    finally:
        try:
            stopped = app.close(stop_grace_s)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        log("stopped")
    if not stopped:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
