"""The HTTP front end of ``robopt-bench serve``: connection cap, token check, routes.

``CappedHTTPServer`` serves one thread per request, at most ``max_connections`` at once; one
more gets a 503 from a single refusing thread. ``RequestHandler`` reads the request line and
headers under one whole deadline, checks ``Authorization: Bearer <token>`` in constant time
(``AuthLimiter`` counts wrong tokens per address: 429 after too many, without comparing),
routes ``/v1/health`` and ``/v1/jobs[/<id>]``, refuses an upload before its body is read
wherever it can (``Expect: 100-continue``), and logs one line per request, never headers or
the token. Every answer is JSON and closes the connection; an unexpected error is a 500 whose
text goes to the log only.

What is served comes from an ``App`` (``server.BenchServer``); docs/REMOTE.md has the API.
Standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import io
import json
import queue
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from typing import IO, Any, Protocol

from robopt_compile import __version__

from ..remote import API
from .intake import (
    ENDED,
    MAX_WAIT_S,
    SOCKET_TIMEOUT_S,
    AuthLimiter,
    HTTPError,
    SocketReader,
    parse_number,
    parse_settings,
)
from .jobs import Job, Log

ROUTES = {"health": ("GET",), "jobs": ("POST",), "job": ("GET", "DELETE")}  # route -> methods


class App(Protocol):
    """What the front end needs of the server behind it (``server.BenchServer``)."""

    token: bytes
    auth: AuthLimiter
    log: Log
    debug: bool
    header_timeout_s: float
    max_upload_bytes: int
    max_job_s: float

    def check_capacity(self, client: str = "-") -> None: ...

    def submit(
        self,
        body: IO[bytes],
        length: int,
        settings: dict[str, Any],
        client: str = "-",
        reader: SocketReader | None = None,
    ) -> Job: ...

    def view(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]: ...

    def wait_done(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str, wait_s: float = 0.0) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...


class CappedHTTPServer(http.server.ThreadingHTTPServer):
    """One thread per request, at most ``max_connections`` at once: beyond that a connection
    gets a 503 from a single refusing thread (or is closed when that one is busy too)."""

    daemon_threads = True
    # socketserver's default backlog of 5 makes a burst of connections wait for SYN
    # retransmits (1 s, 3 s, ...) before they are even accepted: let the kernel queue them.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, max_connections: int) -> None:
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
        super().__init__(address, RequestHandler)
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


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Routes, auth, limits and one log line per request; every answer is JSON."""

    server: CappedHTTPServer
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
    def app(self) -> App:
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
        except Exception as exc:  # any bug answers 500 instead of dropping the connection
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
        allowed = ROUTES[route]
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
