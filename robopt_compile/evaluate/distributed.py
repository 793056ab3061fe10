"""Closed-loop episodes on an executor (``--executor``, docs/SCALE.md).

Each engine's seeds are cut into batches of ``CHUNK`` episodes; every batch of every engine is
one unit, so all workers stay busy across engines. A worker rebuilds the policy from what the
driver ships through the executor (``Shipped``: an ONNX model's bytes, a bundle as a tar, or
a trained zoo VLA's name, whose weights come with robopt) and runs its seeds exactly as
``run_episodes`` would here: per-seed results are identical to a local run. The engine's
per-step latencies come back with the episodes (measured on the worker, labelled with its
machine).
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.tasks import Episode

CHUNK = 10  # episodes per unit: ~1-10 s of work per unit on the built-in tasks


@dataclass(frozen=True)
class Shipped:
    """How a worker rebuilds one engine: kind ``onnx`` | ``bundle`` (``data``: bytes, or the
    executor's handle to them) or ``vla`` (``data``: the zoo source); ``key`` names it."""

    kind: str
    data: Any
    key: str


def ship_onnx(executor: Any, model: Any) -> Shipped:
    """An ``ir.Model`` or an .onnx path, as bytes in the executor's object store."""
    from robopt_compile import ir as rir

    if isinstance(model, (str, Path)):
        data = Path(model).read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="robopt-ship-") as tmp:
            rir.save(model, Path(tmp) / "m.onnx")
            data = (Path(tmp) / "m.onnx").read_bytes()
    return Shipped("onnx", executor.put(data), hashlib.sha256(data).hexdigest())


def ship_bundle(executor: Any, folder: str | Path) -> Shipped:
    from robopt_compile.executor import pack_tree

    data = pack_tree(folder)
    return Shipped("bundle", executor.put(data), hashlib.sha256(data).hexdigest())


def ship_vla(source: str) -> Shipped:
    return Shipped("vla", source, f"vla:{source}")


_UNPACKED: dict[str, Path] = {}  # per worker process: key -> file or folder


def _materialize(s: Shipped) -> Path:
    from robopt_compile.executor import unpack_tree

    if s.key not in _UNPACKED:
        if not _UNPACKED:
            root = Path(tempfile.mkdtemp(prefix="robopt-worker-"))
            atexit.register(shutil.rmtree, root, True)
            _UNPACKED["__root__"] = root
        dest = _UNPACKED["__root__"] / s.key[:16]
        if s.kind == "bundle":
            unpack_tree(s.data, dest)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            dest = dest / "model.onnx"
            dest.write_bytes(s.data)
        _UNPACKED[s.key] = dest
    return _UNPACKED[s.key]


def episode_batch(
    task_name: str,
    kind: str,
    key: str,
    data: Any,
    seeds: list[int],
    threads: int | None,
    record: bool = False,
) -> tuple[list[Episode], list[int], dict[str, Any]]:
    """One unit: ``seeds`` of ``task_name`` driven by the shipped engine, on this worker.

    ``kind``, ``key``, ``data`` are a ``Shipped``'s fields (``data`` a top-level argument, so
    Ray hands the worker the bytes, not their handle). Returns the episodes (with their feeds
    and actions when ``record``), the per-step latencies (ns) and the worker's machine
    profile."""
    from robopt_compile.bench.machine import machine_profile
    from robopt_compile.evaluate.episodes import run_episodes

    pol = _policy(Shipped(kind, data, key), threads)
    from robopt_compile.tasks import get_task

    task = _kept(("task", task_name), lambda s: s.enter_context(get_task(task_name)))
    first = len(pol.latencies_ns)
    eps = run_episodes(task, pol, seeds, record=record)
    return eps, list(pol.latencies_ns[first:]), machine_profile()


# A worker keeps what it opened for its next unit, as a local run keeps one task and one
# engine for all its seeds (each episode resets the task with its own seed, so the results
# are the same): opening a MuJoCo task and an engine per unit cost about a third of a
# 10-episode Reacher unit here.
_OPEN: dict[Any, Any] = {}


def _kept(key: Any, open_: Callable[[Any], Any]) -> Any:
    import contextlib

    if "stack" not in _OPEN:
        _OPEN["stack"] = contextlib.ExitStack()
        atexit.register(_OPEN["stack"].close)
    if key not in _OPEN:
        _OPEN[key] = open_(_OPEN["stack"])
    return _OPEN[key]


def _policy(shipped: Shipped, threads: int | None) -> Any:
    from robopt_compile.evaluate.policies import bundle_policy, onnx_policy, vla_eager_policy

    def open_(stack: Any) -> Any:
        if shipped.kind == "vla":
            from robopt_compile.zoo import load_vla, task_adapter

            src = str(shipped.data)
            return vla_eager_policy(load_vla(src.removeprefix("zoo:")), task_adapter(src))
        if shipped.kind == "bundle":
            return stack.enter_context(bundle_policy(_materialize(shipped), threads))
        return stack.enter_context(onnx_policy(_materialize(shipped), threads))

    return _kept(("policy", shipped.key, threads), open_)


def episodes_runner(
    executor: Any,
    task_name: str,
    shipped: Sequence[Shipped],
    seeds: Sequence[int],
    threads: int | None,
    progress: Callable[[int], None] | None = None,
    memo: Any = None,
    idents: Sequence[str] = (),
) -> Callable[[int, Any, Sequence[int], Any], list[Episode]]:
    """A ``closed_loop`` runner: on its first call every engine's batches go to the executor
    at once; each call then returns engine ``i``'s episodes (in seed order) and puts the
    latencies its worker measured into the local policy's timer.

    ``memo`` (``store.cache.UnitMemo``) records each unit as it finishes and gives back the
    units an earlier run recorded (``--resume``); ``idents`` name the engines by content for
    its keys (the manifest's hash for a bundle)."""
    results: dict[int, list[Episode]] = {}
    machines: list[dict[str, Any]] = []
    latencies: dict[int, list[int]] = {}

    def parts(i: int, chunk: list[int]) -> dict[str, Any]:
        return {"task": task_name, "engine": idents[i], "seeds": chunk, "threads": threads}

    def run_all() -> None:
        units = [(i, list(seeds[k : k + CHUNK])) for i in range(len(shipped))
                 for k in range(0, len(seeds), CHUNK)]  # fmt: skip
        got: dict[int, tuple[list[Episode], list[int], dict[str, Any]]] = {}
        if memo is not None:
            for u, (i, chunk) in enumerate(units):
                m = memo.get(parts(i, chunk))
                if m is not None:
                    got[u] = ([Episode(**e) for e in m["episodes"]], m["latencies_ns"],
                              m["machine"])  # fmt: skip
                    if progress is not None:
                        progress(len(chunk))
        todo = [u for u in range(len(units)) if u not in got]
        args = [(task_name, shipped[units[u][0]].kind, shipped[units[u][0]].key,
                 shipped[units[u][0]].data, units[u][1], threads) for u in todo]  # fmt: skip

        def done(k: int, res: Any) -> None:
            if memo is not None:
                eps, lat, machine = res
                memo.put(parts(*units[todo[k]]), {
                    "episodes": [{"seed": int(e.seed), "ret": float(e.ret),
                                  "success": bool(e.success), "steps": int(e.steps)}
                                 for e in eps],
                    "latencies_ns": [int(t) for t in lat], "machine": machine})  # fmt: skip
            if progress is not None:
                progress(len(res[0]))

        for u, res in zip(todo, executor.map(episode_batch, args, progress=done), strict=True):
            got[u] = res
        for u, (i, _) in enumerate(units):
            eps, lat, machine = got[u]
            results.setdefault(i, []).extend(eps)
            latencies.setdefault(i, []).extend(lat)
            if machine not in machines:
                machines.append(machine)

    def run(i: int, policy: Any, want: Sequence[int], _progress: Any = None) -> list[Episode]:
        if not results:
            run_all()
        eps = results[i]
        if [e.seed for e in eps] != list(want):
            raise RuntimeError("executor returned episodes out of seed order (a bug)")
        if policy is not None and hasattr(policy, "latencies_ns"):
            policy.latencies_ns.extend(latencies.get(i, []))
        return eps

    run.machines = machines  # type: ignore[attr-defined]
    return run
