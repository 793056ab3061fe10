"""One plan of a planner search as a unit of work: build it, measure it, say where.

``build_plan`` runs wherever the search's executor puts it (this process, or a Ray worker:
docs/SCALE.md). It compiles the plan with the normal pipeline into a folder of its own, times
the engine with the harness on that worker, and returns what the search needs: the compile's
manifest, report and evaluation, the latency, the worker's machine profile (latencies are
only compared between machines ``same_hardware`` calls alike) and, from a remote worker, the
bundle itself as tar bytes (the driver never reads a worker's path). A plan that fails to
build returns its one-line error: the search records it and goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robopt_compile.errors import RoboptError

LOCK_NAME = "robopt-measure.lock"


@contextlib.contextmanager
def node_lock(exclusive: bool) -> Iterator[None]:
    """A readers-writer lock per machine (flock on a file in the temporary folder): builds
    hold it shared, a latency measurement exclusively, so no measurement ever runs beside a
    build or another measurement of this search on the same machine, while builds overlap."""
    path = Path(tempfile.gettempdir()) / LOCK_NAME
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_plan(source: str, out: str | None, opts: Any, bench_runs: int) -> dict[str, Any]:
    """Compile ``opts`` (one plan's CompileOptions) into ``out`` (a folder the driver sees;
    None: a temporary one, shipped back as tar bytes) and measure it on this worker (the
    measurement waits until no other build of this machine runs: ``node_lock``)."""
    from robopt_compile.bench.machine import machine_profile
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.executor import pack_tree
    from robopt_compile.plan.measure import bundle_size_mb, measure_bundle

    tmp = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="robopt-plan-"))
        bdir = tmp / "bundle"
    else:
        bdir = Path(out)
    try:
        try:
            with node_lock(exclusive=False):  # builds share the node
                res = compile_model(source, bdir, opts, force=True)
            with node_lock(exclusive=True):  # a measurement has it to itself
                lat = measure_bundle(bdir, opts.threads, bench_runs)
        except RoboptError as exc:
            return {"error": str(exc).splitlines()[0], "machine": machine_profile()}
        return {
            "error": None,
            "manifest": res.manifest,
            "report": res.report,
            "evaluation": res.evaluation,
            "latency": lat,
            "size_mb": bundle_size_mb(bdir),
            "machine": machine_profile(),
            "tar": pack_tree(bdir) if tmp is not None else None,
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
