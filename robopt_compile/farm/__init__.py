"""The device farm: robots that run ``robopt-bench serve``, registered in the store, shared by
a queue per board (docs/REMOTE.md, "Device farm").

    registry.py   add / list / remove robots, their health (GET /v1/health), marking one down
    queue.py      a queue per board and a lease per robot in the store; dead holders reaped
    dispatch.py   bench_on_farm: --device any:BOARD or NAME, moved to another robot on a drop

``robopt-bench devices ...`` (``robopt_compile/cli/bench.py``), ``robopt_compile.api.bench``
and the web service's ``/api/v1/devices`` and bench jobs are thin layers over these.
"""

from __future__ import annotations

from robopt_compile.farm.dispatch import bench_on_farm
from robopt_compile.farm.queue import NoFreeRobotError, leases, waiting
from robopt_compile.farm.registry import (
    add_device,
    check_all,
    get_device,
    health,
    list_devices,
    mark_down,
    remove_device,
)

__all__ = [
    "NoFreeRobotError",
    "add_device",
    "bench_on_farm",
    "check_all",
    "get_device",
    "health",
    "leases",
    "list_devices",
    "mark_down",
    "remove_device",
    "waiting",
]
