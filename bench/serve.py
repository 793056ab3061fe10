"""``robopt-bench serve``: run uploaded bundles on this robot, one at a time (docs/REMOTE.md).

A ``ThreadingHTTPServer`` takes bundles as tar streams, checks them, and queues them for one
worker thread that runs the same ``harness.run_benchmark`` as ``robopt-bench BUNDLE`` (deferred
TensorRT builds included), so a remote result is a local result plus a ``remote`` block.

Every request needs ``Authorization: Bearer <token>`` (compared with ``hmac.compare_digest``);
without it the answer is 401 and nothing else happens: the body is not read. An upload must
declare its length (411 otherwise) within ``--max-upload-mb`` (413, before reading); the stream
is cut at the declared length. It is unpacked into a fresh private folder by a streaming
extractor that accepts only regular files and folders with relative names, once each (400 with
the offending member), then ``load_manifest(verify=True)`` checks every sha256 and every path
the manifest names must stay inside the folder (422). Only then is the job queued (503 when the
queue is full, checked before the body is read too). The folder is deleted when the job ends;
the result stays in memory for the last ``max_results`` jobs.

Module level imports the standard library only: numpy and the runtime load with the first job.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import json
import lzma
import math
import os
import secrets
import shutil
import signal
import socket
import socketserver
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.parse
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from robopt_compile import __version__
from robopt_compile.errors import InputError, RoboptError

from .manifest import MANIFEST, load_manifest
from .remote import API, DEFAULT_PORT, read_token_file

PROG = "robopt-bench serve"
MAX_UPLOAD_MB = 2048
MAX_QUEUE = 8
MAX_RESULTS = 64
MAX_MEMBERS = 100_000
SOCKET_TIMEOUT_S = 60.0  # a stalled upload frees its thread after this long
MAX_WAIT_S = 60.0  # longest long-poll (GET /v1/jobs/<id>?wait=S)
_CHUNK = 1 << 20

Progress = Callable[[int], None]
# (bundle folder, settings for run_benchmark, progress) -> the harness result
Runner = Callable[[Path, dict[str, Any], Progress], dict[str, Any]]
Log = Callable[[str], None]


class HTTPError(Exception):
    """An answer that is not a success: status, one line, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers or {}


def harness_runner(bundle: Path, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The default runner: ``run_benchmark``, exactly as ``robopt-bench BUNDLE`` runs it."""
    from .harness import run_benchmark

    return run_benchmark(bundle, progress=progress, **settings)


# --- request settings ------------------------------------------------------------------------


def _number(name: str, raw: str, kind: type, low: float, open_low: bool = False) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise HTTPError(400, f"{name}={raw!r} is not a number.") from None
    if not math.isfinite(value) or value < low or (open_low and value == low):
        raise HTTPError(400, f"{name}={raw!r} is out of range.")
    return value


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise HTTPError(400, f"{name}={raw!r} must be 0 or 1.")


def parse_settings(query: str) -> tuple[dict[str, Any], bool]:
    """Benchmark settings and ``wait`` from a POST /v1/jobs query string (400 when bad)."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise HTTPError(400, f"malformed query string {query[:100]!r}.") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise HTTPError(400, f"query parameter {k!r} is given twice.")
        params[k] = v
    known = ("runs", "warmup", "threads", "control_rate", "verify", "wait")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise HTTPError(400, f"unknown query parameter(s) {unknown}; known: {list(known)}.")
    given = {k: v for k, v in params.items() if v != ""}  # blank: the default
    settings: dict[str, Any] = {
        "runs": _number("runs", given["runs"], int, 1) if "runs" in given else 100,
        "warmup": _number("warmup", given["warmup"], int, 0) if "warmup" in given else 10,
        "threads": _number("threads", given["threads"], int, 1) if "threads" in given else None,
        "control_rate": None,
        "verify": _flag("verify", given["verify"]) if "verify" in given else True,
    }
    if "control_rate" in given:
        settings["control_rate"] = _number(
            "control_rate", given["control_rate"], float, 0.0, open_low=True
        )
    return settings, _flag("wait", given["wait"]) if "wait" in given else False


# --- safe extraction -------------------------------------------------------------------------


class _Body:
    """The request body as a file: at most ``length`` bytes, counted; short reads noted."""

    def __init__(self, raw: IO[bytes], length: int) -> None:
        self.raw, self.left, self.count, self.short = raw, length, 0, False

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if size is None or size < 0 else min(size, self.left)
        try:
            data = self.raw.read(n)
        except TimeoutError:
            raise HTTPError(
                400, f"the upload stalled (no data for {SOCKET_TIMEOUT_S:g} s)."
            ) from None
        except OSError as exc:
            raise HTTPError(400, f"the upload broke off ({exc}).") from None
        self.left -= len(data)
        self.count += len(data)
        if len(data) < n:
            self.short, self.left = True, 0
        return data

    def drain(self) -> None:
        """Read what is left of the declared body, so the answer is not lost to a TCP reset
        (the client has a valid token and the length was within the limit)."""
        with contextlib.suppress(HTTPError):
            while self.read(_CHUNK):
                pass


class _WriteError(Exception):
    """Writing into the job folder failed (a server problem, not the upload's)."""


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "FIFO"
    return f"entry of tar type {m.type!r}"


def _member_parts(name: str) -> tuple[str, ...]:
    """The member's path parts; 400 for absolute names, ``..``, control characters."""
    if not name or any(ord(c) < 32 for c in name) or "\\" in name:
        raise HTTPError(400, f"archive member {name!r} has an unusable name.")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise HTTPError(400, f"archive member {name!r} has an absolute path.")
    parts = tuple(x for x in p.parts if x != ".")
    if ".." in parts:
        raise HTTPError(400, f"archive member {name!r} points outside the archive ('..').")
    return parts


def _write_member(src: IO[bytes], target: Path, size: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise
    except OSError as exc:
        raise _WriteError(str(exc)) from exc
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                raise EOFError("unexpected end of data")
            left -= len(chunk)
            try:
                out.write(chunk)
            except OSError as exc:
                raise _WriteError(str(exc)) from exc


def extract_archive(
    stream: Any, dest: Path, max_bytes: int, max_members: int = MAX_MEMBERS
) -> tuple[int, int]:
    """Unpack a tar stream (plain, gz, bz2 or xz) into the new folder ``dest``, safely.

    Accepts regular files and folders with relative names, each name once; refuses absolute
    paths, ``..``, links, devices, FIFOs (400 naming the member) and archives that unpack to
    more than ``max_bytes`` or ``max_members`` (413). Files are created with ``O_EXCL`` and
    ``O_NOFOLLOW`` so nothing can be written through a name that already exists.

    Returns:
        (members, bytes unpacked).

    Raises:
        HTTPError: 400 or 413 as above, 400 for a corrupt or truncated stream, 500 when the
            folder cannot be written.
    """
    dest.mkdir(mode=0o700)
    real = os.path.realpath(dest)
    seen: set[tuple[str, ...]] = set()
    members = total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                members += 1
                if members > max_members:
                    raise HTTPError(413, f"the archive has more than {max_members} entries.")
                parts = _member_parts(m.name)
                if not (m.isreg() or m.isdir()):
                    raise HTTPError(
                        400,
                        f"archive member {m.name!r} is a {_kind(m)}; only regular files and "
                        "folders are accepted.",
                    )
                if not parts:  # "." itself
                    continue
                if parts in seen:
                    raise HTTPError(400, f"archive member {m.name!r} appears more than once.")
                seen.add(parts)
                target = dest.joinpath(*parts)
                parent = os.path.realpath(target.parent)
                if parent != real and not parent.startswith(real + os.sep):  # cannot happen
                    raise HTTPError(400, f"archive member {m.name!r} points outside the archive.")
                try:
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True, mode=0o700)
                        continue
                    total += m.size
                    if total > max_bytes:
                        raise HTTPError(
                            413, f"the archive unpacks to more than {max_bytes >> 20} MiB."
                        )
                    src = tar.extractfile(m)
                    assert src is not None  # a regular file
                    _write_member(src, target, m.size)
                except (FileExistsError, IsADirectoryError, NotADirectoryError):
                    raise HTTPError(
                        400, f"archive member {m.name!r} clashes with another member's path."
                    ) from None
    except (HTTPError, _WriteError):
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        if isinstance(stream, _Body) and stream.short:
            raise HTTPError(400, f"the upload ended after {stream.count} bytes.") from None
        raise HTTPError(
            400, f"the upload is not a valid tar, tar.gz, tar.bz2 or tar.xz archive ({exc})."
        ) from None
    return members, total


def _bundle_root(folder: Path) -> Path:
    """The unpacked bundle: ``folder`` or its one sub-folder holding ``manifest.json``."""
    if (folder / MANIFEST).is_file():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise HTTPError(
        400, f"the archive has no {MANIFEST} at its top level (or in one top-level folder)."
    )


def _manifest_paths(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(what, path relative to the bundle) for every path the manifest names."""
    for rel in manifest.get("files") or {}:
        yield "files entry", rel
    engines = [("engine", manifest.get("engine") or {})] if "graphs" not in manifest else []
    for g in manifest.get("graphs") or []:  # a multi-graph bundle: every graph's engine
        if isinstance(g, dict):
            engines.append((f"graphs[{g.get('name')}].engine", g.get("engine") or {}))
            for rel in g.get("model_files") or []:
                yield f"graphs[{g.get('name')}].model_files entry", rel
    for what, engine in engines:
        yield from _engine_paths(what, engine)
    ref = manifest.get("reference") or {}
    for key in ("inputs", "outputs"):
        if key in ref:
            yield f"reference.{key}", ref[key]
    for rel in (manifest.get("build") or {}).get("model_files") or []:
        yield "build.model_files entry", rel


def _engine_paths(what: str, engine: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    edir = engine.get("dir", "engine")
    yield f"{what}.dir", edir
    under = f"{edir}/" if isinstance(edir, str) else ""
    for rel in engine.get("files") or []:
        yield f"{what} file", f"{under}{rel}" if isinstance(rel, str) else rel
    config = engine.get("config") or {}
    for key in ("model", "recipe"):
        if key in config:
            rel = config[key]
            yield f"{what}.config.{key}", f"{under}{rel}" if isinstance(rel, str) else rel
    for rel, desc in ((engine.get("compressed") or {}).get("files") or {}).items():
        yield f"{what}.compressed file", f"{under}{rel}"
        if isinstance(desc, dict) and "original" in desc:
            orig = desc["original"]
            yield f"{what}.compressed original", f"{under}{orig}" if isinstance(orig, str) else orig


def validate_bundle(root: Path) -> dict[str, Any]:
    """``load_manifest(verify=True)`` plus: every named path stays inside ``root`` (422)."""
    try:
        manifest = load_manifest(root, verify=True)
    except InputError as exc:
        raise HTTPError(422, str(exc).replace(str(root), "the bundle")) from None
    real = os.path.realpath(root)
    for what, rel in _manifest_paths(manifest):
        if not isinstance(rel, str) or not rel:
            raise HTTPError(422, f"manifest.json: {what} {rel!r} is not a path.")
        p = PurePosixPath(rel)
        resolved = os.path.realpath(os.path.join(real, *p.parts))
        if p.is_absolute() or ".." in p.parts or not resolved.startswith(real + os.sep):
            raise HTTPError(422, f"manifest.json: {what} {rel!r} points outside the bundle.")
    return manifest


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
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    exit_code: int | None = None


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: BenchServer) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang a robot
        # without a name server for seconds: bind without it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class BenchServer:
    """The benchmark server: HTTP front end, job table, one worker thread.

    ``BenchServer(token).start()`` serves in a background thread (tests, ``make bench``);
    ``serve()`` below runs it in the foreground with signal handling (the CLI). ``runner``
    replaces ``run_benchmark`` (tests use it to hold the worker busy deterministically).
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
        max_unpacked_bytes: int | None = None,
        runner: Runner | None = None,
        log: Log | None = None,
        debug: bool = False,
    ) -> None:
        if not token:
            raise InputError("the server needs a token (--token-file).")
        if max_upload_bytes < 1 or max_queue < 1 or max_results < 1:
            raise InputError("max upload, queue length and kept results must be >= 1.")
        self.token = token.encode()
        self.max_upload_bytes = max_upload_bytes
        self.max_unpacked_bytes = max_unpacked_bytes or 4 * max_upload_bytes
        self.max_queue = max_queue
        self.max_results = max_results
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
            self.httpd = _HTTPServer((host, port), self)
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

    def close(self, grace_s: float = 10.0) -> None:
        """Stop serving, fail the queued jobs, give the running job ``grace_s`` to end, and
        delete every job folder."""
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
                self._lock.notify_all()
            for job in cancelled:
                shutil.rmtree(job.folder, ignore_errors=True)
            if running is not None and self._worker.is_alive():
                self.log(f"waiting up to {grace_s:g} s for job {running.id} to end")
            self._worker.join(grace_s)
            if self._worker.is_alive():
                self.log("the running job did not end: leaving it")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --

    def check_capacity(self) -> None:
        """503 when no queue slot is free (checked before an upload's body is read)."""
        with self._lock:
            if self._closing:
                raise HTTPError(503, "the server is shutting down.")
            if len(self._queue) + self._reserved >= self.max_queue:
                raise HTTPError(
                    503,
                    f"the queue is full ({self.max_queue} jobs waiting or uploading); try "
                    "again when a job has ended.",
                    {"Retry-After": "10"},
                )

    def submit(self, body: IO[bytes], length: int, settings: dict[str, Any]) -> Job:
        """Receive, unpack and check an upload of ``length`` bytes; queue it as a job."""
        with self._lock:
            self.check_capacity()
            self._reserved += 1
            self._uploads_seen += 1
        reserved, folder = True, None
        try:
            t0 = time.perf_counter()
            folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            stream = _Body(body, length)
            try:
                extract_archive(stream, folder / "bundle", self.max_unpacked_bytes)
            finally:
                stream.drain()
            if stream.short:
                raise HTTPError(400, f"the upload ended after {stream.count} of {length} bytes.")
            upload_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            bundle = _bundle_root(folder / "bundle")
            validate_bundle(bundle)
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
                self._reserved -= 1
                reserved = False
                if self._closing:
                    raise HTTPError(503, "the server is shutting down.")
                self._queue.append(job)
                self._jobs[job.id] = job
                folder = None  # the worker owns it now
                self._lock.notify_all()
            return job
        except _WriteError as exc:
            raise HTTPError(500, f"cannot write the upload into the work dir: {exc}") from None
        finally:
            if reserved:
                with self._lock:
                    self._reserved -= 1
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

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
        ended = [j for j in self._jobs.values() if j.state in ("done", "failed")]
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
        def progress(n: int) -> None:
            job.done_runs += n

        result: dict[str, Any] | None = None
        error, etype, code = None, "", 1
        try:
            result = self.runner(job.bundle, dict(job.settings), progress)
        except RoboptError as exc:
            error, etype, code = str(exc), type(exc).__name__, exc.exit_code
        except Exception as exc:
            error = f"internal error: {type(exc).__name__}: {exc}"
            etype = type(exc).__name__
            self.log(f"job {job.id}: {error}")
            if self.debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__)
        shutil.rmtree(job.folder, ignore_errors=True)  # before "done": an ended job has no folder
        with self._lock:
            assert job.started is not None
            end = time.monotonic()
            job.overlapping_uploads = uploading + self._uploads_seen - uploads_before
            if result is not None:
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
            msg = " ".join((error or "").split())[:500] or None
            self._finish(job, result, msg, etype, code)
        state = "done" if error is None else f"failed: {msg}"
        self.log(f"job {job.id} {state} ({(end - job.started):.2f} s)")

    def view(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """A job's state for GET /v1/jobs/<id>; waits up to ``wait_s`` for it to end."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise HTTPError(
                    404,
                    f"no job {job_id!r} here (this server keeps the last {self.max_results} "
                    "results, and none across restarts).",
                )
            if wait_s > 0:
                self._lock.wait_for(
                    lambda: job.state in ("done", "failed") or self._closing, timeout=wait_s
                )
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
            if view["state"] in ("done", "failed") or self._closing:
                return view

    def health(self) -> dict[str, Any]:
        """GET /v1/health: versions, machine, which runtimes run here, the queue."""
        from .harness import machine_summary

        machine = machine_summary("-")
        for key in ("runtime", "runtime_version"):
            machine.pop(key, None)
        with self._lock:
            queue = {
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
            "queue": queue,
            "max_upload_bytes": self.max_upload_bytes,
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


_ROUTES = {"health": ("GET",), "jobs": ("POST",), "job": ("GET",)}  # route -> methods


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

    @property
    def app(self) -> BenchServer:
        return self.server.app

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request comes from _send_json, without headers or secrets

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    # -- answers --

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.send_header("Cache-Control", "no-store")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(OSError):
                self.wfile.write(data)
        ms = (time.perf_counter() - self._t0) * 1e3
        path = "".join(c if c.isprintable() else "?" for c in (getattr(self, "path", "") or "-"))
        extra = f": {body['error']}" if status >= 400 and "error" in body else ""
        self.app.log(
            f"{self.client_address[0]} {self.command or '-'} {path[:200]} {status} "
            f"{ms:.0f} ms{extra[:300]}"
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors found by http.server (bad request line, 501, ...) as JSON too."""
        text = message or self.responses.get(code, ("error",))[0]
        self._send_json(code, {"error": text}, {})

    def _dispatch(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except Exception as exc:
            if self.app.debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__)
            msg = " ".join(str(exc).split())[:200]
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}: {msg}"}, {})

    # -- checks --

    def _authorize(self) -> None:
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.app.token
        )
        if not ok:
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
                405, f"{self.command} is not allowed on {path}.", {"Allow": ", ".join(allowed)}
            )
        return route, job_id, query

    def _check_upload(self) -> tuple[dict[str, Any], bool, int]:
        """Everything about a POST that can be refused before its body is read."""
        if self._checked is not None:
            return self._checked
        _, _, query = self._route()
        settings, wait = parse_settings(query)
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked uploads are not accepted: send a Content-Length.")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise HTTPError(411, "the upload needs a Content-Length header.")
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise HTTPError(400, f"bad Content-Length {lengths}.")
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
        self.app.check_capacity()
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

    # -- methods --

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def _get(self) -> None:
        route, job_id, query = self._route()
        if route == "health":
            self._send_json(200, self.app.health(), {})
            return
        params = urllib.parse.parse_qs(query)
        try:
            wait_s = min(float(params.get("wait", ["0"])[0]), MAX_WAIT_S)
        except ValueError:
            raise HTTPError(400, "wait must be a number of seconds.") from None
        assert job_id is not None
        self._send_json(200, self.app.view(job_id, max(wait_s, 0.0)), {})

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _post(self) -> None:
        settings, wait, length = self._check_upload()
        job = self.app.submit(self.rfile, length, settings)
        if wait:
            self._send_json(200, self.app.wait_done(job.id), {})
            return
        location = f"{API}/jobs/{job.id}"
        self._send_json(202, {**self.app.view(job.id), "url": location}, {"Location": location})

    def _refuse(self) -> None:
        self._dispatch(self._route)  # 401, 404 or 405: no other method is served

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse


# --- the CLI's foreground server -------------------------------------------------------------


def serve(
    token_file: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_upload_mb: int = MAX_UPLOAD_MB,
    max_queue: int = MAX_QUEUE,
    work_dir: str | Path | None = None,
    debug: bool = False,
) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM, then stop cleanly.

    The first signal stops accepting, fails queued jobs, waits briefly for the running one
    and deletes the job folders; a second signal quits at once.

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
        log=log,
        debug=debug,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: quit now
        stopping.set()
        log(f"{signal.Signals(signum).name}: stopping (again to quit at once)")
        threading.Thread(target=app.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    else:
        previous = {}
    try:
        if host not in ("127.0.0.1", "::1", "localhost"):
            log(
                "warning: plain HTTP on a network interface: anyone who can see the traffic "
                "can read the token and the bundles; use a trusted network or an SSH tunnel"
            )
        log(
            f"listening on {app.url} (robopt {__version__}, token from {token_file}, "
            f"max upload {max_upload_mb} MiB, queue {max_queue}, work dir {app.root})"
        )
        app.serve_forever()
    finally:
        try:
            app.close()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        log("stopped")
