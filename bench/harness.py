"""Run a bundle's engine on this machine: fidelity, latency, memory, load time.

This runs on the robot, so it imports numpy and, only when a benchmark starts, the one runtime
the bundle needs (through its backend's runner). The timed loop calls ``runner.bind(feeds)``,
the backend's least-overhead call, with the garbage collector paused, so the figures are the
engine's and not Python's; ``measure_overhead`` checks that claim against a bare runtime loop.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, InputError, RoboptError
from robopt_compile.jsonutil import finite
from robopt_compile.paths import member
from robopt_compile.targets import Artifact, Backend, Runner, get_backend
from robopt_compile.targets.base import BareLoop

from .compress import materialize_engine
from .control import paced_loop
from .deferred import complete_deferred, is_deferred, require_device_build
from .machine import machine_summary, memory_summary, rss_bytes, runtime_version
from .manifest import MANIFEST, load_manifest, runtimes
from .stats import control_loop_stats, latency_stats

Progress = Callable[[int], None]  # called with the number of runs just finished


@dataclass(frozen=True)
class _Bundle:
    """A checked bundle and the backend that runs it."""

    root: Path
    manifest: dict[str, Any]
    backend: Backend
    artifact: Artifact
    unpack_ms: float | None = None  # time to unpack a compressed engine (None: stored plain)
    build_ms: float | None = None  # time to build a deferred engine now (None: none was built)


def open_bundle(bundle_dir: str | Path, verify: bool) -> _Bundle:
    root = Path(bundle_dir)
    manifest = load_manifest(root, verify=verify)
    backend = get_backend(manifest["backend"])
    engine = dict(manifest["engine"])
    deferred = is_deferred(engine)
    if deferred:
        require_device_build(root, engine)  # one line: where to build it, the trtexec command
    backend.require()  # BackendUnavailableError naming the pip extra
    t0 = time.perf_counter()
    # A compressed engine (docs/BUNDLE.md) runs from a decompressed copy in the cache.
    engine_dir = materialize_engine(root, manifest)
    unpack_ms = None
    if engine.get("compressed"):
        unpack_ms = (time.perf_counter() - t0) * 1e3
        engine["files"] = [e["original"] for e in engine["compressed"]["files"].values()]
    build_ms = None
    if deferred:  # a TensorRT recipe: built once for this GPU into the cache (bench/deferred.py)
        engine_dir, engine, build_ms = complete_deferred(engine_dir, engine)
    artifact = Artifact.from_json({"backend": manifest["backend"], **engine}, engine_dir)
    return _Bundle(root, manifest, backend, artifact, unpack_ms, build_ms)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _reference(b: _Bundle, key: str) -> dict[str, np.ndarray]:
    """The bundle's reference ``inputs`` or ``outputs`` (a checked file of the bundle)."""
    rel = b.manifest["reference"][key]
    return load_npz(member(b.root, rel, f"{b.root / MANIFEST}: reference.{key}"))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    # Broad: a corrupt .npz fails in numpy, zipfile, zlib, ast or tokenize with a dozen unrelated
    # types (ValueError, BadZipFile, zlib.error, TokenError, MemoryError...); only numpy runs here.
    except Exception as exc:
        raise InputError(f"cannot read {path}: {_first_line(exc)}; the bundle is corrupt.") from exc


# --- fidelity --------------------------------------------------------------------------------


def compare_outputs(
    actual: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: dict[str, float]
) -> dict[str, Any]:
    """Judge the engine's outputs against the source model's on the reference inputs.

    Uses ``robopt_compile.numerics.judge``, the same rule the compiler applied when it built
    the bundle, so a bundle that passed there passes here with the same runtime.

    Raises:
        InputError: the reference names an output the engine does not produce.
    """
    from robopt_compile.numerics import judge

    missing = sorted(set(reference) - set(actual))
    if missing:
        raise InputError(
            f"reference/outputs.npz has output(s) {missing} that the engine does not produce "
            f"(engine outputs: {sorted(actual)}); the bundle is inconsistent."
        )
    return finite(judge(reference, actual, tolerance))


# --- timing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC so a collection does not land inside a timed run (as timeit does)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def timed_loop(fn: Callable[[], Any], runs: int, progress: Progress | None = None) -> list[int]:
    """Per-run latency of ``fn()`` in ns; progress is reported between chunks, never inside."""
    pc = time.perf_counter_ns
    out = [0] * runs
    step = max(1, runs // 100) if progress is not None else runs
    with _gc_paused():
        start = 0
        while start < runs:
            end = min(start + step, runs)
            for i in range(start, end):
                t0 = pc()
                fn()
                out[i] = pc() - t0
            if progress is not None:
                progress(end - start)
            start = end
    return out


def _call(fn: Callable[[], Any], what: str) -> Any:
    """``fn()``, turning a runtime's own exception into one clear line."""
    try:
        return fn()
    except RoboptError:
        raise
    except Exception as exc:  # each runtime raises its own types (ORT, OpenVINO, TRT, TVM)
        raise InputError(f"the engine failed on the {what}: {_first_line(exc)}") from exc


def _check_feeds(runner: Runner, feeds: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    missing = [n for n in runner.input_names if n not in feeds]
    if missing:
        raise InputError(f"{what} lack input(s) {missing}; the engine takes {runner.input_names}.")
    return {n: np.ascontiguousarray(feeds[n]) for n in runner.input_names}


def _describe(feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in feeds.items()]


def _batch(feeds: dict[str, np.ndarray]) -> int:
    """Items per run: the leading dim of the first input (bundles keep batch first)."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def enter_runner(stack: contextlib.ExitStack, b: _Bundle, threads: int | None) -> Runner:
    try:
        return stack.enter_context(b.backend.runner(b.artifact, threads))
    except RoboptError:
        raise
    except Exception as exc:  # each runtime raises its own types (ORT, OpenVINO, TRT, TVM)
        built = {k: v for k, v in b.artifact.config.items() if k.endswith("_version")}
        raise BackendUnavailableError(
            f"{b.backend.name} could not load the engine: {_first_line(exc)} (engine built "
            f"with {built or 'unknown versions'}; runtime here "
            f"{runtime_version(b.backend.runtime_module)})."
        ) from exc


def _check_counts(runs: int, warmup: int, threads: int | None) -> None:
    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup}).")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1 (got {threads}); omit it for the default.")


def run_benchmark(
    bundle_dir: str | Path,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    batch_inputs: dict[str, np.ndarray] | None = None,
    control_rate: float | None = None,
    control_ticks: int | None = None,
    progress: Progress | None = None,
    verify: bool = True,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Benchmark a bundle: fidelity on the reference inputs, then ``runs`` timed runs.

    ``keep_samples`` adds every timed run's latency as ``latency["samples_ms"]`` (for the
    report's latency histogram).

    Args:
        bundle_dir: the folder ``robopt-compile -o`` wrote.
        runs: timed runs after warm-up.
        warmup: untimed runs first (lazy allocations, caches, CPU frequency).
        threads: intra-op threads; None keeps the runtime's default (all cores).
        batch_inputs: feeds to time instead of the reference inputs (e.g. a larger batch);
            fidelity is always judged on the reference inputs.
        control_rate: control-loop rate in Hz; adds deadline-miss figures of the timed runs and
            of a real paced loop at that rate (``control.paced``, see bench/control.py).
        control_ticks: periods of the paced loop (default: ``runs``).
        progress: called with the number of timed runs just finished.
        verify: check every bundle file's sha256 first.

    Returns:
        A JSON-serialisable dict (keys in docs and the CLI table); ``fidelity.passed`` says
        whether the engine matches the source model within the manifest's tolerance.
    """
    _check_counts(runs, warmup, threads)
    t0 = time.perf_counter()
    manifest = load_manifest(bundle_dir, verify=verify)
    if "graphs" in manifest:  # a multi-graph bundle: the control step is its driver loop
        from .multigraph import run_graph_benchmark

        check_ms = (time.perf_counter() - t0) * 1e3
        res = run_graph_benchmark(Path(bundle_dir), manifest, runs, warmup, threads,
                                  control_rate, progress, keep_samples)  # fmt: skip
        res["timing"]["bundle_check_ms"] = check_ms
        res["machine"] = machine_summary(get_backend(manifest["backend"]).runtime_module)
        others = [get_backend(b).runtime_module for b in runtimes(manifest)[1:]]
        if others:  # e.g. a VLA whose decode steps run on a second runtime
            res["machine"]["other_runtimes"] = {m: runtime_version(m) for m in others}
        return res
    b = open_bundle(bundle_dir, verify=False)
    check_ms = (time.perf_counter() - t0) * 1e3 - (b.unpack_ms or 0.0) - (b.build_ms or 0.0)
    ref = b.manifest["reference"]
    ref_in, ref_out = _reference(b, "inputs"), _reference(b, "outputs")
    rss0 = rss_bytes()

    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        runner = enter_runner(stack, b, threads)
        load_ms = (time.perf_counter() - t0) * 1e3
        rss_loaded = rss_bytes()

        feeds = _check_feeds(runner, ref_in, "reference/inputs.npz")
        t0 = time.perf_counter()
        actual = _call(partial(runner.infer, feeds), "reference inputs")
        first_ms = (time.perf_counter() - t0) * 1e3
        fidelity = compare_outputs(actual, ref_out, ref["tolerance"])
        del actual

        timed = feeds if batch_inputs is None else _check_feeds(runner, batch_inputs, "inputs")
        fn = runner.bind(timed)
        what = "reference inputs" if batch_inputs is None else "given inputs"
        _call(fn, what)
        with _gc_paused():
            for _ in range(warmup):
                fn()
        samples = timed_loop(fn, runs, progress)
        rss_runs = rss_bytes()
        paced = None
        if control_rate is not None:
            # A real loop at the rate (bench/control.py): jitter, misses, steady-state memory.
            with _gc_paused():
                paced = paced_loop(fn, control_rate, control_ticks or runs, rss_bytes)
            paced["cold_start_ms"] = load_ms + first_ms
            paced["warm_first_ms"] = samples[0] / 1e6

    batch = _batch(timed)
    manifest = b.manifest
    return {
        "result_version": 1,
        "bundle": str(b.root.resolve()),
        "model": manifest.get("model", {}).get("name"),
        "backend": b.backend.name,
        "precision": manifest.get("precision"),
        "target": manifest.get("target", {}).get("profile"),
        "settings": {
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "verify": verify,
            "control_rate_hz": control_rate,
            "build_threads": manifest.get("build", {}).get("threads"),
        },
        "inputs": _describe(timed),
        "timing": {
            "bundle_check_ms": check_ms,
            "engine_unpack_ms": b.unpack_ms,
            "engine_build_ms": b.build_ms,
            "engine_load_ms": load_ms,
            "first_infer_ms": first_ms,
        },
        "latency": latency_stats(samples, "ns", batch)
        | ({"samples_ms": [s / 1e6 for s in samples]} if keep_samples else {}),
        "control": None
        if control_rate is None
        else {**control_loop_stats(samples, control_rate), "paced": paced},
        "fidelity": fidelity,
        "memory": memory_summary(rss0, rss_loaded, rss_runs),
        "machine": {
            **machine_summary(b.backend.runtime_module),
            "runtime_version_at_build": b.artifact.config.get(
                f"{b.backend.runtime_module}_version"
            ),
        },
    }


# --- harness overhead ------------------------------------------------------------------------


def _bare_loop(b: _Bundle, feeds: dict[str, np.ndarray], threads: int | None) -> BareLoop:
    return b.backend.bare_loop(b.artifact, feeds, threads)


def bare_loop_p50(
    bundle_dir: str | Path,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    verify: bool = True,
) -> float:
    """Median latency in ms of the runtime called directly on the reference inputs.

    The floor the harness is compared against: no runner, no ``bind``, no progress hook.
    """
    _check_counts(runs, warmup, threads)
    b = open_bundle(bundle_dir, verify)
    feeds = _reference(b, "inputs")
    loop = _bare_loop(b, feeds, threads)
    with _gc_paused():
        loop.block(warmup)
        samples = loop.block(runs)
    return float(np.median(samples)) / 1e6


def measure_overhead(
    bundle_dir: str | Path,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    blocks: int | None = None,
    verify: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Harness p50 vs bare-loop p50 on the same engine, measured in alternating blocks.

    Both loops live in one process and take turns (``runs`` split into ``blocks`` turns, the
    leader swapping every turn), so frequency scaling, other processes and thermal drift hit
    both alike. Short turns track a noisy machine best, hence the default of 5 runs a turn
    (at most 100 turns): on a shared 2-core VM, 10 turns of 30 runs wandered by several
    percent, 60 turns of 5 by a few tenths. ``overhead_pct`` is (harness - bare) / bare; it
    should sit within noise of zero, and a clearly positive figure means the harness itself
    distorts the timings.
    """
    _check_counts(runs, warmup, threads)
    if blocks is None:
        blocks = min(max(runs // 5, 1), 100)
    if blocks < 1:
        raise InputError(f"blocks must be >= 1 (got {blocks}).")
    blocks = min(blocks, runs)
    sizes = [runs // blocks + (k < runs % blocks) for k in range(blocks)]
    b = open_bundle(bundle_dir, verify)
    ref_in = _reference(b, "inputs")
    harness: list[int] = []
    bare: list[int] = []
    with contextlib.ExitStack() as stack:
        runner = enter_runner(stack, b, threads)
        feeds = _check_feeds(runner, ref_in, "reference/inputs.npz")
        fn = runner.bind(feeds)
        _call(fn, "reference inputs")
        loop = _bare_loop(b, feeds, threads)
        with _gc_paused():
            for _ in range(warmup):
                fn()
            loop.block(warmup)
            for k, per in enumerate(sizes):
                harness_first = k % 2 == 0
                if harness_first:
                    harness += timed_loop(fn, per)
                bare += loop.block(per)
                if not harness_first:
                    harness += timed_loop(fn, per)
                if progress is not None:
                    progress(2 * per)
    h50, b50 = float(np.median(harness)) / 1e6, float(np.median(bare)) / 1e6
    return {
        "backend": b.backend.name,
        "threads": threads,
        "blocks": blocks,
        "runs_each": runs,
        "harness_p50_ms": h50,
        "bare_p50_ms": b50,
        "overhead_pct": (h50 - b50) / b50 * 100.0,
        "harness_mean_ms": float(np.mean(harness)) / 1e6,
        "bare_mean_ms": float(np.mean(bare)) / 1e6,
    }
