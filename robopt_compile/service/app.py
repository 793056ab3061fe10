"""The HTTP API gateway and the web UI: one FastAPI app over the library (docs/PLATFORM.md).

``create_app(config)`` builds it; :func:`robopt_compile.service.server.serve` runs it with
uvicorn beside the worker pool and the notifier. Every route is under ``/api/v1`` (OpenAPI at
``/api/docs``) and checks the bearer token's role (:mod:`~robopt_compile.service.tokens`);
the web UI is static files from ``web/`` at ``/``, no CDN and no build step.

Errors are one JSON object ``{"error": "one line saying what to do"}`` with the status:
401 no or unknown token, 403 a role too low, 404 an unknown id, 409 a state that does not
allow it, 413 an upload over the limit, 422 bad input (the CLI's own message), 429 over the
token's rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from robopt_compile.errors import RoboptError
from robopt_compile.service.auth import ApiError, RateLimiter, Toucher, status_of

WEB = Path(__file__).parent / "web"


@dataclass
class ServiceConfig:
    """What ``robopt-compile serve`` is started with."""

    store: str  # the store folder (jobs, tokens, uploads, sessions live in it)
    workers: int = 1
    max_upload_mb: float = 512.0
    rate_per_s: float = 50.0  # per token, sustained
    burst: int = 200  # per token
    trust_pt2: bool = False  # accept .pt2 uploads (unpickled: operators can run code)
    extra: dict[str, Any] = field(default_factory=dict)


def create_app(config: ServiceConfig, store: Any | None = None) -> FastAPI:
    """The app over the store at ``config.store`` (or the given open ``store``)."""
    from robopt_compile.store import open_store

    app = FastAPI(title="robopt", version="1", docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None)  # fmt: skip
    app.state.config = config
    app.state.store = store or open_store(config.store)
    app.state.limiter = RateLimiter(config.rate_per_s, config.burst)
    app.state.toucher = Toucher(lambda: open_store(config.store))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RoboptError)
    async def _robopt_error(_: Request, exc: RoboptError) -> JSONResponse:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        return JSONResponse({"error": msg}, status_code=status_of(exc))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        msg = (str(exc).splitlines() or [""])[0][:300]
        return JSONResponse(
            {
                "error": f"internal error: {type(exc).__name__}: {msg} (a bug: "
                "the server log has the traceback; report it)"
            },
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    from robopt_compile.service import (
        routes_admin,
        routes_calibration,
        routes_devices,
        routes_jobs,
        routes_models,
    )

    for mod in (routes_models, routes_calibration, routes_jobs, routes_devices, routes_admin):
        app.include_router(mod.router, prefix="/api/v1")

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        """No token needed: whether the server and its store answer."""
        app.state.store.schema_version()
        return {"ok": True, "workers": config.workers}

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-store"})

    return app
