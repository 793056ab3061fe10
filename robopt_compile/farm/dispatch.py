"""Run a benchmark on the farm: ``--device any:BOARD`` (the first free robot of that board,
queued while all are busy) or ``--device NAME`` (one registered robot, queued while busy).

A robot that drops the job (connection refused, reset or silent after the client's own
retries, or a server that restarted and lost the job) is marked down for a while and the
job moves to another robot of the board, keeping its place at the head of the queue; a
robot that cannot run the bundle's backend is skipped the same way without being marked
down. A job that fails on its own account (bad bundle, fidelity) is not retried. Whatever
happens, the job's lease and place end with it. The result is the robot's harness result,
as for ``robopt-bench BUNDLE --device URL``, with ``remote.farm``: the device, the seconds
spent queued, and the robots tried before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.farm import registry
from robopt_compile.farm.queue import BoardQueue, canonical_board

QUEUE_TIMEOUT_S = 3600.0
FARM_RETRIES = 1  # per request on one robot, for any:BOARD (then the job moves on)


def _bundle_target(bundle: str | Path) -> str:
    from robopt_compile.bench.manifest import load_manifest

    target = load_manifest(Path(bundle), verify=False).get("target") or {}
    return str(target.get("profile") or "") if isinstance(target, dict) else str(target)


def bench_on_farm(
    store: Any,
    bundle: str | Path,
    device: str,
    *,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    control_rate: float | None = None,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    queue_timeout_s: float = QUEUE_TIMEOUT_S,
) -> dict[str, Any]:
    """Benchmark ``bundle`` on a robot of the farm (see the module docstring).

    Raises:
        InputError: unknown device or board, no robot of the board registered, or a bundle
            built for another board than ``any:BOARD``; what the robot raised for the bundle.
        NoFreeRobotError (exit 3): every robot tried failed, or none came free in time.
    """
    from robopt_compile.bench.remote import RobotUnreachableError, remote_benchmark
    from robopt_compile.bench.retry import DEFAULT_ATTEMPTS

    say = warn or (lambda m: None)
    target = _bundle_target(bundle)
    only = None
    if device.startswith("any:"):
        board = canonical_board(device[4:], "--device any:")
        if target and target != board:
            raise InputError(
                f"{bundle} was built for {target}, not {board}: use --device any:{target}, "
                "or compile for that board."
            )
        if not registry.list_devices(store, board):
            raise InputError(
                f"no {board} robot is registered: add one with `robopt-bench devices add NAME "
                f"URL --token-file FILE --board {board}`."
            )
    else:
        d = registry.get_device(store, device)
        board, only = d["board"], d["id"]
        if target and target != board:
            raise InputError(f"{bundle} was built for {target}; {d['name']} is a {board}.")
    tried: dict[str, str] = {}  # name: why it failed this job
    tried_ids: set[str] = set()
    t0 = time.monotonic()
    with BoardQueue(store, board, Path(bundle).resolve().name, only) as q:
        while True:
            dev = q.acquire(tried_ids, queue_timeout_s,
                            lambda ahead: say(f"all {board} robots are busy: {ahead} job(s) "
                                              "ahead in the queue; waiting"))  # fmt: skip
            queued_s = time.monotonic() - t0
            try:
                with q.heartbeat():
                    # With other robots to move to, one quick retry is enough on this one.
                    result = remote_benchmark(
                        bundle, dev["url"], dev["token"], runs=runs, warmup=warmup,
                        threads=threads, control_rate=control_rate, verify=verify,
                        progress=progress, on_retry=warn,
                        retries=FARM_RETRIES if only is None else DEFAULT_ATTEMPTS - 1,
                    )  # fmt: skip
            except BackendUnavailableError as exc:
                why = " ".join(str(exc).split())
                if isinstance(exc, RobotUnreachableError):
                    registry.mark_down(store, dev["id"], why)
                tried[dev["name"]] = why
                tried_ids.add(dev["id"])
                if only is not None:
                    raise
                say(f"robot {dev['name']} failed this job ({why}); moving it to another "
                    f"{board} robot")  # fmt: skip
                continue
            finally:
                q.release(dev["id"])
            result["remote"]["farm"] = {
                "device": {k: dev[k] for k in ("id", "name", "board", "url")},
                "queued_s": round(queued_s, 3),
                "tried": tried,
            }
            return result
