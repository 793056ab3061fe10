"""What ``robopt-bench serve`` checks of a request before it becomes a job (docs/REMOTE.md).

The limits (every default in one table), wrong tokens counted per address (``AuthLimiter``),
the query's benchmark settings (bounded), the request body read under deadlines (a whole-header
deadline and a minimum average upload rate, not only a per-read timeout a client resets with
every byte it drips), and the unpacked bundle's check: every path its manifest names is judged
on its own before anything is opened, then ``load_manifest(verify=True)``. Answers never name a
server path.

Standard library only.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from robopt_compile.errors import InputError

from ..manifest import MANIFEST, load_manifest
from .archive import show

# Limits (docs/REMOTE.md lists them all; docs/SECURITY.md explains them).
MAX_UPLOAD_MB = 2048
MAX_UNPACKED_MB = 4096  # per upload, whatever the upload limit
MAX_UNPACK_RATIO = 20.0  # unpacked <= ratio x compressed bytes received + 1 MiB
MAX_QUEUE = 8
MAX_RESULTS = 64
MAX_CONNECTIONS = 32  # requests served at once; 503 beyond
MAX_UPLOADS_PER_IP = 2  # uploads being received from one address at once
HEADER_TIMEOUT_S = 10.0  # request line + headers, whole
SOCKET_TIMEOUT_S = 60.0  # longest silence on any one read
MIN_UPLOAD_RATE = 64 << 10  # bytes/s an upload must average, after the grace period
UPLOAD_GRACE_S = 10.0
MAX_JOB_S = 600.0  # wall clock from a job's start; checked between chunks of timed runs
STOP_GRACE_S = 10.0  # how long shutdown waits for the running job to stop
MAX_RUNS = 100_000
MAX_WARMUP = 10_000
MAX_THREADS = 1024
MAX_AUTH_FAILURES = 10  # wrong tokens per address per window, then 429
AUTH_WINDOW_S = 60.0
MAX_MANIFEST_BYTES = 16 << 20
MAX_WAIT_S = 60.0  # longest long-poll (GET /v1/jobs/<id>?wait=S)
_CHUNK = 1 << 20
ENDED = ("done", "failed")


class HTTPError(Exception):
    """An answer that is not a success: status, one line, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers or {}


# --- wrong tokens ----------------------------------------------------------------------------


class AuthLimiter:
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
        """Count one wrong token from ``address`` (the least recent address goes first)."""
        with self._lock:
            seen = self._failures.setdefault(address, deque(maxlen=self.max_failures))
            seen.append(time.monotonic())
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)


# --- request settings ------------------------------------------------------------------------


def parse_number(
    name: str, raw: str, kind: type, low: float, open_low: bool = False, high: float = math.inf
) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise HTTPError(400, f"{name}={raw[:40]!r} is not a number.") from None
    if not math.isfinite(value) or value < low or (open_low and value == low):
        raise HTTPError(400, f"{name}={raw[:40]!r} is out of range.")
    if value > high:
        raise HTTPError(400, f"{name}={raw[:40]!r} is out of range: at most {high:g}.")
    return value


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise HTTPError(400, f"{name}={raw[:40]!r} must be 0 or 1.")


def parse_settings(query: str, max_job_s: float = MAX_JOB_S) -> tuple[dict[str, Any], bool]:
    """Benchmark settings and ``wait`` from a POST /v1/jobs query string (400 when bad).

    Runs, warm-up and threads are bounded, and so is a paced control loop's length
    (``runs / control_rate`` seconds, which the harness cannot interrupt) by ``max_job_s``.
    """
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise HTTPError(400, f"malformed query string {query[:100]!r}.") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise HTTPError(400, f"query parameter {k[:40]!r} is given twice.")
        params[k] = v
    known = ("runs", "warmup", "threads", "control_rate", "verify", "wait")
    unknown = sorted(k[:40] for k in set(params) - set(known))
    if unknown:
        raise HTTPError(400, f"unknown query parameter(s) {unknown[:5]}; known: {list(known)}.")
    given = {k: v for k, v in params.items() if v != ""}  # blank: the default
    bounds = {  # name: (lowest, highest, default)
        "runs": (1, MAX_RUNS, 100),
        "warmup": (0, MAX_WARMUP, 10),
        "threads": (1, MAX_THREADS, None),
    }
    settings: dict[str, Any] = {
        k: parse_number(k, given[k], int, low, high=high) if k in given else default
        for k, (low, high, default) in bounds.items()
    }
    settings["control_rate"] = None
    settings["verify"] = _flag("verify", given["verify"]) if "verify" in given else True
    if "control_rate" in given:
        rate = parse_number("control_rate", given["control_rate"], float, 0.0, open_low=True)
        if settings["runs"] / rate > max_job_s:
            raise HTTPError(
                400,
                f"control_rate={rate:g} with runs={settings['runs']} is a "
                f"{settings['runs'] / rate:.0f} s paced loop; at most {max_job_s:g} s "
                "(--max-job-s).",
            )
        settings["control_rate"] = rate
    return settings, _flag("wait", given["wait"]) if "wait" in given else False


# --- reading requests ------------------------------------------------------------------------


class SocketReader(io.RawIOBase):
    """The request's socket as a raw stream whose reads obey deadlines, not only a per-read
    idle timeout (which a client resets with every byte it drips).

    ``deadline``: an absolute time (the headers' deadline); ``expect_body``: from now on the
    bytes received must keep up ``rate`` bytes/s on average after ``grace_s``. ``why`` says
    which limit a ``TimeoutError`` came from: "headers", "rate" or "idle".
    """

    def __init__(self, sock: socket.socket, idle_s: float) -> None:
        super().__init__()
        self.sock, self.idle_s = sock, idle_s
        self.deadline: float | None = None
        self.why = ""
        self._rate: tuple[float, float, float] | None = None
        self._got = 0

    def readable(self) -> bool:
        return True

    def expect_body(self, grace_s: float, rate: float) -> None:
        self.deadline, self._got = None, 0
        self._rate = (time.monotonic(), grace_s, rate)

    def readinto(self, buf: Any) -> int:
        limit, why = self.deadline, "headers"
        if self._rate is not None:
            start, grace, rate = self._rate
            limit, why = start + grace + self._got / rate, "rate"
        timeout = self.idle_s
        if limit is not None:
            left = limit - time.monotonic()
            if left <= 0:
                self.why = why
                raise TimeoutError(why)
            timeout = min(timeout, left)
        self.sock.settimeout(timeout)
        try:
            n = self.sock.recv_into(buf)
        except TimeoutError:
            self.why = why if timeout < self.idle_s else "idle"
            raise
        self._got += n
        return n


class UploadBody:
    """The request body as a file: at most ``length`` bytes, counted; short reads noted."""

    def __init__(
        self, raw: IO[bytes], length: int, reader: SocketReader | None = None,
        rate: float = MIN_UPLOAD_RATE, grace_s: float = UPLOAD_GRACE_S,
    ) -> None:  # fmt: skip
        self.raw, self.left, self.count, self.short = raw, length, 0, False
        self.reader, self.rate, self.grace_s = reader, rate, grace_s

    def read(self, size: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if size is None or size < 0 else min(size, self.left)
        try:
            data = self.raw.read(n)
        except TimeoutError:
            if self.reader is not None and self.reader.why == "rate":
                raise HTTPError(
                    408,
                    f"the upload arrived slower than {self.rate / 1024:g} KiB/s (after a "
                    f"{self.grace_s:g} s grace period) and was dropped; use a faster link or "
                    "ask for a lower --min-upload-kib-s.",
                ) from None
            raise HTTPError(
                408, f"the upload stalled (no data for {SOCKET_TIMEOUT_S:g} s)."
            ) from None
        except OSError as exc:
            raise HTTPError(400, f"the upload broke off ({type(exc).__name__}).") from None
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


# --- checking the bundle ---------------------------------------------------------------------


def bundle_root(folder: Path) -> Path:
    """The unpacked bundle: ``folder`` or its one sub-folder holding ``manifest.json``."""
    if (folder / MANIFEST).is_file():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise HTTPError(
        400, f"the archive has no {MANIFEST} at its top level (or in one top-level folder)."
    )


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


# (what, base, path): ``path`` as the manifest names it, relative to ``base`` (another path
# of the manifest, checked on its own) or to the bundle (None).
_Named = tuple[str, str | None, Any]


def _manifest_paths(manifest: dict[str, Any]) -> Iterator[_Named]:
    """Every path the manifest names, each as written (never joined to another first)."""
    for rel in _dict(manifest.get("files")):
        yield "files entry", None, rel
    single = "graphs" not in manifest
    engines = [("engine", _dict(manifest.get("engine")))] if single else []
    for g in _list(manifest.get("graphs")):  # a multi-graph bundle: every graph's engine
        g = _dict(g)
        what = f"graphs[{str(g.get('name'))[:40]}]"
        engines.append((f"{what}.engine", _dict(g.get("engine"))))
        for rel in _list(g.get("model_files")):
            yield f"{what}.model_files entry", None, rel
    for what, engine in engines:
        yield from _engine_paths(what, engine)
    ref = _dict(manifest.get("reference"))
    for key in ("inputs", "outputs"):
        if key in ref:
            yield f"reference.{key}", None, ref[key]
    for rel in _list(_dict(manifest.get("build")).get("model_files")):
        yield "build.model_files entry", None, rel


def _engine_paths(what: str, engine: dict[str, Any]) -> Iterator[_Named]:
    edir = engine.get("dir", "engine")
    yield f"{what}.dir", None, edir
    base = edir if isinstance(edir, str) else None
    for rel in _list(engine.get("files")):
        yield f"{what} file", base, rel
    config = _dict(engine.get("config"))
    for key in ("model", "recipe", "trtexec_script"):
        if key in config:
            yield f"{what}.config.{key}", base, config[key]
    for rel, desc in _dict(_dict(engine.get("compressed")).get("files")).items():
        yield f"{what}.compressed file", base, rel
        if isinstance(desc, dict) and "original" in desc:
            yield f"{what}.compressed original", base, desc["original"]


def _outside(what: str, rel: Any) -> HTTPError:
    return HTTPError(
        422,
        f"manifest.json: {what} {show(rel)} leads outside the bundle (absolute paths and '..' "
        "are refused).",
    )


def check_manifest_paths(root: Path, manifest: dict[str, Any]) -> None:
    """422 unless every path the manifest names is, on its own, a relative path without
    ``..`` that resolves inside ``root``. Judged by the text first, so the answer never
    depends on whether a file outside the bundle exists."""
    real = os.path.realpath(root)
    for what, base, rel in _manifest_paths(manifest):
        if not isinstance(rel, str) or not rel:
            raise HTTPError(422, f"manifest.json: {what} is not a path.")
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel:
            raise _outside(what, rel)
        parts = (*PurePosixPath(base).parts, *p.parts) if base is not None else p.parts
        resolved = os.path.realpath(os.path.join(real, *parts))
        if resolved != real and not resolved.startswith(real + os.sep):
            raise _outside(what, rel)


def validate_bundle(root: Path) -> dict[str, Any]:
    """Every named path checked on its own (before anything opens one), then
    ``load_manifest(verify=True)`` (422 on any problem, without server paths)."""
    mpath = root / MANIFEST
    try:
        size = mpath.stat().st_size
    except OSError:
        size = 0
    if size > MAX_MANIFEST_BYTES:
        raise HTTPError(
            422, f"{MANIFEST} is {size / 2**20:.0f} MiB; at most {MAX_MANIFEST_BYTES >> 20} MiB."
        )
    try:
        raw = json.loads(mpath.read_bytes())
    except (OSError, ValueError):
        raw = None  # load_manifest says what is wrong
    if isinstance(raw, dict):
        check_manifest_paths(root, raw)
    try:
        manifest = load_manifest(root, verify=True)
    except InputError as exc:
        raise HTTPError(422, scrub(str(exc), {root: "the bundle"})) from None
    check_manifest_paths(root, manifest)
    return manifest


def scrub(text: str, paths: dict[Path, str]) -> str:
    """``text`` with every server path in ``paths`` (and its real path) replaced by a name."""
    for path, name in paths.items():
        for form in sorted({str(path), os.path.realpath(path)}, key=len, reverse=True):
            text = text.replace(form, name)
    return text
