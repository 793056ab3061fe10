"""The Ray executor: units of work as Ray tasks on a running cluster (docs/SCALE.md).

robopt never starts or stops the cluster: ``ray start --head --num-cpus N`` (or an existing
cluster) does, and this module joins it as a driver. Each unit is a Ray task of one CPU with
``max_retries=RETRIES``: a worker process killed mid-unit is rerun by Ray on another worker.
Workers import robopt from their own Python environment, so they must run the same robopt
version as the driver: ``RayExecutor`` checks that once, with the workers' machine profile,
before any unit runs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from robopt_compile.errors import ClusterError, install_hint
from robopt_compile.executor import RETRIES, WORKERS_ENV, Executor, forwarded_env

CONNECT_TIMEOUT_S = 3.0  # a TCP probe before Ray Client's own 30 s of retries


def _probe() -> dict[str, Any]:
    """Runs on a worker: its robopt version and machine (for honest latency labels)."""
    import robopt_compile
    from robopt_compile.bench.machine import machine_profile

    return {"version": robopt_compile.__version__, **machine_profile()}


def _target(address: str) -> tuple[str, str] | None:
    """(what to name, host:port) that ``ray.init(address)`` will dial: ``ray://HOST:PORT``,
    ``$RAY_ADDRESS``, or the cluster ``ray start`` recorded on this machine; None: none."""
    import os
    import tempfile
    from pathlib import Path

    if address.startswith("ray://"):
        return address, address.removeprefix("ray://")
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return f"$RAY_ADDRESS={env}", env.removeprefix("ray://")
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    try:
        return "this machine's cluster", (root / "ray_current_cluster").read_text().strip()
    except OSError:
        return None


def _probe_address(address: str) -> None:
    """A TCP connect to what Ray would dial: Ray itself retries a dead address for minutes
    (measured here: 204 s, then SystemExit 15), so refuse it in seconds with one line."""
    t = _target(address)
    if t is None:
        return  # ray.init says at once that no cluster runs here
    name, hostport = t
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection(
            (host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S
        ).close()
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ClusterError(
            f"no Ray cluster answers at {name} ({why}); start one with `ray start --head` or "
            "use --executor local."
        ) from None


def _init(ray: Any, address: str) -> None:
    """``ray.init`` as a driver; a Ray Client connection to a cluster that has just started
    is tried once more (its server answered "Initialization failure" here within seconds of
    `ray start`, then accepted the same client)."""
    import time

    kw = {"namespace": "robopt", "logging_level": "ERROR", "log_to_driver": False,
          "runtime_env": {"env_vars": {**forwarded_env(), WORKERS_ENV: "1"}}}  # fmt: skip
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # Ray Client raises ConnectionError or its own types here
        if not address.startswith("ray://") or "Initialization failure" not in str(exc):
            raise
        time.sleep(3.0)
        ray.init(address=address, **kw)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str = "auto") -> None:
        try:
            import ray
        except ImportError:
            raise ClusterError(f"--executor ray needs Ray: {install_hint('ray')}") from None
        self._ray = ray
        _probe_address(address)
        self.address = address
        already = ray.is_initialized()
        if not already:
            try:
                _init(ray, address)
            except (ConnectionError, RuntimeError, ValueError, SystemExit) as exc:
                where = "this machine or $RAY_ADDRESS" if address == "auto" else address
                first = str(exc).splitlines()[0][:160]
                raise ClusterError(
                    f"no Ray cluster to join at {where} ({first}); start one with "
                    "`ray start --head --num-cpus N` or use --executor local."
                ) from None
        self._owned = not already
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            probe = ray.get(ray.remote(num_cpus=0)(_probe).remote(), timeout=120)
        except Exception as exc:  # a cluster that accepted us but cannot run a task
            self.close()
            raise ClusterError(f"the Ray cluster at {address} cannot run tasks: {exc}") from None
        import robopt_compile

        if probe["version"] != robopt_compile.__version__:
            self.close()
            raise ClusterError(
                f"the Ray workers run robopt {probe['version']}, this driver "
                f"{robopt_compile.__version__}: install the same robopt on every node."
            )
        self.workers = max(1, cpus)
        self.worker_machine = probe

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        *,
        progress: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(fn)
        refs = [remote.remote(*a) for a in args]
        index = {r: i for i, r in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for r in done:
                    try:
                        out[index[r]] = ray.get(r)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if isinstance(exc.cause, BaseException) else None
                        raise (cause or ClusterError(str(exc).splitlines()[0])) from None
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.ObjectLostError) as exc:  # fmt: skip
                        raise ClusterError(
                            f"a {fn.__name__} unit failed {RETRIES + 1} times on the cluster "
                            f"({type(exc).__name__}); check the workers (`ray status`)."
                        ) from None
                    if progress is not None:
                        progress(index[r], out[index[r]])
        except BaseException:
            for r in pending:
                ray.cancel(r, force=True)
            raise
        return out

    def describe(self) -> dict[str, Any]:
        return {"executor": "ray", "address": self.address, "workers": self.workers,
                "worker_machine": self.worker_machine}  # fmt: skip

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()  # disconnects this driver; the cluster keeps running
        self._owned = False
