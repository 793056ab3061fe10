"""``robopt-compile SOURCE`` (the default command): compile, or with a planner option let the
planner choose (``robopt_compile.cli.plan``); the human summary of a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robopt_compile import api
from robopt_compile.cli.common import (
    Invocation,
    StageLog,
    compile_options,
    criteria_exit,
    device_token,
    executor_option,
    print_json,
    print_rows,
    source_options,
    warn,
)
from robopt_compile.cli.tables import bundle_rows, evaluation_lines, graph_bundle_rows
from robopt_compile.errors import CheckFailedError, InputError, RoboptError
from robopt_compile.executor import parse_executor


@click.command("compile")
@source_options
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Bundle folder to write (refused if it exists, unless --force). Required unless "
    "--plan-only.",
)
@click.option(
    "--backend",
    "-b",
    default=None,
    help="onnxruntime, openvino, tensorrt or tvm (default: the profile's first that can build "
    "here; TensorRT without TensorRT installed writes a deferred build).",
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    help="fp32, bf16 (OpenVINO), fp16, int8 (static, calibrated), int8-dynamic, int8-weight "
    "or int4-weight (weight-only).",
)
@click.option(
    "--activations",
    type=click.Choice(["fp32", "bf16"]),
    help="Multi-graph bundles (VLA, diffusion policy) on OpenVINO: the precision the engines "
    "compute in, whatever the weights' (--precision int4-weight --activations bf16: INT4 "
    "weights, bf16 arithmetic on AMX / AVX-512 BF16). Default: that of --precision.",
)
@click.option(
    "--decode-backend",
    type=click.Choice(["onnxruntime", "openvino", "auto"]),
    help="VLA bundles: run the language model's decode steps (one token each) on this "
    "runtime and the prefill on --backend (-b openvino --precision int4-weight "
    "--decode-backend onnxruntime: OpenVINO's AMX prefill, ONNX Runtime's MatMulNBits decode); "
    "auto: the other runtime only if its decode step measures at most 0.9x here. Default: "
    "--backend for both, or auto for an int8-/int4-weight VLA compiled without -b.",
)
@click.option(
    "--calibration",
    help="Calibration data: a folder of .npy/.npz samples, one .npz with a leading sample "
    "axis, package.module:iterator, or 'random' (accuracy figures then meaningless). A "
    "held-out part is kept for every accuracy figure.",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    help="int8 calibration method (default: the quantizer's own).",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Largest allowed held-out error vs fp32 (relative L2 of the outputs, or --metric); "
    "int8 keeps the most sensitive layers in fp32 to meet it. Default 0.01.",
)
@click.option(
    "--strict", is_flag=True, help="Exit 4 instead of rolling back to fp32 when the bound breaks."
)
@click.option(
    "--metric", help="Accuracy drop as package.module:function(reference, candidate, inputs)."
)
@click.option(
    "--measure-sensitivity",
    is_flag=True,
    help="Measure every layer's sensitivity even when the bound is met (for quant-report).",
)
@click.option(
    "--block-size", type=click.IntRange(min=1), help="Weight-only quantization block (group) size."
)
@click.option(
    "--prune",
    multiple=True,
    help="Pruning, repeatable: channels:RATIO[,criterion=l1|l2|activation][,scope=layer|global]"
    "[,multiple=8][,protect=NODE;NODE] (structured: fewer channels, faster everywhere), 2:4 "
    "(semi-structured, for TensorRT sparse tensor cores on Ampere+ GPUs; no CPU speedup), "
    "unstructured:SPARSITY (size only; engine stored compressed).",
)
@click.option(
    "--prune-layer",
    multiple=True,
    metavar="NODE=RATIO",
    help="Channel pruning ratio for the group owned by NODE (overrides the global ratio).",
)
@click.option(
    "--low-rank",
    metavar="energy=F|rank=F",
    help="Truncated-SVD factorization of Gemm/MatMul/1x1-Conv weights, where it cuts FLOPs.",
)
@click.option(
    "--search-arch",
    metavar="latency=0.5x|latency-ms=3",
    help="Search every layer's width and the residual blocks to keep under a latency budget "
    "measured here (ONNX Runtime, --threads) [,steps=8,tune=30,shortlist=2,finalists=3,lr=3e-4,"
    "batch=16]; finalists judged in the task with --eval; then --distill recovers "
    "(docs/ARCHSEARCH.md).",
)
@click.option(
    "--distill",
    metavar="steps=N[,lr=F,batch=N,loss=mse|kl,onpolicy=R,episodes=E,time=20m]",
    help="After --prune channels/--low-rank/--search-arch: train the compressed model to match "
    "the original on the calibration inputs (unlabeled), to recover accuracy; time=: at most "
    "that long, the steps fitted to it.",
)
@click.option(
    "--tune-trials",
    type=click.IntRange(min=0),
    default=None,
    help="TVM: MetaSchedule tuning trials (0: untuned). Records are kept in a database under "
    "~/.cache/robopt/tvm and reused by later builds.",
)
@click.option(
    "--dla-core",
    type=click.IntRange(min=0),
    default=None,
    help="TensorRT on Jetson: run on this DLA core (fp16/int8), falling back to the GPU for "
    "layers the DLA lacks.",
)
@click.option(
    "--eval",
    "eval_spec",
    metavar="task[:episodes=N,seed=N,name=TASK,metric=return|success]",
    help="After the build, run the original and the optimized engine in closed loop on the "
    "model's simulated task (same seeds) and report return/success with intervals. With "
    "--max-accuracy-drop, the quantizer is judged by the task too.",
)
@click.option(
    "--max-return-drop",
    type=click.FloatRange(min=0),
    help="Closed-loop bound: largest mean-return drop as a fraction of the original's (0.05).",
)
@click.option(
    "--max-success-drop",
    type=click.FloatRange(min=0, max=1),
    help="Closed-loop bound: largest success-rate drop, 0..1 (0.02 = 2 points).",
)
@click.option(
    "--max-latency-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="Planner: latency bound on this machine (p50, or --latency-percentile p99). Any "
    "planner option makes robopt choose the backend and precision itself.",
)
@click.option(
    "--latency-percentile", type=click.Choice(["p50", "p99"]), default=None, help="Planner."
)
@click.option("--max-size-mb", type=click.FloatRange(min=0), help="Planner: engine size bound.")
@click.option(
    "--max-memory-mb", type=click.FloatRange(min=0), help="Planner: memory bound (RSS increase)."
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "size", "memory"]),
    default=None,
    help="Planner: what to minimise among the plans that meet every bound (default latency).",
)
@click.option(
    "--techniques",
    metavar="quantize,prune,arch",
    help="Planner: techniques it may use (default quantize; prune: channels 25%/50%; arch: "
    "--search-arch latency=0.5x).",
)
@click.option(
    "--search-budget",
    metavar="10m",
    help="Planner: time for building and measuring; with --search-arch: the search's and its "
    "--distill recovery's time (the recovery's steps fitted to what the search leaves).",
)
@click.option(
    "--plan-only", is_flag=True, help="Planner: print the plans and predictions, build nothing."
)
@click.option(
    "--recipe",
    type=click.Path(path_type=Path),
    help="Planner: criteria from a TOML (or YAML) file; flags override it.",
)
@click.option(
    "--resume",
    "resume_id",
    metavar="ID",
    help="Continue an interrupted session (robopt-compile sessions) from its last finished "
    "step, with the settings it was started with (a compile or a planner search).",
)
@click.option(
    "--store",
    "store_spec",
    help="The store that records this run's session (and a planner's measurements): a "
    "folder, .db or sqlite:///path; default $ROBOPT_STORE, else ~/.cache/robopt/store.",
)
@click.option(
    "--fail-on-criteria",
    is_flag=True,
    help="Exit 4 when a bound did not hold (accuracy guard rolled back, closed-loop bound "
    "broken); the bundle is still written. For CI.",
)
@click.option(
    "--require-engine-check",
    is_flag=True,
    help="Exit 4 when the engine itself could not be checked here (a deferred TensorRT build "
    "or a cross-compiled engine: only its ONNX was checked); the bundle is still written.",
)
@click.option(
    "--device",
    metavar="URL",
    default=None,
    help="After the build, benchmark the bundle on the robot serving `robopt-bench serve` at "
    "URL (http://ROBOT:8470); the result is saved in OUT/results/.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File whose first line is the --device server's token.",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Do not use the build cache in the store (export, passes and engine are reused when "
    "their inputs, options and tool versions are unchanged; docs/STORE.md).",
)
@executor_option
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.pass_obj
def compile_cmd(
    inv: Invocation | None,
    out: Path,
    backend: str | None,
    precision: str,
    activations: str | None,
    decode_backend: str | None,
    calibration: str | None,
    calib_method: str | None,
    max_accuracy_drop: float | None,
    strict: bool,
    metric: str | None,
    measure_sensitivity: bool,
    block_size: int | None,
    prune: tuple[str, ...],
    prune_layer: tuple[str, ...],
    low_rank: str | None,
    distill: str | None,
    search_arch: str | None,
    tune_trials: int | None,
    dla_core: int | None,
    eval_spec: str | None,
    max_return_drop: float | None,
    max_success_drop: float | None,
    max_latency_ms: float | None,
    latency_percentile: str | None,
    max_size_mb: float | None,
    max_memory_mb: float | None,
    objective: str | None,
    techniques: str | None,
    search_budget: str | None,
    plan_only: bool,
    recipe: Path | None,
    resume_id: str | None,
    store_spec: str | None,
    fail_on_criteria: bool,
    require_engine_check: bool,
    device: str | None,
    token_file: Path | None,
    no_cache: bool,
    executor: str,
    force: bool,
    **kw: Any,
) -> None:
    """Compile SOURCE into a deployable bundle at OUT."""

    inv = inv or Invocation()
    if resume_id is not None:
        from robopt_compile.cli.plan import resume

        resume(kw["source"], resume_id, store_spec, kw["as_json"])
        return
    if out is None and not plan_only:
        raise click.UsageError("Missing option '-o' / '--output'.")
    token = device_token(device, token_file)  # before the build: fail fast on a bad file
    parse_executor(executor)  # a bad --executor fails before any work
    from robopt_compile.compile.options import CompressOptions, QuantOptions
    from robopt_compile.evaluate import Criteria, parse_eval_spec

    quant = QuantOptions(
        calibration=calibration,
        method=calib_method,
        max_drop=max_accuracy_drop,
        strict=strict,
        metric=metric,
        measure_sensitivity=measure_sensitivity,
        block_size=block_size,
        seed=kw["seed"],
    )
    arch_budget = None
    if search_arch is not None and search_budget is not None:  # the search's, not a planner's
        from robopt_compile.plan.planner import parse_budget

        arch_budget, search_budget = parse_budget(search_budget), None
    compress = CompressOptions(
        prune=prune, prune_layers=prune_layer, low_rank=low_rank, distill=distill,
        search_arch=search_arch, search_budget_s=arch_budget,
    )  # fmt: skip
    opts = compile_options(
        kw,
        backend=backend,
        precision=precision,
        quant=quant,
        compress=compress,
        tune_trials=tune_trials,
        dla_core=dla_core,
        eval=parse_eval_spec(eval_spec) if eval_spec else None,
        eval_criteria=Criteria(max_return_drop, max_success_drop),
        cache=not no_cache,
        activations=activations,
        decode_backend=decode_backend,
        executor=executor,
    )
    if (max_return_drop is not None or max_success_drop is not None) and not eval_spec:
        raise InputError("--max-return-drop/--max-success-drop need --eval task[:...].")
    planner_args = {
        "max_latency_ms": max_latency_ms,
        "latency_percentile": latency_percentile,
        "max_size_mb": max_size_mb,
        "max_memory_mb": max_memory_mb,
        "objective": objective,
        "techniques": None
        if techniques is None
        else tuple(t.strip() for t in techniques.split(",") if t.strip()),
        "search_budget_s": None,
    }
    if search_budget is not None:
        from robopt_compile.plan.planner import parse_budget

        planner_args["search_budget_s"] = parse_budget(search_budget)
    planner = recipe is not None or plan_only or any(v is not None for v in planner_args.values())
    if planner and "," in kw["target"]:
        raise InputError("a planner search is for one board; give one --target, or drop the "
                         "planner options to build one bundle per board.")  # fmt: skip
    if planner:
        from robopt_compile.cli.plan import run_planner

        given = {k: v for k, v in planner_args.items() if v is not None}
        if max_accuracy_drop is not None:  # the accuracy bound, over a recipe's
            given["max_accuracy_drop"] = max_accuracy_drop
        run_planner(kw["source"], out, opts, given, recipe, plan_only, force, store_spec,
                    kw["as_json"])  # fmt: skip
        return
    if "," in kw["target"]:  # a fleet: one bundle per board
        from robopt_compile.cli.fleet import run_fleet

        if device is not None or require_engine_check:
            raise InputError(
                "--device and --require-engine-check are for one board; with --target a,b,c "
                "benchmark each OUT/<board> with robopt-bench."
            )
        run_fleet(kw["source"], out, opts, force, kw["as_json"])
        return
    result = api.compile(
        kw["source"], out=out, options=opts, force=force, progress=StageLog(not kw["as_json"]),
        store=store_spec, command=inv.argv, resume=inv.resuming,
    )  # fmt: skip
    failures = list(result.criteria_failures)
    if require_engine_check and not result.engine_checked and device is None:
        failures.append(f"engine not checked: {result.verdict['checked']} (--require-engine-check)")
        fail_on_criteria = True
    if kw["as_json"]:
        remote = _remote_after_build(out, device, token, kw["threads"], as_json=True)
        print_json({**result.to_json(), "criteria_failures": failures, **remote}, lenient=True)
        criteria_exit(failures, fail_on_criteria)
        return
    if "graphs" in result.manifest:  # a multi-graph bundle (a VLA): graphs, then fidelity
        print_rows(graph_bundle_rows(out, result.manifest, result.report))
        _remote_after_build(out, device, token, kw["threads"], as_json=False)
        click.echo(f"\nnext: robopt-bench {out} --runs 20")
        criteria_exit(failures, fail_on_criteria)
        return
    print_rows(bundle_rows(result))
    if result.evaluation:
        click.echo("")
        print_rows(evaluation_lines(result.evaluation))
    _remote_after_build(out, device, token, kw["threads"], as_json=False)
    where = "" if result.engine_checked else " (on the device)"
    click.echo(f"\nnext{where}: robopt-bench {out} --runs 500")
    criteria_exit(failures, fail_on_criteria)


def _remote_after_build(
    out: Path, device: str | None, token: str | None, threads: int | None, as_json: bool
) -> dict[str, Any]:
    """With --device: benchmark the new bundle on the robot (the result lands in
    OUT/results/ and the report), print one summary line (tables only); the JSON keys to add.

    Raises:
        RoboptError: the remote run failed (same exit code as robopt-bench would give); the
            message says the bundle was written and kept.
    """
    if device is None or token is None:
        return {}
    kept = (
        f"The bundle {out} was written and kept; benchmark it later with "
        f"`robopt-bench {out} --device {device} --token-file FILE`."
    )
    try:
        b = api.bench(out, device=device, token=token, threads=threads, warn=warn)
    except RoboptError as exc:
        err = RoboptError(f"remote benchmark failed: {exc} {kept}")
        err.exit_code = exc.exit_code
        raise err from exc
    r, saved = b.result, b.saved
    host, lat, fid = r["remote"]["host"], r["latency"], r["fidelity"]
    if not as_json:
        click.echo(
            f"\nremote bench  {host}: p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
            f"({r['settings']['runs']} runs), fidelity {'PASS' if fid['passed'] else 'FAIL'}; "
            f"saved {saved}"
        )
    if not fid["passed"]:
        raise CheckFailedError(
            f"the engine failed its fidelity check on {host} (result in {saved}). {kept}"
        )
    return {"remote_benchmark": r, "remote_result_file": str(saved)}
