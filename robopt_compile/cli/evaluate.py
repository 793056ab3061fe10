"""``robopt-compile evaluate BUNDLE``: does the optimized engine still do the task?
Original vs optimized, closed loop or open loop (api.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robopt_compile import api
from robopt_compile.cli.common import (
    StageLog,
    criteria_exit,
    executor_option,
    print_json,
    print_rows,
    warn,
)
from robopt_compile.cli.tables import evaluation_lines, format_open_loop


@click.command("evaluate")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--task",
    help="Simulated task: one of robopt's, any gymnasium environment id, or "
    "package.module:factory returning a gymnasium env or (env, to_feeds) "
    "(default: the zoo model's own task).",
)
@click.option(
    "--success-return",
    type=float,
    help="A user task's success: return >= this, when its env reports no info['success'].",
)
@click.option(
    "--episodes",
    type=click.IntRange(min=2),
    default=50,
    show_default=True,
    help="Seeded episodes per engine (closed loop).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="First episode seed.")
@click.option(
    "--reference",
    help="The original to compare against: another bundle folder or a model source "
    "(zoo:NAME, .onnx, .pt2, module:factory). Default: the bundle's recorded source, in fp32.",
)
@click.option(
    "--compare",
    multiple=True,
    type=click.Path(path_type=Path),
    help="More bundles to evaluate on the same seeds (repeatable).",
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="Open loop instead: an .npz of recorded observations (one array per input, steps on "
    "axis 0); reports the action error against the original.",
)
@click.option(
    "--gripper-dim", type=int, help="Open loop: the action dimension whose sign is the gripper."
)
@click.option(
    "--record",
    type=click.Path(path_type=Path),
    help="Record the original's closed-loop observations and actions to this .npz (an "
    "open-loop dataset), then stop.",
)
@click.option("--metric", type=click.Choice(["return", "success"]), help="Paired-test metric.")
@click.option("--max-return-drop", type=click.FloatRange(min=0), help="Bound: return drop.")
@click.option(
    "--max-success-drop", type=click.FloatRange(min=0, max=1), help="Bound: success drop."
)
@click.option("--fail-on-criteria", is_flag=True, help="Exit 4 when a bound does not hold.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@executor_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an evaluation that was killed: batches of episodes an earlier run of the "
    "same evaluation (same bundles, task, seeds, threads) recorded in the store are read back, "
    "the rest run. Runs on an --executor cluster record their batches always; a local run "
    "records them with --resume.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate_cmd(
    bundle_dir: Path,
    task: str | None,
    success_return: float | None,
    episodes: int,
    seed: int,
    reference: str | None,
    compare: tuple[Path, ...],
    dataset: Path | None,
    gripper_dim: int | None,
    record: Path | None,
    metric: str | None,
    max_return_drop: float | None,
    max_success_drop: float | None,
    fail_on_criteria: bool,
    threads: int,
    executor: str,
    resume: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Does the optimized engine in BUNDLE_DIR still do the task? Original vs optimized.

    Closed loop (default): both drive the model's simulated task on the same seeds; returns and
    success rates with 95% intervals and a paired test. Open loop (--dataset): recorded
    observations through both; action error per dimension. Results are saved in
    BUNDLE_DIR/results/ and the bundle's report is regenerated.
    Exit codes: 0 ok, 2 bad input, 3 simulator or runtime missing, 4 a bound did not hold
    (with --fail-on-criteria).
    """
    e = api.evaluate(
        bundle_dir, task=task, success_return=success_return, episodes=episodes, seed=seed,
        reference=reference, compare=compare, dataset=dataset, gripper_dim=gripper_dim,
        record=record, metric=metric,
        max_return_drop=max_return_drop, max_success_drop=max_success_drop, threads=threads,
        progress=StageLog(not as_json), warn=warn, executor=executor, resume=resume,
    )  # fmt: skip
    if e.kind == "recording":
        info = e.result
        click.echo(
            json.dumps(info)
            if as_json
            else f"recorded {info['episodes']} episodes, {info['steps']} steps -> {record}"
        )
        return
    if as_json:
        print_json(e.to_json(), lenient=True)
    elif e.kind == "closed_loop":
        print_rows(evaluation_lines(e.result))
        resumed = (e.result.get("executor") or {}).get("resumed_units")
        if resumed:
            click.echo(f"resumed {resumed} batch(es) of episodes recorded by an earlier run "
                       "(their latencies were measured then)")  # fmt: skip
        click.echo(f"saved {e.path}")
    else:
        click.echo(format_open_loop(e.result))
        click.echo(f"saved {e.path}")
    criteria_exit(e.criteria_failures, fail_on_criteria, "the results were saved")
