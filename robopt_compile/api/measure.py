"""Inspect, analyze, evaluate and bench: the calls that read a model or a bundle and measure it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robopt_compile.api.common import Progress, StorePath, Warn, compile_options, source_of
from robopt_compile.errors import InputError

if TYPE_CHECKING:
    from robopt_compile.compile.inspect import ModelInfo
    from robopt_compile.compile.options import CompileOptions


def inspect(path: str | Path) -> ModelInfo:
    """Load and check an ``.onnx`` file (the ONNX checker and strict shape inference, as a
    compile does before anything else) and describe it (``compile/inspect.py``).

    Raises:
        ModelLoadError: not a readable, valid ONNX model.
    """
    from robopt_compile.compile.inspect import inspect_onnx

    return inspect_onnx(Path(path))


@dataclass(frozen=True)
class Analysis:
    """Facts about a model for a target: ops, params, FLOPs, memory, roofline, support."""

    source: str
    target: str
    description: str  # the target's
    parity: dict[str, Any]  # the export's checks against the source
    facts: dict[str, Any]  # by analysis pass, plus "summary" and "timing"

    @property
    def summary(self) -> dict[str, Any]:
        return self.facts.get("summary", {})

    def table(self, top: int = 10) -> str:
        """The facts for people (what ``robopt-compile analyze`` prints)."""
        from robopt_compile.compile.analysis import format_table

        return format_table(self.facts, top=top)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "parity": self.parity,
                "facts": self.facts}  # fmt: skip


def analyze(
    source: Any,
    *,
    target: str | None = None,
    precision: str | None = None,
    example_inputs: Any = None,
    options: CompileOptions | None = None,
    progress: Progress | None = None,
    **option_fields: Any,
) -> Analysis:
    """Export and check ``source``, simplify it, and run every analysis pass for ``target``;
    ``precision`` is what the roofline estimate assumes (fp32 by default)."""
    from robopt_compile.compile.analysis import analyze_source

    src = source_of(source, example_inputs)
    opts = compile_options(options, target=target, precision=precision, **option_fields)
    profile, loaded, facts = analyze_source(src, opts, progress)
    return Analysis(str(src), profile.name, profile.description, loaded.parity, facts)


@dataclass(frozen=True)
class Evaluation:
    """Original vs optimized: closed-loop task figures or open-loop action errors."""

    kind: str  # "closed_loop" | "open_loop" | "recording" (``record=``: nothing evaluated)
    result: dict[str, Any]
    path: Path | None  # the saved result in BUNDLE/results/

    @property
    def criteria_failures(self) -> list[str]:
        from robopt_compile.evaluate.run import criteria_failures

        return criteria_failures(self.result)

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return dict(self.result)
        return {**self.result, "path": str(self.path)}


def evaluate(
    bundle: str | Path,
    *,
    task: str | None = None,
    episodes: int = 50,
    seed: int = 0,
    reference: str | Path | None = None,
    compare: Sequence[str | Path] = (),
    dataset: str | Path | None = None,
    gripper_dim: int | None = None,
    record: str | Path | None = None,
    metric: str | None = None,
    max_return_drop: float | None = None,
    max_success_drop: float | None = None,
    threads: int | None = 1,
    progress: Progress | None = None,
    warn: Warn | None = None,
    executor: str | None = None,
    resume: bool = False,
    success_return: float | None = None,
) -> Evaluation:
    """Does the engine in ``bundle`` still do the task? (docs/EVALUATION.md)

    Closed loop by default: the original (``reference``, else the bundle's recorded source in
    fp32) and the engine drive the model's simulated task (``task``, else the zoo model's) on
    the same ``episodes`` seeds; ``compare`` adds bundles. ``dataset``: open loop on recorded
    observations. ``record``: record the original's episodes to that .npz and stop. The result
    is saved in ``bundle/results/`` and the bundle's report regenerated (problems: ``warn``).
    ``executor``: where the episodes run (``local``, ``ray``, ``ray://HOST:PORT``, ``auto``;
    docs/SCALE.md); the per-seed results are the same everywhere. On a cluster (or with
    ``resume``) each batch of episodes is recorded in the store as it finishes; ``resume``
    reads back those an earlier, killed run of the same evaluation recorded. ``task`` may be
    a gymnasium id or ``module:factory`` (``tasks/gym.py``); ``success_return`` is then its
    success threshold on the return, when the environment reports no ``info["success"]``.
    """
    from robopt_compile.compile.frontend import load_fp32
    from robopt_compile.evaluate import Criteria
    from robopt_compile.evaluate.run import run_evaluation
    from robopt_compile.executor import open_executor
    from robopt_compile.report.write import regenerate_reports
    from robopt_compile.store.cache import BuildCache, UnitMemo

    if success_return is not None:
        from robopt_compile.tasks import TASKS
        from robopt_compile.tasks.gym import task_name

        if task is None or task in TASKS:
            raise InputError(
                "--success-return applies to a user task (a gymnasium id or module:factory "
                "given with --task); robopt's own tasks define their success."
            )
        task = task_name(task, success_return)
    with contextlib.ExitStack() as stack:
        ex = stack.enter_context(open_executor(executor, warn))
        memo = None
        if dataset is None and record is None and (resume or ex.name != "local"):
            cache = BuildCache.open(warn or (lambda m: None))
            if cache is not None:
                stack.callback(cache.close)
                memo = UnitMemo(cache, "episodes", reuse=resume)
            elif resume:
                raise InputError("--resume needs the store, which cannot be opened (above).")
        result, path = run_evaluation(
            bundle, task=task, episodes=episodes, seed=seed,
            reference=None if reference is None else str(reference), compare=compare,
            dataset=dataset, gripper_dim=gripper_dim, record=record, metric=metric,
            criteria=Criteria(max_return_drop, max_success_drop), threads=threads,
            progress=progress, load=load_fp32, executor=ex, memo=memo,
        )  # fmt: skip
    if record is not None:
        return Evaluation("recording", result, None)
    regenerate_reports(bundle, warn)
    return Evaluation(result["kind"], result, path)


@dataclass(frozen=True)
class Benchmark:
    """The harness's result (latency percentiles, fidelity, memory, control-loop figures)."""

    result: dict[str, Any]
    saved: Path | None = None  # a remote result, saved in BUNDLE/results/

    @property
    def latency(self) -> dict[str, Any]:
        return self.result["latency"]

    @property
    def passed(self) -> bool:
        """Whether the engine's outputs matched the bundle's reference outputs."""
        return bool(self.result["fidelity"]["passed"])

    def to_json(self) -> dict[str, Any]:
        return self.result


def bench(
    bundle: str | Path,
    *,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    control_rate: float | None = None,
    verify: bool = True,
    device: str | None = None,
    token: str | None = None,
    progress: Callable[[int], None] | None = None,
    warn: Warn | None = None,
    store: StorePath = None,
    queue_timeout_s: float = 3600.0,
) -> Benchmark:
    """Benchmark a bundle here, or on the robot serving ``robopt-bench serve`` at ``device``
    (with its ``token``; ``bench.remote.read_token_file`` reads one), or on the device farm
    of ``store``: ``device`` a registered robot's name or ``any:BOARD`` (no token: the
    registry has it; queued up to ``queue_timeout_s``). Fidelity against the reference
    outputs, then ``runs`` timed runs. A remote result is saved in the bundle's ``results/``
    and its report regenerated. A fidelity failure is in the result (``passed``), not
    raised; ``progress`` gets the number of timed runs just finished."""
    from robopt_compile.bench.remote import is_device_name

    if device is not None and token is None and is_device_name(device):
        from robopt_compile.bench.remote import save_remote_result
        from robopt_compile.farm import bench_on_farm
        from robopt_compile.report.write import regenerate_reports
        from robopt_compile.store import open_store

        with open_store(None if store is None else str(store)) as st:
            r = bench_on_farm(
                st, bundle, device, runs=runs, warmup=warmup, threads=threads,
                control_rate=control_rate, verify=verify, progress=progress, warn=warn,
                queue_timeout_s=queue_timeout_s,
            )  # fmt: skip
        saved = save_remote_result(bundle, r)
        regenerate_reports(bundle, warn)
        return Benchmark(r, saved)
    if (device is None) != (token is None):
        raise InputError("a device URL and its token go together: give both or neither.")
    if device is None:
        from robopt_compile.bench.harness import run_benchmark

        r = run_benchmark(
            bundle, runs=runs, warmup=warmup, threads=threads, control_rate=control_rate,
            progress=progress, verify=verify,
        )  # fmt: skip
        return Benchmark(r)
    from robopt_compile.bench.remote import remote_benchmark, save_remote_result
    from robopt_compile.report.write import regenerate_reports

    assert token is not None
    r = remote_benchmark(
        bundle, device, token, runs=runs, warmup=warmup, threads=threads,
        control_rate=control_rate, verify=verify, progress=progress, on_retry=warn,
    )  # fmt: skip
    saved = save_remote_result(bundle, r)
    regenerate_reports(bundle, warn)  # the remote figures join report.html
    return Benchmark(r, saved)
