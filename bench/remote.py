"""Benchmark a bundle on a robot that runs ``robopt-bench serve`` (docs/REMOTE.md).

The build machine checks the bundle here first (``load_manifest``), asks the robot's server
whether it can run the bundle's backend and how large an upload it takes, packs the bundle as a
tar.gz in a temporary file (without ``results/``), uploads it, follows the job and returns the
harness result with a ``remote`` block. ``save_remote_result`` files it under the bundle's
``results/`` folder, which the manifest does not hash (docs/BUNDLE.md).

Every failure is one robopt error line: the HTTP status and the server's ``{"error": ...}``
become ``InputError`` (bad token, bad bundle, too large), ``BackendUnavailableError`` (robot
unreachable, busy, runtime missing there) or the error class the harness raised on the robot.

Standard library only (http.client, tarfile, urllib): the robot side imports this module too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import socket
import stat
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from robopt_compile.errors import (
    BackendUnavailableError,
    CheckFailedError,
    InputError,
    RoboptError,
)

from .manifest import load_manifest, runtimes
from .retry import DEFAULT_ATTEMPTS, TransientError, with_retries

API = "/v1"
RESULTS_DIR = "results"
DEFAULT_PORT = 8470
CONTINUE_WAIT_S = 5.0  # how long to wait for "100 Continue" before sending the body anyway
_CHUNK = 1 << 20
Progress = Callable[[int], None]


def read_token_file(path: str | Path, warn: Callable[[str], None] | None = None) -> str:
    """The token in the first line of ``path``; warns when others may read the file.

    Raises:
        InputError: the file is missing, unreadable or its first line is empty.
    """
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"token file {str(p)!r} does not exist; create one with: "
            f"python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > {p}; chmod 600 {p}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"token file {str(p)!r} cannot be read ({exc}).") from None
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise InputError(f"token file {str(p)!r} is empty; its first line must be the token.")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError(f"token file {str(p)!r}: the token must be one word of printable text.")
    if warn is not None:
        if stat.S_IMODE(st.st_mode) & 0o077:
            warn(f"token file {p} is readable by group or others: run chmod 600 {p}")
        if len(token) < 16:
            warn(f"the token in {p} has only {len(token)} characters; use 32 random ones")
    return token


# --- packing ---------------------------------------------------------------------------------


def _tarinfo(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(str(path), arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""  # the build machine's user names stay here
    info.mode = 0o644
    return info


def pack_bundle(bundle_dir: str | Path, dest: Path) -> int:
    """Write the bundle's regular files (not ``results/``) into ``dest`` as tar.gz; its size.

    gzip level 1: engines and weights barely compress, so a higher level only costs time.

    Raises:
        InputError: the bundle holds a symbolic link or something that is not a plain file.
    """
    root = Path(bundle_dir)
    with tarfile.open(dest, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            rel_dir = here.relative_to(root)
            if rel_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d != RESULTS_DIR]
            dirnames.sort()
            links = [d for d in dirnames if (here / d).is_symlink()]  # os.walk lists, never enters
            for name in [*links, *sorted(filenames)]:
                path = here / name
                rel = (rel_dir / name).as_posix()
                if path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode):
                    raise InputError(
                        f"bundle entry {rel!r} is a link or special file; the robot accepts "
                        "regular files only: replace it with the file itself."
                    )
                info = _tarinfo(tar, path, rel)
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return dest.stat().st_size


# --- HTTP ------------------------------------------------------------------------------------


class RobotBusyError(BackendUnavailableError, TransientError):
    """The server's queue is full (503): worth asking again a little later."""


class RobotUnreachableError(BackendUnavailableError, TransientError):
    """No connection, or it broke, or no answer in time: the server may be restarting."""


class _Server:
    """One robopt-bench server: base URL, token, and the one-line error mapping."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"device URL {url!r} must look like http://ROBOT:{DEFAULT_PORT}.")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (DEFAULT_PORT if parts.scheme == "http" else 443)
        self.prefix = parts.path.rstrip("/")
        self.url = f"{parts.scheme}://{parts.netloc}{self.prefix}"
        self.token = token
        self.timeout = timeout

    def connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def unreachable(self, exc: BaseException) -> NoReturn:
        cls: type[BackendUnavailableError] = RobotUnreachableError
        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(exc, TimeoutError | socket.timeout):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, socket.gaierror):
            why, cls = f"unknown host {self.host!r}", BackendUnavailableError  # not transient
        else:
            why = str(exc) or type(exc).__name__
        raise cls(
            f"cannot reach {self.url} ({why}): is `robopt-bench serve` running there?"
        ) from exc

    def fail(self, status: int, body: bytes, what: str) -> NoReturn:
        """Raise the robopt error for an HTTP error answer."""
        try:
            msg = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            text = body.decode("utf-8", "replace").strip()
            msg = text.splitlines()[0][:200] if text else http.client.responses.get(status, "")
        msg = " ".join(msg.split())
        if status == 401:
            raise InputError(f"token rejected by {self.url}: check --token-file.")
        if status == 404 and what == "health":
            raise InputError(f"{self.url} does not serve the robopt-bench API ({API}/health: 404).")
        if status == 404:
            raise BackendUnavailableError(
                f"{self.url}: {msg} (the server may have restarted or dropped old results)."
            )
        if status == 413:
            raise InputError(f"{self.url} refused the upload: {msg}")
        if status in (400, 411, 422):
            raise InputError(f"{self.url} rejected the bundle: {msg}")
        if status == 408:
            raise BackendUnavailableError(f"{self.url} dropped the upload: {msg}")
        if status == 429:
            raise InputError(f"{self.url} refuses this address for now: {msg} Check --token-file.")
        if status == 503:
            raise RobotBusyError(f"{self.url} is busy: {msg}")
        if status >= 500:
            raise RoboptError(f"{self.url} failed ({status}) on {what}: {msg}")
        raise InputError(f"{self.url} answered {status} to {what}: {msg}")

    def request(self, method: str, path: str, what: str) -> dict[str, Any]:
        """A bodiless request; the JSON answer, or the mapped error."""
        conn = self.connection()
        try:
            conn.request(method, self.prefix + path, headers=self.headers())
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.unreachable(exc)
        finally:
            conn.close()
        return self._answer(resp.status, body, what)

    def _answer(self, status: int, body: bytes, what: str) -> dict[str, Any]:
        if status >= 400:
            self.fail(status, body, what)
        try:
            data = json.loads(body)
        except ValueError:
            raise RoboptError(f"{self.url} sent a non-JSON answer to {what}.") from None
        if not isinstance(data, dict):
            raise RoboptError(f"{self.url} sent an unexpected answer to {what}.")
        return data

    def upload(self, path: str, body: Path, size: int) -> dict[str, Any]:
        """POST ``body`` with ``Expect: 100-continue``: refusals arrive before the upload."""
        conn = self.connection()
        try:
            conn.putrequest("POST", self.prefix + path, skip_accept_encoding=True)
            # Expect: 100-continue needs a peek at the socket, which TLS sockets cannot do.
            expect = self.scheme == "http"
            headers = {
                **self.headers(),
                "Content-Type": "application/gzip",
                "Content-Length": str(size),
                "Connection": "close",
            }
            if expect:
                headers["Expect"] = "100-continue"
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            if not expect or _await_continue(conn.sock, CONTINUE_WAIT_S):
                try:
                    with open(body, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            conn.sock.sendall(chunk)
                except OSError:  # the server answered and closed early: read its answer
                    pass
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.unreachable(exc)
        finally:
            conn.close()
        return self._answer(resp.status, data, "the upload")


def _await_continue(sock: socket.socket | None, wait: float) -> bool:
    """After the headers: True to send the body (100 Continue, or no answer in ``wait`` s),
    False when the server already sent its final answer (401, 413, 503, ...)."""
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return True
    head = sock.recv(4096, socket.MSG_PEEK)
    if not re.match(rb"HTTP/1\.[01] 100\b", head):
        return False
    buf = b""
    while b"\r\n\r\n" not in buf:  # consume exactly the interim answer
        peek = sock.recv(4096, socket.MSG_PEEK)
        if not peek:
            return False
        end = (buf + peek).find(b"\r\n\r\n")
        take = len(peek) if end < 0 else end + 4 - len(buf)
        buf += sock.recv(take)
    return True


def is_device_name(device: str) -> bool:
    """``any:BOARD`` or a registered robot's bare name (the device farm, robopt_compile/farm),
    not a robot's URL (``http://...`` or ``HOST:PORT``)."""
    return device.startswith("any:") or not ("://" in device or ":" in device)


def robot_health(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """The robot's ``GET /v1/health`` (versions, runtimes, queue), once, no retries.

    Raises:
        RobotUnreachableError / BackendUnavailableError: no answer; InputError: a rejected
        token or not a robopt-bench server (one line each).
    """
    return _Server(url, token, timeout).request("GET", f"{API}/health", "health")


def _query(**settings: Any) -> str:
    return urllib.parse.urlencode({k: v for k, v in settings.items() if v is not None})


_EXIT_CLASSES: dict[int, type[RoboptError]] = {
    2: InputError,
    3: BackendUnavailableError,
    4: CheckFailedError,
}


def _job_error(server: _Server, job: dict[str, Any], host: str) -> NoReturn:
    msg = " ".join(str(job.get("error") or "the job failed").split())
    code = int(job.get("exit_code") or 1)
    cls = _EXIT_CLASSES.get(code, RoboptError)
    err = cls(f"on {host} ({server.url}): {msg}")
    err.exit_code = code
    raise err


def cancel_job(url: str, token: str, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Cancel job ``job_id`` on the server at ``url`` (``DELETE /v1/jobs/<id>``): a queued job
    leaves the queue, a running one stops at the harness's next progress point. Returns the
    job's view (``state`` "failed" once it has stopped, "running" with ``cancelling`` until).

    Raises:
        InputError: bad token, or the job has already ended (409).
        BackendUnavailableError: server unreachable, or no such job there.
    """
    server = _Server(url, token, timeout)
    return server.request("DELETE", f"{API}/jobs/{job_id}?wait={min(timeout / 2, 5):g}", "cancel")


def remote_benchmark(
    bundle_dir: str | Path,
    url: str,
    token: str,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    control_rate: float | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    timeout: float = 30.0,
    job_timeout: float | None = None,
    retries: int = DEFAULT_ATTEMPTS - 1,
    on_retry: Callable[[str], None] | None = None,
    retry_base_s: float = 1.0,
) -> dict[str, Any]:
    """Benchmark ``bundle_dir`` on the robot serving at ``url``; the harness result.

    Args:
        bundle_dir: the folder ``robopt-compile -o`` wrote.
        url: the server, e.g. ``http://robot.local:8470``.
        token: the server's token (``read_token_file``).
        runs, warmup, threads, control_rate, verify: as for ``harness.run_benchmark``; the
            server checks every sha256 at upload whatever ``verify`` says.
        progress: called with the number of timed runs finished since the last call.
        timeout: seconds any one network operation may take.
        job_timeout: seconds to wait for the job to end (None: as long as it takes; a
            deferred TensorRT build on the robot can take minutes).
        retries: how often a transient failure (server busy with a full queue, connection
            refused, reset or timed out) of one request is retried, with exponential backoff
            from ``retry_base_s`` (doubling, capped at 15 s, jittered); 0: never.
        on_retry: called with a one-line message before each wait.

    Returns:
        ``run_benchmark``'s dict, with ``bundle`` set to the local folder and a ``remote``
        block: host, server_version, url, job_id, upload_bytes, upload_ms, validate_ms,
        queue_wait_ms, pack_ms, overlapping_uploads.

    Raises:
        InputError: bad bundle here or there, bad token, upload too large.
        BackendUnavailableError: robot unreachable or busy, or its runtime is missing.
        CheckFailedError, RoboptError: what the harness raised on the robot.
    """
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise InputError(
            f"runs must be >= 1, warmup >= 0 and threads >= 1 (got {runs}, {warmup}, {threads})."
        )
    if retries < 0:
        raise InputError(f"retries must be >= 0 (got {retries}).")
    root = Path(bundle_dir)
    manifest = load_manifest(root, verify=verify)
    server = _Server(url, token, timeout)

    def retried(fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        def note(n: int, wait: float, exc: BaseException) -> None:
            if on_retry is not None:
                on_retry(f"{what}: {exc} Retrying in {wait:.1f} s (retry {n} of {retries}).")

        return with_retries(fn, attempts=retries + 1, base_s=retry_base_s, on_retry=note)

    health = retried(lambda: server.request("GET", f"{API}/health", "health"), "health check")
    host = str(health.get("host", server.host))
    for name in runtimes(manifest):  # a multi-graph bundle's graphs may name another
        runtime = (health.get("runtimes") or {}).get(name)
        if isinstance(runtime, dict) and runtime.get("available") is False:
            raise BackendUnavailableError(
                f"{host} ({server.url}) cannot run backend {name!r}: "
                f"{runtime.get('reason', 'its runtime is missing')}."
            )
    limit = health.get("max_upload_bytes")

    with tempfile.TemporaryDirectory(prefix="robopt-remote-") as tmp:
        t0 = time.perf_counter()
        archive = Path(tmp) / "bundle.tar.gz"
        size = pack_bundle(root, archive)
        pack_ms = (time.perf_counter() - t0) * 1e3
        if isinstance(limit, int) and size > limit:
            raise InputError(
                f"the packed bundle is {size / 2**20:.1f} MiB but {server.url} takes at most "
                f"{limit / 2**20:.0f} MiB: restart the server with a larger --max-upload-mb."
            )
        query = _query(
            runs=runs,
            warmup=warmup,
            threads=threads,
            control_rate=control_rate,
            verify=int(verify),
        )
        job = retried(lambda: server.upload(f"{API}/jobs?{query}", archive, size), "upload")

    job_id = job.get("id")
    if not isinstance(job_id, str):
        raise RoboptError(f"{server.url} accepted the upload but sent no job id.")
    deadline = None if job_timeout is None else time.monotonic() + job_timeout
    reported = 0
    wait = 0.5 if progress is not None else 10.0  # long-poll: the server answers on change
    try:
        while job.get("state") not in ("done", "failed"):
            if deadline is not None and time.monotonic() > deadline:
                _cancel_quietly(url, token, job_id)
                raise BackendUnavailableError(
                    f"job {job_id} on {server.url} did not end within {job_timeout:g} s "
                    f"(state {job.get('state')}); it was cancelled there."
                )
            poll = wait if deadline is None else max(0.05, min(wait, deadline - time.monotonic()))
            server.timeout = max(timeout, poll + timeout)
            path = f"{API}/jobs/{job_id}?wait={poll:g}"
            job = retried(lambda p=path: server.request("GET", p, "the job status"), "job status")
            done = int((job.get("progress") or {}).get("done") or 0)
            if progress is not None and done > reported:
                progress(done - reported)
                reported = done
    except KeyboardInterrupt:  # Ctrl-C here: do not leave the robot busy with it
        _cancel_quietly(url, token, job_id)
        raise
    if job["state"] == "failed":
        _job_error(server, job, host)
    result = job.get("result")
    if not isinstance(result, dict):
        raise RoboptError(f"{server.url} finished job {job_id} without a result.")
    if progress is not None and runs > reported:
        progress(runs - reported)
    result["remote"] = {
        **(result.get("remote") or {}),
        "url": server.url,
        "job_id": job_id,
        "pack_ms": pack_ms,
        "server_bundle": result.get("bundle"),
    }
    result["bundle"] = str(root.resolve())
    return result


def _cancel_quietly(url: str, token: str, job_id: str) -> None:
    """Best effort: the caller is already failing or interrupted."""
    with contextlib.suppress(RoboptError, OSError):
        cancel_job(url, token, job_id, timeout=5.0)


# --- results ---------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "robot"


def save_remote_result(bundle_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` to ``<bundle>/results/remote-<host>-<UTC time>.json`` atomically.

    The file appears complete or not at all; an existing result is never overwritten.
    ``results/`` is outside the manifest's hashed ``files``.

    Raises:
        InputError: the folder cannot be written.
    """
    from robopt_compile.bench.results import save_result

    host = _safe_name(str((result.get("remote") or {}).get("host") or "robot"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return save_result(bundle_dir, f"remote-{host}-{stamp}", result, unique=True)
