"""``robopt-bench serve``: run uploaded bundles on this robot, one at a time (docs/REMOTE.md).

A ``ThreadingHTTPServer`` takes bundles as tar streams, checks them, and queues them for one
worker thread that runs the same ``harness.run_benchmark`` as ``robopt-bench BUNDLE`` (deferred
TensorRT builds included), so a remote result is a local result plus a ``remote`` block.

The package, from the bottom up:

- ``archive``: the safe tar reader (capped headers, names, sizes, compression ratio);
- ``intake``: the limits, wrong tokens per address, the query's settings, the request body
  under deadlines, the unpacked bundle's path and hash checks;
- ``jobs``: the job table (queue, one worker, cancelling, the last results);
- ``http``: the front end (connection cap, token check, routes, one log line per request);
- ``server``: ``BenchServer``, which joins them (life cycle, upload intake, health);
- here: ``serve()``, the CLI's foreground server with signal handling, and the public names.

Module level imports the standard library only: numpy and the runtime load with the first job.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from robopt_compile import __version__

from ..remote import DEFAULT_PORT, read_token_file
from .intake import (
    MAX_CONNECTIONS,
    MAX_JOB_S,
    MAX_QUEUE,
    MAX_UNPACK_RATIO,
    MAX_UNPACKED_MB,
    MAX_UPLOAD_MB,
    MAX_UPLOADS_PER_IP,
    MIN_UPLOAD_RATE,
    STOP_GRACE_S,
    HTTPError,
    parse_settings,
)
from .jobs import Job, harness_runner
from .server import PROG, BenchServer

__all__ = [
    "BenchServer",
    "HTTPError",
    "Job",
    "harness_runner",
    "parse_settings",
    "serve",
]


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
