"""``BenchServer``: the benchmark server's life cycle, its upload intake and its health report.

A ``BenchServer`` is the job table (``jobs.JobTable``) behind an HTTP front end
(``http.CappedHTTPServer``). ``submit`` turns an upload into a job: it takes a queue slot,
unpacks the stream into a fresh private folder (``archive.extract_archive``: capped headers,
names, sizes and compression ratio), checks every path the manifest names and every sha256
(``intake.validate_bundle``), refuses native code unless allowed, and only then queues it.
``close`` stops serving, fails the queued jobs, cancels the running one and deletes every
folder.

Standard library only: numpy and the runtimes load with the first job (or health request).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from robopt_compile import __version__
from robopt_compile.errors import InputError

from ..manifest import native_code
from ..remote import API, DEFAULT_PORT
from .archive import ArchiveError, Limits, WriteError, extract_archive
from .http import CappedHTTPServer
from .intake import (
    AUTH_WINDOW_S,
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
    MAX_WARMUP,
    MIN_UPLOAD_RATE,
    STOP_GRACE_S,
    UPLOAD_GRACE_S,
    AuthLimiter,
    HTTPError,
    SocketReader,
    UploadBody,
    bundle_root,
    validate_bundle,
)
from .jobs import Job, JobTable, Log, Runner, harness_runner

PROG = "robopt-bench serve"


class BenchServer(JobTable):
    """The benchmark server: HTTP front end, job table, one worker thread.

    ``BenchServer(token).start()`` serves in a background thread (tests, ``make bench``);
    ``serve()`` runs it in the foreground with signal handling (the CLI). ``runner``
    replaces ``run_benchmark`` (tests use it to hold the worker busy deterministically).
    The limits' defaults are the constants of ``intake`` (docs/REMOTE.md).
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
        self.header_timeout_s = header_timeout_s
        self.min_upload_rate = min_upload_rate
        self.upload_grace_s = upload_grace_s
        self.allow_native_code = allow_native_code
        self.auth = AuthLimiter(max_auth_failures, auth_window_s)
        self._started = time.monotonic()
        self._runtimes: tuple[float, dict[str, Any]] | None = None
        self._serving = False
        try:
            if work_dir is not None:
                Path(work_dir).mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="robopt-serve-", dir=work_dir))
        except OSError as exc:
            raise InputError(f"cannot create a folder in work dir {work_dir!r}: {exc}.") from None
        super().__init__(
            runner=runner or harness_runner,
            log=log or (lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True)),
            root=root,
            hostname=socket.gethostname(),
            max_queue=max_queue,
            max_results=max_results,
            max_uploads_per_ip=max_uploads_per_ip,
            max_job_s=max_job_s,
            debug=debug,
        )
        try:
            self.httpd = CappedHTTPServer((host, port), self, max_connections)
        except OSError as exc:
            shutil.rmtree(self.root, ignore_errors=True)
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server "
                "running there? Choose another --port or --host."
            ) from None
        self.start_worker()
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
            return self.stop_jobs(grace_s)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- intake --

    def submit(
        self,
        body: IO[bytes],
        length: int,
        settings: dict[str, Any],
        client: str = "-",
        reader: SocketReader | None = None,
    ) -> Job:
        """Receive, unpack and check an upload of ``length`` bytes; queue it as a job."""
        self.reserve_upload(client)
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
            reserved = False  # enqueue gives the upload's slots back, whether it queues or not
            self.enqueue(job, client)
            folder = None  # the worker owns it now
            return job
        except WriteError as exc:
            self.log(f"{client}: cannot write the upload into the work dir: {exc}")
            raise HTTPError(
                500, "cannot write the upload into the work dir (see the server log)."
            ) from None
        finally:
            if reserved:
                self.release_upload(client)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    # -- health --

    def health(self) -> dict[str, Any]:
        """GET /v1/health: versions, machine, which runtimes run here, the queue, limits."""
        from ..machine import machine_summary

        machine = machine_summary("-")
        for key in ("runtime", "runtime_version"):
            machine.pop(key, None)
        queue_ = self.queue_state()
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
                except Exception as exc:  # a broken runtime install must not break health
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                table[name] = {"available": ok, "reason": why}
            self._runtimes = (now, table)
        return self._runtimes[1]
