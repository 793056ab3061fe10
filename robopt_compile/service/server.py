"""``robopt-compile serve``: the API, the web UI, the worker pool and the notifier, one process
tree (docs/PLATFORM.md).

    robopt-compile serve --host 127.0.0.1 --port 8400 --workers 1 [--store DIR]
        [--ssl-certfile cert.pem --ssl-keyfile key.pem]

It binds 127.0.0.1 unless told otherwise; TLS is uvicorn's own (a certificate and key file).
On start, jobs that a killed server left running are queued again and resume in their
sessions; on Ctrl-C running jobs are stopped and resume at the next start.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from robopt_compile.service.app import ServiceConfig, create_app


def build(config: ServiceConfig, log: Any = None) -> Any:
    """The app with the worker pool and the notifier started and stopped by its lifespan."""
    from robopt_compile.service.notify import Notifier
    from robopt_compile.service.workers import WorkerPool
    from robopt_compile.store import open_store

    def factory() -> Any:
        return open_store(config.store)

    say = log or (lambda m: print(f"robopt serve: {m}", file=sys.stderr, flush=True))
    pool = WorkerPool(factory, config.store, config.workers, on_event=say)
    notifier = Notifier(factory)
    app = create_app(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        pool.start()
        notifier.start()
        try:
            yield
        finally:
            pool.stop()
            notifier.stop()

    app.router.lifespan_context = lifespan
    app.state.pool = pool
    return app


def serve(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8400,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:  # fmt: skip
    """Run until Ctrl-C (or SIGTERM)."""
    import socket

    import uvicorn

    from robopt_compile.errors import InputError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # before the workers start: a taken port is one line, not uvicorn's log
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another "
                "--port or stop what uses it."
            ) from None
    app = build(config)
    scheme = "https" if ssl_certfile else "http"
    print(f"robopt serve: {scheme}://{host}:{port}/ (API {scheme}://{host}:{port}/api/v1, "
          f"docs /api/docs), store {config.store}, {config.workers} worker(s)",
          file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile, access_log=False)  # fmt: skip
