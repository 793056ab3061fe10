"""``/api/v1/devices``: register robots that run ``robopt-bench serve``, check their health.

Benchmark jobs on a device are ``POST /api/v1/jobs`` with ``kind: bench`` (routes_jobs.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from robopt_compile import farm as devices
from robopt_compile.service.auth import OPERATOR, VIEWER
from robopt_compile.service.notify import notify
from robopt_compile.service.tokens import Token

router = APIRouter(tags=["devices"])


class NewDevice(BaseModel):
    name: str = Field(max_length=80)
    url: str = Field(max_length=2000, description="the robot's robopt-bench serve URL")
    token: str = Field(max_length=500, description="the token that server was started with")
    board: str = Field(description="its hardware profile, e.g. jetson-orin-nano")


@router.post("/devices", status_code=201)
def add(body: NewDevice, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    return devices.add_device(request.app.state.store, body.name, body.url, body.token,
                              body.board, owner=token.id)  # fmt: skip


@router.get("/devices")
def listing(request: Request, token: Token = VIEWER) -> list[dict[str, Any]]:
    return devices.list_devices(request.app.state.store)


@router.get("/devices/{device_id}/health")
async def device_health(device_id: str, request: Request, token: Token = VIEWER
                        ) -> dict[str, Any]:  # fmt: skip
    """The robot's own /v1/health (a ``device_unreachable`` notification when it does not
    answer)."""
    store = request.app.state.store
    h = await run_in_threadpool(devices.health, store, device_id)
    if not h["reachable"]:
        await run_in_threadpool(lambda: notify(store, "device_unreachable", device=device_id,
                                               error=h["error"]))  # fmt: skip
    return h


@router.delete("/devices/{device_id}")
def remove(device_id: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    devices.remove_device(request.app.state.store, device_id)
    return {"removed": device_id}
