"""Where robopt's independent units of work run: in this process, or on a Ray cluster.

A unit is a plain function of plain arguments whose result is picklable: a batch of seeded
evaluation episodes (``evaluate/distributed.py``), the build and measurement of one plan
(``plan/distributed.py``), a whole build for one board (``api.compile_fleet``). ``--executor``
picks where they run:

- ``local`` (the default): one after another in this process, exactly as before; Ray is never
  imported.
- ``ray``: join the running cluster of this machine (``ray start --head``) or ``$RAY_ADDRESS``.
- ``ray://HOST:PORT``: a Ray cluster through Ray Client (``ray start --head`` serves it on port
  10001).
- ``auto``: ``ray`` when a cluster answers, else local with a warning.

Artifacts travel as bytes through Ray's object store (a bundle as a tar, an ONNX file as its
bytes), never as a path a worker may not see. A unit whose worker dies is retried by Ray
(``RETRIES`` times) and gives the same result, since units are deterministic (seeds travel
with them). A cluster that does not answer is one line and exit 3 (``ClusterError``).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.errors import ClusterError, InputError

__all__ = ["ClusterError", "Executor", "ExecutorSpec", "open_executor", "parse_executor"]

RETRIES = 3  # how often Ray reruns a unit whose worker died (Ray's max_retries)
DEFAULT_CLIENT_PORT = 10001
# Environment a worker needs to run a unit as this process would (rendering, caches, store).
FORWARDED_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "ROBOPT_CACHE", "ROBOPT_STORE")
# How many processes a compile's own episodes may use (executor/processes.py); a Ray unit
# holds one CPU, so its compile keeps them in its process.
WORKERS_ENV = "ROBOPT_EPISODE_WORKERS"


@dataclass(frozen=True)
class ExecutorSpec:
    """What ``--executor`` asked for: ``kind`` is local, ray or auto; ``address`` for Ray."""

    kind: str = "local"
    address: str | None = None  # "auto" (this machine's cluster) or "ray://HOST:PORT"

    @property
    def text(self) -> str:
        return self.kind if self.address in (None, "auto") else str(self.address)


def parse_executor(text: str | None) -> ExecutorSpec:
    """``local`` | ``ray`` | ``ray://HOST[:PORT]`` | ``auto`` -> ExecutorSpec (one-line errors)."""
    t = (text or "local").strip()
    if t == "local":
        return ExecutorSpec()
    if t in ("ray", "auto"):
        return ExecutorSpec(t, "auto")
    if t.startswith("ray://"):
        host, _, port = t.removeprefix("ray://").partition(":")
        if not host or (port and not port.isdigit()):
            raise InputError(
                f"--executor {t!r}: expected ray://HOST:PORT, e.g. ray://127.0.0.1:10001."
            )
        return ExecutorSpec("ray", f"ray://{host}:{port or DEFAULT_CLIENT_PORT}")
    raise InputError(f"--executor {t!r}: use local, ray, ray://HOST:PORT or auto.")


class Executor:
    """Runs units of work; ``map`` returns their results in the order of ``args``."""

    name = "local"
    workers = 1

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        *,
        progress: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """``[fn(*a) for a in args]``; ``progress(index, result)`` as each one finishes."""
        out = []
        for i, a in enumerate(args):
            out.append(fn(*a))
            if progress is not None:
                progress(i, out[-1])
        return out

    def put(self, value: Any) -> Any:
        """A handle a unit can take as an argument (Ray: one copy in the object store)."""
        return value

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers}

    def close(self) -> None:
        """Release the connection (never the cluster itself)."""


@contextlib.contextmanager
def open_executor(
    text: str | None, warn: Callable[[str], None] | None = None
) -> Iterator[Executor]:
    """The executor ``--executor text`` names, connected; closed (disconnected) at exit."""
    spec = parse_executor(text)
    ex: Executor
    if spec.kind == "local":
        ex = Executor()
    else:
        from robopt_compile.executor.raycluster import RayExecutor

        try:
            ex = RayExecutor(spec.address or "auto")
        except ClusterError as exc:
            if spec.kind != "auto":
                raise
            if warn is not None:
                warn(f"--executor auto: {exc} Running locally instead.")
            ex = Executor()
    try:
        yield ex
    finally:
        ex.close()


def pack_tree(folder: str | Path) -> bytes:
    """A folder as tar bytes (a bundle sent to a worker, or back)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(folder), arcname=".")
    return buf.getvalue()


def unpack_tree(data: bytes, dest: str | Path) -> Path:
    """Tar bytes from ``pack_tree`` into ``dest`` (created); members may not leave it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
