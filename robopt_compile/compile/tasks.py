"""The compile stages that run the policy in its task: recording calibration observations
(``--calibration task``) and the closed-loop evaluation of the fresh bundle (``--eval``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from robopt_compile.compile.options import CompileOptions
from robopt_compile.compile.stages import Progress, noop
from robopt_compile.compile.verify import engine_runs_here
from robopt_compile.errors import (
    InputError,
)

CALIBRATION_SEED_OFFSET = 1_000_000  # task calibration episodes start at this seed


CALIBRATION_SAMPLES = 512


def check_task_fits(task_name: str, model: Any, source: str) -> None:
    """Before anything is built: refuse (one line) a model the ``--eval`` task cannot feed."""
    from robopt_compile import evaluate as ev
    from robopt_compile import ir as rir
    from robopt_compile.tasks import get_task

    with get_task(task_name) as task:
        ev.check_policy_fits(task, [s.to_json() for s in rir.input_specs(model)], source,
                             option="--eval task:task=NAME")  # fmt: skip


def record_calibration(
    spec: str, source: str, model: Any, out: Path, opts: CompileOptions, progress: Any = None
) -> dict[str, Any]:
    """``--calibration task[:episodes=N,name=TASK,samples=S]``: record observations for
    calibration (and distillation).

    The fp32 model (ONNX Runtime) drives its task for N episodes (default 4) from seed
    1,000,000 + ``--seed``; up to S steps (default 512), spread evenly, are kept.
    """
    import numpy as np

    from robopt_compile import evaluate as ev
    from robopt_compile.tasks import get_task

    espec = ev.parse_eval_spec(spec, option="--calibration")
    if "episodes=" not in spec:
        espec.episodes = 4
    name = resolve_eval_task(espec, source)
    seeds = ev.seeds_for(espec.episodes, CALIBRATION_SEED_OFFSET + opts.seed)
    from robopt_compile import ir as rir
    from robopt_compile.evaluate.pooled import pooled_episodes

    done, total = [0], len(seeds)

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(f"record: episode {done[0]}/{total} on {name}", "tick", done[0] / total)

    with get_task(name) as task:
        ev.check_policy_fits(task, [s.to_json() for s in rir.input_specs(model)], source)
        # on the build machine's cores: the same episodes as one after another here
        eps = pooled_episodes(name, model, seeds, opts.threads or 1, tick, True, task)
    # keyed as the episodes fed the model (a user task names its one feed after the input)
    arrays = {n: np.concatenate([e.feeds[n] for e in eps]) for n in eps[0].feeds}
    steps = next(iter(arrays.values())).shape[0]
    cap = espec.samples or CALIBRATION_SAMPLES
    keep = np.unique(np.linspace(0, steps - 1, min(steps, cap)).astype(int))
    # One sample per step, with the batch axis of 1 the model expects.
    np.savez(out, **{n: a[keep][:, None] for n, a in arrays.items()})
    return {"task": name, "episodes": len(eps), "seeds": seeds, "samples": int(keep.size)}


def record_vla_calibration(
    spec: str, source: str, model: Any, out: Path, opts: CompileOptions
) -> dict[str, Any]:  # fmt: skip
    """``--calibration task`` for a trained VLA: its torch model drives its task (through the
    zoo model's task adapter) for N episodes (default 4) from seed 1,000,000 + ``--seed``; the
    images (``pixel_values``) of up to 512 steps, spread evenly, calibrate its vision graph."""
    import numpy as np

    from robopt_compile import evaluate as ev
    from robopt_compile.tasks import get_task

    espec = ev.parse_eval_spec(spec, option="--calibration")
    if "episodes=" not in spec:
        espec.episodes = 4
    name = resolve_eval_task(espec, source)
    adapter = require_adapter(source, "--calibration task")
    seeds = ev.seeds_for(espec.episodes, CALIBRATION_SEED_OFFSET + opts.seed)
    with get_task(name) as task:
        ev.check_policy_fits(task, [], source, adapter)
        eps = ev.run_episodes(task, ev.vla_eager_policy(model, adapter), seeds, record=True)
    frames = [adapter({k: e.feeds[k][i : i + 1] for k in task.input_names})["pixel_values"]
              for e in eps for i in range(e.steps)]  # fmt: skip
    cap = espec.samples or CALIBRATION_SAMPLES
    keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), cap))
                     .astype(int))  # fmt: skip
    np.savez(out, pixel_values=np.stack([frames[i] for i in keep]))
    return {"task": name, "episodes": len(eps), "seeds": seeds, "samples": int(keep.size)}


def require_adapter(source: str, option: str) -> Any:
    """The task adapter of a trained VLA, or a one-line refusal naming the models that have one."""
    from robopt_compile.zoo import ZOO, task_adapter

    adapter = task_adapter(source)
    if adapter is None:
        have = [f"zoo:{n}" for n, e in ZOO.items() if e.kind == "vla" and e.adapter]
        raise InputError(
            f"{option}: {source} has no task adapter (a VLA with random weights, or a folder); "
            f"trained VLAs that run in a task: {', '.join(have)}."
        )
    return adapter


def evaluate_vla_bundle(
    out: Path, task_name: str, opts: CompileOptions, model: Any, source: str,
    progress: Progress = noop, published: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``--eval`` for a VLA bundle: its driver loop over the built engines against the torch
    model (fp32, greedy with its cache), both through the model's task adapter, paired seeds."""
    from robopt_compile import evaluate as ev

    adapter = require_adapter(source, "--eval")
    return evaluate_bundle(
        out, task_name, opts, ev.vla_eager_policy(model, adapter), progress, published,
        reference_label=f"original fp32 torch ({source})", adapter=adapter,
    )  # fmt: skip


def _eval_runner(ex: Any, task_name: str, spec: Any, reference: Any, out: Path,
                 meta: dict[str, Any], opts: CompileOptions, tick: Any) -> Any:  # fmt: skip
    """``--eval`` on an executor: the reference and the fresh bundle (or its ONNX stand-in)
    shipped to the workers; a VLA's torch reference is rebuilt there from the zoo."""
    from robopt_compile import evaluate as ev
    from robopt_compile.evaluate import distributed as dist

    if isinstance(reference, (str, Path)):
        ref = dist.ship_onnx(ex, reference)
    else:
        import json as _json

        source = str(_json.loads((out / "manifest.json").read_text())["model"]["source"])
        ref = dist.ship_vla(source)
    cand = (dist.ship_onnx(ex, out / "model.onnx") if meta.get("proxy")
            else dist.ship_bundle(ex, out))  # fmt: skip
    return dist.episodes_runner(
        ex, task_name, [ref, cand], ev.seeds_for(spec.episodes, spec.seed), opts.threads or 1, tick
    )


def resolve_eval_task(spec: Any, source: str) -> str:
    """The task ``--eval`` runs: named in the spec, or the trained zoo model's own task."""
    from robopt_compile.tasks import TASKS
    from robopt_compile.zoo import ZOO

    name = spec.task
    if name is None:
        entry = ZOO.get(source.removeprefix("zoo:")) if source.startswith("zoo:") else None
        name = entry.task if entry else None
    if name is None:
        raise InputError(
            f"--eval: {source} has no known task; name one, e.g. --eval "
            f"task:name={next(iter(TASKS))},episodes=50 (tasks: {', '.join(TASKS)})."
        )
    from robopt_compile.tasks import get_task

    # A user task (gymnasium id, module:factory) is checked by building it. Start the
    # simulator once now: a missing one fails before the build, not after it.
    get_task(name).close()
    return name


def evaluate_bundle(
    out: Path,
    task_name: str,
    opts: CompileOptions,
    reference: Any,
    progress: Progress = noop,
    published: Path | None = None,
    reference_label: str | None = None,
    adapter: Any = None,
) -> dict[str, Any]:
    """Closed-loop evaluation of a fresh bundle against the exported fp32 model (``reference``:
    its path, or a ready policy such as a VLA's torch model, with ``adapter`` the model's
    task adapter).

    An engine that cannot run here (a deferred TensorRT build) is stood in for by its
    optimized ONNX in ONNX Runtime, labelled as such. ``out`` may be the staged folder of a
    bundle not yet published at ``published``, the path the result names.
    """
    import json as _json

    from robopt_compile import evaluate as ev
    from robopt_compile.bench.results import save_result
    from robopt_compile.executor import open_executor
    from robopt_compile.tasks import file_stem, get_task

    manifest = _json.loads((out / "manifest.json").read_text())
    spec = opts.eval
    done, total = [0], 2 * spec.episodes

    def tick(n: int) -> None:
        done[0] += n
        progress(f"evaluate: episode {done[0]}/{total} on {task_name}", "tick", done[0] / total)

    with get_task(task_name) as task:
        ev.check_policy_fits(task, manifest["inputs"], str(published or out), adapter,
                             option="--eval task:task=NAME")  # fmt: skip
        meta = ev.bundle_meta(out)
        meta["bundle"] = str((published or out).resolve())
        label = f"optimized {manifest['precision']} ({manifest['backend']})"
        with contextlib.ExitStack() as stack:
            ref = reference
            if isinstance(reference, (str, Path)):
                ref = stack.enter_context(ev.onnx_policy(reference, opts.threads or 1))
            # a multi-graph bundle's engines were built and checked here: its driver runs them
            if "graphs" in manifest or engine_runs_here(manifest["engine"].get("config", {})):
                cand = stack.enter_context(ev.bundle_policy(out, opts.threads or 1))
            else:
                cand = stack.enter_context(ev.onnx_policy(out / "model.onnx", opts.threads or 1))
                label += " via its ONNX in onnxruntime (engine does not run here)"
                meta["proxy"] = True
            ex = stack.enter_context(
                open_executor(opts.executor, lambda m: progress(m, "note", 0.0))
            )
            runner = None
            if ex.name != "local":
                runner = _eval_runner(ex, task_name, spec, reference, out, meta, opts, tick)
            result = ev.closed_loop(
                task,
                ref,
                [(label, cand, meta)],
                episodes=spec.episodes,
                seed=spec.seed,
                metric=spec.metric,
                criteria=opts.eval_criteria,
                progress=tick,
                runner=runner,
                **({"reference_label": reference_label} if reference_label else {}),
            )
            if runner is not None:
                result["executor"] = {**ex.describe(), "machines": runner.machines}
    saved = save_result(out, f"eval-{file_stem(task_name)}", result)
    result["path"] = str((published or out) / saved.relative_to(out))
    return result
