"""Evaluate a compiled bundle against its original: what ``robopt-compile evaluate`` and the
Python API's ``evaluate`` run.

Closed loop (default): the original and the bundle's engine (and any ``compare`` bundles)
drive the model's simulated task on the same seeds. Open loop (``dataset``): recorded
observations go through each of them. The result is saved in ``BUNDLE/results/``; refreshing
the bundle's report is the caller's (``report.write.regenerate_reports``). With ``record``
the original's closed-loop observations and actions are recorded instead (an open-loop
dataset) and nothing is evaluated.

(The compile's own ``--eval`` stage, which judges a bundle not yet published against the
exported ONNX, is ``robopt_compile.compile.tasks.evaluate_bundle``.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError

Progress = Callable[[str, str, float], None]  # (stage, event, seconds), as a compile's


def source_changed(bundle_dir: Path, manifest: dict[str, Any], ref: Any) -> str | None:
    """The reloaded source against the outputs it gave when the bundle was built (the bundle's
    reference): a line saying it changed (a factory with unseeded random weights, or weights
    edited since), else None. Every comparison with "the original" assumes they match."""
    import numpy as np

    from robopt_compile.feeds import load_npz_inputs

    try:
        ins = load_npz_inputs(bundle_dir / manifest["reference"]["inputs"])
        want = load_npz_inputs(bundle_dir / manifest["reference"]["outputs"])
        got = ref({k: ins[k] for k in (i["name"] for i in manifest["inputs"])})
    except Exception:  # the check is a courtesy: a bundle it cannot read is judged elsewhere
        return None
    names = [o["name"] for o in manifest["outputs"]]
    for name, g in zip(names, got, strict=False):
        w = want.get(name)
        if w is not None and w.shape == np.shape(g) and not np.allclose(g, w, rtol=1e-2, atol=1e-3):
            return (f"the original ({manifest['model'].get('source')}) now computes different "
                    f"{name!r} outputs than when {bundle_dir} was built: a factory that builds "
                    "unseeded random weights, or weights changed since? Every figure below "
                    "compares against the original as it is now.")  # fmt: skip
    return None


def _compressed(bundle_dir: Path) -> bool:
    """Whether pruning or low-rank changed the bundle's model: its reference outputs are then
    the compressed model's (what the engine must reproduce), not the source's, and cannot
    tell whether the source changed."""
    import json

    try:
        report = json.loads((bundle_dir / "report.json").read_text())
    except (OSError, ValueError):
        return False
    steps = (report.get("compression") or {}).get("steps") or []
    return any(not s.get("rolled_back") for s in steps)


def reference_spec(bundle_dir: Path, manifest: dict[str, Any], reference: str | None) -> str:
    """What the bundle is compared against: ``reference``, else its recorded source."""
    from robopt_compile.evaluate.spec import looks_like_bundle

    model = manifest.get("model", {})
    ref_spec = reference or model.get("source")
    if reference is None and model.get("source_kind") == "module":
        raise InputError(
            f"{bundle_dir}: it was compiled from a module in memory ({ref_spec}); pass "
            "--reference (the original bundle or model)."
        )
    missing_onnx = ref_spec.endswith(".onnx") and not Path(ref_spec).exists() if ref_spec else True
    if not ref_spec or (not looks_like_bundle(ref_spec) and missing_onnx):
        raise InputError(
            f"{bundle_dir}: its source {ref_spec!r} is not available here; pass --reference "
            "(the original bundle or model)."
        )
    return ref_spec


def run_evaluation(
    bundle_dir: str | Path,
    *,
    task: str | None = None,
    episodes: int = 50,
    seed: int = 0,
    reference: str | None = None,
    compare: Sequence[str | Path] = (),
    dataset: str | Path | None = None,
    gripper_dim: int | None = None,
    record: str | Path | None = None,
    metric: str | None = None,
    criteria: Any = None,  # closedloop.Criteria
    threads: int | None = 1,
    progress: Progress | None = None,
    load: Callable[[str], Any] | None = None,
    executor: Any = None,  # executor.Executor; None or local: episodes run here
    memo: Any = None,  # store.cache.UnitMemo: finished units recorded, reused with --resume
) -> tuple[dict[str, Any], Path | None]:
    """Original vs the bundle's engine; returns (result, the saved result file).

    With a non-local ``executor``, or a ``memo`` that reuses units (``--resume``), episodes
    run as units of ``CHUNK`` seeds (evaluate/distributed.py), each recorded in ``memo`` as it
    finishes; result["executor"]["resumed_units"] counts those read back.

    With ``record``: (``{"episodes", "steps", "path"}`` of the recording, None).

    Raises:
        InputError: no reference or task is known, a bundle or dataset that does not fit.
        BackendUnavailableError: the simulator or a runtime is missing.
    """
    from robopt_compile import evaluate as ev
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.bench.results import save_result
    from robopt_compile.tasks import file_stem, get_task

    log = progress or (lambda stage, event, seconds: None)
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=False)
    ref_spec = reference_spec(bundle_dir, manifest, reference)
    task_name = None
    if dataset is None:
        task_name = task or ev.task_for_manifest(manifest) or ev.task_for_source(ref_spec)
        if task_name is None:
            raise InputError(
                f"{bundle_dir}: no task is known for this model; pass --task (see "
                "`robopt-compile evaluate --help`) or --dataset for open loop."
            )
    label = f"optimized {manifest['precision']} ({manifest['backend']})"
    with contextlib.ExitStack() as stack:
        log("load reference", "start", 0.0)
        t0 = time.perf_counter()
        ref = stack.enter_context(ev.any_policy(ref_spec, threads, _loader(load)))
        log("load reference", "done", time.perf_counter() - t0)
        if reference is None and "graphs" not in manifest and not _compressed(bundle_dir):
            changed = source_changed(bundle_dir, manifest, ref)
            if changed:
                log(changed, "note", 0.0)
        cands = [
            (
                label,
                stack.enter_context(ev.bundle_policy(bundle_dir, threads)),
                ev.bundle_meta(bundle_dir),
            )
        ]
        for other in map(Path, compare):
            m = load_manifest(other, verify=False)
            cands.append(
                (
                    f"{other.name}: {m['precision']} ({m['backend']})",
                    stack.enter_context(ev.bundle_policy(other, threads)),
                    ev.bundle_meta(other),
                )
            )
        if dataset is not None:
            dataset = Path(dataset)
            names = [i["name"] for i in manifest["inputs"]]
            dtypes = {i["name"]: i["dtype"] for i in manifest["inputs"]}
            result = ev.open_loop(dataset, ref, cands, names, dtypes, gripper_dim,
                                  manifest["inputs"])  # fmt: skip
            return result, save_result(bundle_dir, f"openloop-{dataset.stem}", result)
        assert task_name is not None
        t = stack.enter_context(get_task(task_name))
        ev.check_policy_fits(t, manifest["inputs"], str(bundle_dir), ev.adapter_for(manifest))
        if record is not None:
            return ev.record_episodes(t, ref, ev.seeds_for(episodes, seed), record), None
        total = episodes * (1 + len(cands))
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            log(f"episode {done[0]}/{total} on {task_name}", "tick", done[0] / total)

        runner = None
        if executor is not None and (executor.name != "local" or (memo and memo.reuse)):
            runner = _runner(executor, task_name, ref_spec, [bundle_dir, *map(Path, compare)],
                             episodes, seed, threads, tick, load, memo)  # fmt: skip
        result = ev.closed_loop(
            t, ref, cands, episodes=episodes, seed=seed, metric=metric,
            reference_label=f"original fp32 ({ref_spec})",
            criteria=criteria or ev.Criteria(), progress=tick, runner=runner,
        )  # fmt: skip
        if runner is not None:
            result["executor"] = {**executor.describe(), "machines": runner.machines,
                                  "resumed_units": memo.reused if memo else 0}  # fmt: skip
        return result, save_result(bundle_dir, f"eval-{file_stem(task_name)}", result)


def _runner(executor: Any, task_name: str, ref_spec: str, bundles: Sequence[Path], episodes: int,
            seed: int, threads: int | None, tick: Callable[[int], None],
            load: Callable[[str], Any] | None, memo: Any = None) -> Any:  # fmt: skip
    """The executor's runner for the reference and the bundles (shipped, never by path);
    ``memo``'s keys name a bundle by its manifest (which hashes every file)."""
    import hashlib

    from robopt_compile import evaluate as ev
    from robopt_compile.evaluate import distributed as dist
    from robopt_compile.zoo import is_vla, task_adapter

    if ev.looks_like_bundle(ref_spec):
        ref = dist.ship_bundle(executor, ref_spec)
    elif is_vla(ref_spec) and task_adapter(ref_spec) is not None:
        ref = dist.ship_vla(ref_spec)
    else:
        ref = dist.ship_onnx(executor, _loader(load)(ref_spec))
    shipped = [ref, *(dist.ship_bundle(executor, b) for b in bundles)]

    def ident(folder: str | Path) -> str:
        return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()

    idents = [ident(ref_spec) if ref.kind == "bundle" else ref.key, *map(ident, bundles)]
    return dist.episodes_runner(executor, task_name, shipped, ev.seeds_for(episodes, seed),
                                threads, tick, memo, idents)  # fmt: skip


def criteria_failures(result: dict[str, Any]) -> list[str]:
    """The closed-loop bounds an evaluation broke, one line each (none for open loop)."""
    crit = result.get("criteria")
    if crit and not crit["passed"]:
        return [f"closed loop: {f}" for f in crit["failures"]]
    return []


def _loader(load: Callable[[str], Any] | None) -> Callable[[str], Any]:
    """The exporter for a model source, handed in by the caller above the compiler."""
    if load is not None:
        return load

    def refuse(source: str) -> Any:
        raise InputError(
            f"{source!r} is a model source, not a bundle; this evaluation was started without "
            "an exporter (call robopt_compile.api.evaluate, or pass load=)."
        )

    return refuse
