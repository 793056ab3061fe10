"""``robopt-compile``: the command line.

    robopt-compile SOURCE --target T [-o OUT]     compile (the default command)
    robopt-compile analyze SOURCE --target T      facts table (--json for machines)
    robopt-compile --list-targets                 boards, backends and what runs here

Module level imports only click and the error classes so ``--help`` starts fast on a robot;
everything heavy is imported by the command that needs it. Errors print one line and exit with
the code documented in ``robopt_compile.errors``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from robopt_compile import __version__
from robopt_compile.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    CheckFailedError,
    InputError,
    RoboptError,
)

PROG = "robopt-compile"
GROUP_FLAGS = {"--help", "-h", "--version"}

EXIT_CODES_HELP = """\b
Exit codes: 0 ok; 1 internal error (a bug: re-run with --debug and report it);
2 bad input (missing/corrupt model, unknown target, bad option, output exists);
3 backend or simulator missing, or engine build failed; 4 a numerical check failed, or a
bound did not hold with --fail-on-criteria."""


class _DefaultToCompile(click.Group):
    """A group whose default command is ``compile``: ``robopt-compile SOURCE ...`` works."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--list-targets" in args:
            args = ["targets", *[a for a in args if a != "--list-targets"]]
        elif args and args[0] not in self.commands and args[0] not in GROUP_FLAGS:
            args = ["compile", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(PROG, "SOURCE --target TARGET [-o OUT] [OPTIONS]")
        formatter.write_usage(PROG, "analyze SOURCE --target TARGET [--json]", prefix="       ")
        formatter.write_usage(PROG, "evaluate BUNDLE [--episodes N|--dataset F]", prefix="       ")
        formatter.write_usage(PROG, "report BUNDLE", prefix="       ")
        formatter.write_usage(PROG, "--list-targets [--json]", prefix="       ")
        formatter.write_usage(PROG, "sessions | session ID [--store S] [--json]", prefix="       ")
        formatter.write_usage(PROG, "store ls|show ID|lineage ID|gc|verify", prefix="       ")


@click.group(
    cls=_DefaultToCompile,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """Compile a robot policy into a deployable, benchmarked engine for a board.

    SOURCE is zoo:NAME, a .onnx file, a .pt2 torch.export program, or
    package.module:factory returning (torch module, example inputs).
    """


def _source_options(f: Any) -> Any:
    opts = [
        click.argument("source"),
        click.option(
            "--target",
            "-t",
            default="host",
            show_default=True,
            help="Board profile name (see --list-targets).",
        ),
        click.option(
            "--hwprofile",
            type=click.Path(path_type=Path),
            help="A board profile TOML file; overrides --target.",
        ),
        click.option(
            "--threads",
            type=int,
            default=None,
            help="CPU threads for the runtime (default: all cores).",
        ),
        click.option(
            "--dynamic-batch", is_flag=True, help="Export with a symbolic batch dimension."
        ),
        click.option("--opset", type=int, default=None, help="ONNX opset for torch export."),
        click.option(
            "--simplify",
            "simplify",
            default="default",
            show_default=True,
            help="Simplify tool: default (onnxscript), onnxscript, onnxslim, onnxsim or none.",
        ),
        click.option(
            "--dump-ir",
            type=click.Path(path_type=Path),
            help="Write the model after every pass into this folder.",
        ),
        click.option(
            "--no-parity-check",
            is_flag=True,
            help="Record but do not enforce export parity (not recommended).",
        ),
        click.option(
            "--reference-inputs",
            type=click.Path(path_type=Path),
            help="An .npz of real input samples keyed by input name, used for the reference "
            "data and every fidelity check (default: seeded random inputs).",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed for zoo weights and reference inputs.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _options(kw: dict[str, Any], **extra: Any):
    from robopt_compile.compile.options import CompileOptions

    return CompileOptions(
        target=kw["target"],
        hwprofile=kw["hwprofile"],
        threads=kw["threads"],
        dynamic_batch=kw["dynamic_batch"],
        opset=kw["opset"],
        simplify=kw["simplify"],
        dump_ir=kw["dump_ir"],
        check_parity=not kw["no_parity_check"],
        seed=kw["seed"],
        reference_inputs=kw["reference_inputs"],
        **extra,
    )


class _StageLog:
    """Progress on stderr: a line per stage with its time, live on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def __call__(self, stage: str, event: str, seconds: float) -> None:
        if event == "note":  # a warning the user must see even in --json mode
            click.echo(f"{PROG}: warning: {stage}", err=True)
            return
        if not self.enabled:
            return
        if event == "info":  # a choice robopt made for the user (not in --json mode)
            click.echo(f"{PROG}: {stage}", err=True)
            return
        if event == "tick":  # progress inside a long stage; ``seconds`` is the done fraction
            if self.tty:
                click.echo(f"\r  {stage:<60}", err=True, nl=False)
            elif int(seconds * 10) != int(getattr(self, "_last_tick", -1) * 10) or seconds >= 1:
                click.echo(f"  {stage}", err=True)
            self._last_tick = seconds
            return
        if event == "start":
            if self.tty:
                click.echo(f"  {stage:<10} ...", err=True, nl=False)
            return
        prefix = "\r" if self.tty else ""
        click.echo(f"{prefix}  {stage:<10} {seconds:7.2f} s", err=True)


@cli.command("compile")
@_source_options
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
    "--distill",
    metavar="steps=N[,lr=F,batch=N,loss=mse|kl]",
    help="After --prune channels/--low-rank: train the compressed model to match the original "
    "on the calibration inputs (unlabeled), to recover accuracy.",
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
    "--techniques", metavar="quantize,prune", help="Planner: techniques it may use (quantize)."
)
@click.option("--search-budget", metavar="10m", help="Planner: time for building and measuring.")
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
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
def compile_cmd(
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
    force: bool,
    **kw: Any,
) -> None:
    """Compile SOURCE into a deployable bundle at OUT."""
    if resume_id is not None:
        _resume(kw, resume_id, store_spec)
        return
    if out is None and not plan_only:
        raise click.UsageError("Missing option '-o' / '--output'.")
    out = out if out is not None else Path("plan-only")
    token = _device_token(device, token_file)  # before the build: fail fast on a bad file
    from robopt_compile.compile.options import CompressOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model
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
    compress = CompressOptions(
        prune=prune, prune_layers=prune_layer, low_rank=low_rank, distill=distill
    )
    opts = _options(
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
    if recipe is not None or plan_only or any(v is not None for v in planner_args.values()):
        _run_planner(
            kw, out, opts, planner_args, recipe, plan_only, max_accuracy_drop, force, store_spec
        )
        return
    from robopt_compile.compile.session import compile_session

    target = str(kw["hwprofile"]) if kw.get("hwprofile") else kw["target"]
    with compile_session(
        kw["source"], target, _ARGV, _StageLog(not kw["as_json"]), store_spec, _RESUMING
    ) as recorder:
        result = compile_model(kw["source"], out, opts, force=force, progress=recorder)
        recorder.finished(result)
    m = result.manifest
    failures = criteria_failures(result.report, result.evaluation)
    checked = engine_verdict(m)
    if require_engine_check and not checked["engine_checked"] and device is None:
        failures.append(f"engine not checked: {checked['checked']} (--require-engine-check)")
        fail_on_criteria = True
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "bundle": str(out),
                    "verdict": checked,
                    "manifest": m,
                    "report": result.report,
                    "evaluation": result.evaluation,
                    "criteria_failures": failures,
                    **_remote_after_build(out, device, token, kw["threads"], as_json=True),
                },
                default=str,
            )
        )
        _criteria_exit(failures, fail_on_criteria)
        return
    if "graphs" in m:  # a multi-graph bundle (a VLA): graphs, then fidelity in action terms
        _print_graph_bundle(out, m, result.report)
        _remote_after_build(out, device, token, kw["threads"], as_json=False)
        click.echo(f"\nnext: robopt-bench {out} --runs 20")
        _criteria_exit(failures, fail_on_criteria)
        return
    s = result.facts.get("summary", {})
    exp = m["parity"].get("export")
    eng = m["parity"]["engine"]
    rows = [
        ("bundle", str(out)),
        ("target", f"{m['target']['profile']} ({m['target']['description']})"),
        ("engine", f"{m['backend']} {m['precision']}"),
        ("inputs", ", ".join(f"{i['name']}{list(i['shape'])}:{i['dtype']}" for i in m["inputs"])),
        ("outputs", ", ".join(f"{o['name']}{list(o['shape'])}" for o in m["outputs"])),
    ]
    if exp:
        rows.append(
            (
                "export parity",
                f"cosine {exp['cosine']:.7f}, max abs err {exp['max_abs']:.2e} "
                f"({result.report['exporter']})",
            )
        )
    checked_here = checked["engine_checked"]
    rows.append(
        (
            "engine fidelity" if checked_here else "ONNX fidelity",
            f"cosine {eng['cosine']:.7f}, max abs err {eng['max_abs']:.2e} "
            f"({'pass' if eng['passed'] else 'FAIL'})",
        )
    )
    rows.append(("verdict", f"{checked['status'].upper()}: {checked['checked']}"))
    if s:
        rows.append(("model", _summary_line(s)))
    c = result.report.get("compression")
    if c:
        rows.extend(_compress_lines(c))
    q = result.report.get("quantization")
    if q:
        rows.append(("quantization", _quant_line(q)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    if result.evaluation:
        rows_e = evaluation_lines(result.evaluation)
        w = max(len(k) for k, _ in rows_e)
        click.echo("")
        for k, v in rows_e:
            click.echo(f"{k:<{w}}  {v}")
    _remote_after_build(out, device, token, kw["threads"], as_json=False)
    where = "" if checked_here else " (on the device)"
    click.echo(f"\nnext{where}: robopt-bench {out} --runs 500")
    _criteria_exit(failures, fail_on_criteria)


def _print_graph_bundle(out: Path, m: dict[str, Any], report: dict[str, Any]) -> None:
    """The human summary of a multi-graph bundle."""
    f = report.get("fidelity", {})
    rows = [
        ("bundle", str(out)),
        ("target", f"{m['target']['profile']} ({m['target']['description']})"),
        ("engine", f"{m['backend']} {m['precision']}, driver {m['driver']['kind']}"),
    ]
    checks = report.get("graph_checks") or {}
    for g in m["graphs"]:
        chk = checks.get(g["name"])
        how = ("checked through the actions" if chk is None
               else f"cosine vs torch {chk.get('cosine', float('nan')):.6f}")  # fmt: skip
        on = g.get("backend", m["backend"])
        rows.append((f"graph {g['name']}", f"{g['precision']}"
                     f"{'' if on == m['backend'] else ' on ' + on}, weights "
                     f"{g['weight_bytes'] / 2**20:.1f} MiB, {how}"))  # fmt: skip
    if "token_agreement" in f:
        rows.append(("action tokens", f"{f['token_agreement']:.1%} agree with torch fp32 on "
                     f"{f.get('observations')} held-out observations (bound "
                     f"{1 - f.get('max_token_disagreement', 0):.0%})"))  # fmt: skip
    else:
        rows.append(("action chunks", f"relative L2 {f.get('relative_l2', 0):.3g}, max abs "
                     f"{f.get('action_max_abs', 0):.3g} vs torch fp32 at fixed noise on "
                     f"{f.get('observations')} held-out observations"))  # fmt: skip
    l2 = f.get("action_l2", {})
    flips = f"; gripper flips {f['gripper_flips']}" if "gripper_flips" in f else ""
    rows.append(("action error", f"L2 mean {l2.get('mean', 0):.3g}, max {l2.get('max', 0):.3g}"
                 + flips))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _run_planner(
    kw: dict[str, Any],
    out: Path,
    opts: Any,
    args: dict[str, Any],
    recipe: Path | None,
    plan_only: bool,
    max_accuracy_drop: float | None,
    force: bool,
    store_spec: str | None = None,
) -> None:
    """Planner mode: propose plans, build and measure the promising ones, keep the best."""
    from dataclasses import replace

    from robopt_compile.plan.planner import OptimizationCriteria
    from robopt_compile.plan.recipe import load_recipe
    from robopt_compile.plan.search import plan_and_search

    given = {k: v for k, v in args.items() if v is not None}
    crit_kw = {**(load_recipe(recipe) if recipe else {}), **given}
    if max_accuracy_drop is not None:
        crit_kw["max_accuracy_drop"] = max_accuracy_drop
    criteria = OptimizationCriteria(**crit_kw)
    source = kw["source"]
    from robopt_compile.evaluate import task_for_source

    if opts.quant.calibration is None and task_for_source(source):
        # A trained policy with a task: calibrate on what it sees doing the task.
        opts = replace(opts, quant=replace(opts.quant, calibration="task"))
    if criteria.max_accuracy_drop is not None and opts.quant.max_drop is None:
        opts = replace(opts, quant=replace(opts.quant, max_drop=criteria.max_accuracy_drop))
    backends = (opts.backend,) if opts.backend is not None else None
    as_json = kw["as_json"]
    log = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
    from robopt_compile.store import open_store

    store = open_store(store_spec)  # sessions, measurements and the planner's memory
    try:
        r = plan_and_search(
            source, out, opts, criteria, plan_only=plan_only, backends=backends, force=force,
            log=log, store=store,
        )  # fmt: skip
    finally:
        store.close()
    _report_plan(r, as_json, plan_only)


def _report_plan(r: Any, as_json: bool, plan_only: bool = False) -> None:
    """The search's result on stdout; exit 4 when a search kept no plan."""
    if as_json:
        best = r.best.bundle if r.best else None
        click.echo(json.dumps({"bundle": best, **r.to_json()}, default=str))
    else:
        click.echo(format_plan(r, r.criteria))
    if not plan_only and r.best is None:
        raise CheckFailedError(
            f"no plan met every bound ({len(r.measured)} measured, {len(r.failed)} failed); "
            "nothing was written. Loosen a bound, allow more --techniques or --search-budget."
        )


# The command line of this process (main), recorded with a compile's session for --resume;
# and the session a --resume continues in (set while the recorded command re-runs).
_ARGV: list[str] | None = None
_RESUMING: Any = None


def _resume(kw: dict[str, Any], resume_id: str, store_spec: str | None) -> None:
    """``--resume ID``: a planner search or a plain compile goes on where it stopped.

    A compile re-runs its recorded command in the same session; the stages it finished
    before come back from the build cache.
    """
    global _RESUMING
    from robopt_compile.compile.session import compile_command
    from robopt_compile.plan.search import RUN_KEY, resume_search
    from robopt_compile.store import StoreError, open_store

    as_json = kw["as_json"]
    store = open_store(store_spec, create=False)
    try:
        rec = store.get_session(resume_id)
        if rec.source != kw["source"]:
            raise InputError(
                f"session {rec.id[:12]} optimized {rec.source}, not {kw['source']}: give the "
                "same SOURCE (its other settings come from the session)."
            )
        if RUN_KEY in (rec.criteria or {}):
            log = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
            r = resume_search(store, rec.id, log=log)
            store.close()
            _report_plan(r, as_json)
            return
        cmd = compile_command(rec)
        if cmd is None:
            raise InputError(
                f"session {rec.id[:12]} did not record its command (it was not started by "
                f"robopt-compile); run the compile again without --resume."
            )
        session = store.resume_session(rec.id)  # refuses a running or finished session
    except BaseException:
        store.close()
        raise
    argv, cwd = cmd
    here = os.getcwd()
    if not as_json:
        click.echo(f"{PROG}: resuming session {rec.id[:12]}: {PROG} {' '.join(argv)}", err=True)
    _RESUMING = session
    try:
        if cwd != here:
            os.chdir(cwd)  # the recorded paths are relative to where it was started
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    finally:
        _RESUMING = None
        os.chdir(here)
        with contextlib.suppress(StoreError, OSError):
            if session.record().state == "running":  # the re-run never reached its compile
                session.fail("the resumed command stopped before compiling")
        store.close()


def format_plan(r: Any, criteria: Any) -> str:
    """The plans, what was measured, the choice and the Pareto front, for people."""
    lines = ["plans (best predicted first):"]
    for d in r.decisions:
        lines.append(
            f"  {'+' if d.verdict == 'propose' else '-'} {d.candidate.label:<32} {d.reason}"
        )
    if r.estimate_only:
        lines.append(f"  (estimates only, cannot run here: {', '.join(r.estimate_only)})")
    if r.measured or r.failed:
        pct = criteria.latency_percentile
        lines += ["", f"measured here ({pct} latency, accuracy drop against fp32):"]
        notes = {n["plan"]: n for n in r.choice_notes}
        for m in r.measured:
            n = notes.get(m.candidate.label, {})
            drop = "-" if m.accuracy_drop is None else f"{m.accuracy_drop:.4g}"
            verdict = "meets the bounds" if n.get("meets_bounds") else "; ".join(
                n.get("violations", []))  # fmt: skip
            lines.append(
                f"  {m.candidate.label:<32} {m.latency_ms[pct]:9.4f} ms  drop {drop:<8} "
                f"{m.size_mb:8.3f} MB  {verdict}"
            )
        for f in r.failed:
            lines.append(f"  {f['plan']:<32} failed: {f['error']}")
        judged = sorted({m.accuracy_metric for m in r.measured if m.accuracy_metric})
        if judged:
            lines.append(f"  accuracy drop measured as: {', '.join(judged)}")
        lines.append(f"  search stopped: {r.stopped} ({r.seconds:.0f} s)")
        if r.front:
            lines.append("  Pareto front (latency vs accuracy drop): "
                         + ", ".join(m.candidate.label for m in r.front))  # fmt: skip
    if r.best is not None:
        lines += ["", f"chosen: {r.best.candidate.label} -> {r.best.bundle}"]
    if getattr(r, "session_id", None):
        lines.append(f"session {r.session_id[:12]} (robopt-compile session {r.session_id[:12]})")
    return "\n".join(lines)


def _device_token(device: str | None, token_file: Path | None) -> str | None:
    """The --device server's token (read before the build), or None without --device."""
    if (device is None) != (token_file is None):
        raise InputError("--device and --token-file go together: give both or neither.")
    if token_file is None:
        return None
    from robopt_compile.bench.remote import read_token_file

    return read_token_file(token_file, warn=lambda m: click.echo(f"{PROG}: warning: {m}", err=True))


def _remote_after_build(
    out: Path, device: str | None, token: str | None, threads: int | None, as_json: bool
) -> dict[str, Any]:
    """With --device: benchmark the new bundle on the robot, save the result in
    OUT/results/, print one summary line (tables only); the JSON keys to add.

    Raises:
        RoboptError: the remote run failed (same exit code as robopt-bench would give); the
            message says the bundle was written and kept.
    """
    if device is None or token is None:
        return {}
    from robopt_compile.bench.remote import remote_benchmark, save_remote_result

    kept = (
        f"The bundle {out} was written and kept; benchmark it later with "
        f"`robopt-bench {out} --device {device} --token-file FILE`."
    )
    try:
        r = remote_benchmark(
            out,
            device,
            token,
            threads=threads,
            on_retry=lambda m: click.echo(f"{PROG}: warning: {m}", err=True),
        )
        saved = save_remote_result(out, r)
    except RoboptError as exc:
        err = RoboptError(f"remote benchmark failed: {exc} {kept}")
        err.exit_code = exc.exit_code
        raise err from exc
    _regenerate_report(out)  # the remote figures join report.html
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


def engine_verdict(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the compile checked: ``pass`` when the engine itself ran and matched the source,
    ``pending-device`` when only its ONNX could be checked here (the engine is built or run on
    the device, where robopt-bench checks it). A failed check never gets this far (exit 4)."""
    eng = (manifest.get("parity") or {}).get("engine") or {}
    if "graphs" in manifest or eng.get("engine_checked", True):
        text = eng.get("checked") or f"{manifest['backend']} engine(s) checked here"
        return {"status": "pass", "engine_checked": True, "checked": text}
    text = eng.get("checked") or "ONNX checked in ONNX Runtime; engine checked on the device"
    return {"status": "pending-device", "engine_checked": False, "checked": text}


def criteria_failures(report: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    """Every bound the user set that did not hold (for --fail-on-criteria)."""
    out = []
    q = report.get("quantization") or {}
    if q.get("rolled_back"):
        out.append(f"accuracy guard rolled back to fp32: {q.get('rollback_reason')}")
    for step in (report.get("compression") or {}).get("steps", []):
        if step.get("rolled_back"):
            out.append(f"compression: {step.get('rollback_reason', 'a step was rolled back')}")
    crit = (evaluation or {}).get("criteria")
    if crit and not crit["passed"]:
        out.extend(f"closed loop: {f}" for f in crit["failures"])
    return out


def _criteria_exit(
    failures: list[str], fail_on_criteria: bool, kept: str = "the bundle was written"
) -> None:
    if not failures:
        return
    for f in failures:
        click.echo(f"{PROG}: criteria: {f}", err=True)
    if fail_on_criteria:
        raise CheckFailedError(f"{len(failures)} bound(s) did not hold (above); {kept}.")


def evaluation_lines(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """Closed-loop figures as table rows: one per engine, then the paired verdicts."""
    rows = [
        (
            "task",
            f"{ev['task']['name']}: {ev['episodes']} episodes, seeds "
            f"{ev['seeds'][0]}..{ev['seeds'][-1]}; success = {ev['task']['success_rule']}",
        )
    ]
    for e in ev["engines"]:
        r, s = e["return"], e["success"]
        lat = e.get("latency_ms") or {}
        rows.append(
            (
                e["label"],
                f"return {r['mean']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}], success "
                f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"
                + (f", {lat['p50']:.3f} ms/step" if lat.get("p50") is not None else ""),
            )
        )
    for p in ev["paired"]:
        d = p["return_diff"] if p["metric"] == "return" else p["success_diff"]
        unit = "" if p["metric"] == "return" else " (success fraction)"
        rows.append(
            (
                "paired difference",
                f"{p['metric']} {d['mean']:+.3f}{unit} [{d['ci95'][0]:+.3f}, "
                f"{d['ci95'][1]:+.3f}], p={p['p_value']:.3g}: {p['verdict']}",
            )
        )
    crit = ev.get("criteria")
    if crit:
        rows.append(
            ("criteria", "PASS" if crit["passed"] else "FAIL: " + "; ".join(crit["failures"]))
        )
    return rows


def _quant_line(q: dict[str, Any]) -> str:
    f = q["final"]
    data = q["data"]
    cl = f.get("closed_loop")
    if cl:  # the guard ran the task itself
        line = (
            f"{q['pass']}: closed-loop {cl['metric'].removeprefix('task:')} drop "
            f"{f['drop']:.4g} (bound {q['max_accuracy_drop']}) on {cl['episodes']} guard "
            f"episodes of {cl['task']}; output cosine {f['cosine']:.5f} on {f['samples']} "
            "held-out samples"
        )
    else:
        line = (
            f"{q['pass']}: held-out {q['metric']} {f['drop']:.4g} (bound "
            f"{q['max_accuracy_drop']}), cosine {f['cosine']:.5f} on {f['samples']} held-out "
            "samples"
        )
    mp = q.get("mixed_precision")
    if mp:
        line += f"; mixed precision kept {len(mp['fp32_nodes'])} layers fp32"
    if q.get("rolled_back"):
        line += "; ROLLED BACK to fp32"
    if data.get("random"):
        line += " [random data]"
    return line


def _compress_lines(c: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for step in c["steps"]:
        f = step["figures"]
        rep = step.get("report") or {}
        tot = rep.get("totals", {})
        what = []
        if tot.get("macs_before"):
            what.append(f"MACs {tot['macs_before'] / 1e9:.3f} -> {tot['macs_after'] / 1e9:.3f} G")
        if tot.get("params_before"):
            what.append(
                f"params {tot['params_before'] / 1e6:.2f} -> {tot['params_after'] / 1e6:.2f} M"
            )
        line = ", ".join([*what, f"held-out {c['metric']} {f['drop']:.4g}"])
        if f.get("centred_cosine") is not None:
            line += f", centred cosine {f['centred_cosine']:.4f}"
        d = step.get("distillation")
        if d:
            b = step["figures_before_distillation"]
            line += f" (distilled {d['steps']} steps, from {b['drop']:.4g})"
        if step.get("rolled_back"):
            line += "; ROLLED BACK"
        if rep.get("note"):
            line += f" [{rep['note'].split('.')[0]}]"
        rows.append((step["pass"], line))
    return rows


def _summary_line(s: dict[str, Any]) -> str:
    parts = []
    if "macs" in s:
        parts.append(f"{s['macs'] / 1e9:.3f} GMAC")
    if "params" in s:
        parts.append(f"{s['params'] / 1e6:.2f} M params")
    if "estimated_latency_ms" in s:
        parts.append(f"roofline estimate {s['estimated_latency_ms']:.2f} ms")
    return ", ".join(parts)


@cli.command("analyze")
@_source_options
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    help="Precision the roofline estimate assumes.",
)
@click.option(
    "--top",
    type=int,
    default=10,
    show_default=True,
    help="How many nodes to list by estimated time.",
)
def analyze_cmd(precision: str, top: int, **kw: Any) -> None:
    """Print facts about SOURCE for a target: ops, params, FLOPs, memory, roofline, support."""
    from robopt_compile.compile import analysis
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.compile.resolve import build_passes, check_options, resolve_profile
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner

    opts = _options(kw, precision=precision)
    log = _StageLog(not kw["as_json"])
    profile = resolve_profile(opts)
    check_options(opts)
    log("export", "start", 0)
    started = time.perf_counter()
    src = load_source(
        kw["source"],
        dynamic_batch=opts.dynamic_batch,
        opset=opts.opset,
        seed=opts.seed,
        check_parity=opts.check_parity,
        reference_inputs=opts.reference_inputs,
    )
    log("export", "done", time.perf_counter() - started)
    instruments = [DumpIRInstrument(opts.dump_ir)] if opts.dump_ir else []
    model = PassRunner(instruments).run(build_passes(opts), src.model)
    facts = analysis.analyze(
        model, profile, precision=precision, threads=opts.threads or profile.cpu_cores
    )
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "source": kw["source"],
                    "target": profile.name,
                    "parity": src.parity,
                    "facts": facts,
                },
                default=str,
            )
        )
        return
    click.echo(f"{kw['source']} on {profile.name} ({profile.description})")
    click.echo(analysis.format_table(facts, top=top))


@cli.command("quant-report")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def quant_report_cmd(bundle_dir: Path, as_json: bool, debug: bool) -> None:
    """Per-layer quantization table of a bundle: precision, sensitivity, error contribution."""
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.errors import InputError

    manifest = load_manifest(bundle_dir, verify=False)
    try:
        report = json.loads((bundle_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{bundle_dir}/report.json cannot be read ({exc}).") from exc
    q = report.get("quantization")
    if not q:
        raise InputError(
            f"{bundle_dir} was compiled at {manifest['precision']} without quantization; "
            "nothing to report."
        )
    if as_json:
        click.echo(json.dumps(q, default=str))
        return
    click.echo(f"{bundle_dir}: {manifest['backend']} {manifest['precision']} "
               f"(requested {q['requested_precision']}), {_quant_line(q)}")  # fmt: skip
    if q.get("data_note"):
        click.echo(f"note: {q['data_note']}")
    if q.get("rolled_back"):
        click.echo(f"rolled back: {q['rollback_reason']}")
    click.echo(f"full quantization: held-out {q['metric']} {q['full_quantization']['drop']:.4g}")
    layers = q.get("layers", [])
    measured = any(r.get("sensitivity") is not None for r in layers)
    click.echo(f"\n{'layer':<40} {'op':<10} {'precision':<9} {'sensitivity':>12} "
               f"{'drop if only this fp32':>22}")  # fmt: skip
    rows = sorted(layers, key=lambda r: -(r.get("sensitivity") or 0.0))
    for r in rows:
        sens = "" if r.get("sensitivity") is None else f"{r['sensitivity']:.4g}"
        alone = (
            ""
            if r.get("drop_with_only_this_fp32") is None
            else (f"{r['drop_with_only_this_fp32']:.4g}")
        )
        click.echo(f"{r['node'][:40]:<40} {r['op_type']:<10} {r['precision']:<9} {sens:>12} "
                   f"{alone:>22}")  # fmt: skip
    if not measured:
        click.echo("\nsensitivity not measured (the bound was met with every layer quantized); "
                   "recompile with --measure-sensitivity to measure it.")  # fmt: skip


@cli.command("report")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--profile-layers/--no-profile-layers",
    default=True,
    show_default=True,
    help="Measure per-layer times first (results/layers.json) when they are missing and the "
    "engine runs here.",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Profiled runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report_cmd(
    bundle_dir: Path, profile_layers: bool, runs: int, as_json: bool, debug: bool
) -> None:
    """Write BUNDLE_DIR/report.html (self-contained, offline) and report.md (for CI)."""
    from robopt_compile.report import refresh_reports

    paths = refresh_reports(
        bundle_dir, profile_layers, runs, lambda m: click.echo(f"{PROG}: warning: {m}", err=True)
    )
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in paths.items()}))
        return
    for k, v in paths.items():
        click.echo(f"{k:<6} {v}")


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def targets_cmd(as_json: bool, debug: bool) -> None:
    """List board profiles, their backends and whether each runs on this machine."""
    from robopt_compile.compile.resolve import target_status
    from robopt_compile.hwprofiles import load_profile, profile_aliases, profile_names
    from robopt_compile.targets import TARGETS, get_backend

    avail = {}
    for b in TARGETS:
        ok, why = get_backend(b).availability()
        avail[b] = {"available": ok, "reason": why}
    rows = []
    aliases = profile_aliases()
    for name in profile_names():
        p = load_profile(name)
        rows.append(
            {
                "name": name,
                "aliases": sorted(a for a, n in aliases.items() if n == name),
                "description": p.description,
                "arch": p.arch,
                "backends": {b: target_status(p, b) for b in p.backends},
                "precisions": list(p.precisions),
            }
        )
    if as_json:
        click.echo(json.dumps({"targets": rows, "backends": avail}))
        return
    click.echo(f"{'target':<24} {'arch':<8} {'precisions':<18} backends (build here / run here)")
    for r in rows:
        bs = ", ".join(
            f"{b} ({v['build']}/{'yes' if v['run'] else 'no'})" for b, v in r["backends"].items()
        )
        click.echo(f"{r['name']:<24} {r['arch']:<8} {'/'.join(r['precisions']):<18} {bs}")
        click.echo(f"{'':<24} {r['description']}")
        if r["aliases"]:
            click.echo(f"{'':<24} also: {', '.join(r['aliases'])}")
        for b, v in r["backends"].items():
            if not v["run"]:
                click.echo(f"{'':<24}   {b}: {v['reason']}")
    missing = {b: v["reason"] for b, v in avail.items() if not v["available"]}
    for b, why in missing.items():
        click.echo(f"\n{b} unavailable here: {why}")


@cli.command("evaluate")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--task", help="Simulated task (default: the zoo model's own task).")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate_cmd(
    bundle_dir: Path,
    task: str | None,
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
    import contextlib

    from robopt_compile import evaluate as ev
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.bench.results import save_result
    from robopt_compile.tasks import get_task

    manifest = load_manifest(bundle_dir, verify=False)
    ref_spec = reference or manifest.get("model", {}).get("source")
    if not ref_spec or (
        not ev.looks_like_bundle(ref_spec)
        and ref_spec.endswith(".onnx")
        and not Path(ref_spec).exists()
    ):
        raise InputError(
            f"{bundle_dir}: its source {ref_spec!r} is not available here; pass --reference "
            "(the original bundle or model)."
        )
    task_name = None
    if dataset is None:
        task_name = task or ev.task_for_manifest(manifest) or ev.task_for_source(ref_spec)
        if task_name is None:
            raise InputError(
                f"{bundle_dir}: no task is known for this model; pass --task (see "
                "`robopt-compile evaluate --help`) or --dataset for open loop."
            )
    log = _StageLog(not as_json)
    label = f"optimized {manifest['precision']} ({manifest['backend']})"
    with contextlib.ExitStack() as stack:
        log("load reference", "start", 0.0)
        t0 = time.perf_counter()
        ref = stack.enter_context(ev.any_policy(ref_spec, threads))
        log("load reference", "done", time.perf_counter() - t0)
        cands = [
            (
                label,
                stack.enter_context(ev.bundle_policy(bundle_dir, threads)),
                ev.bundle_meta(bundle_dir),
            )
        ]
        for other in compare:
            m = load_manifest(other, verify=False)
            cands.append(
                (
                    f"{other.name}: {m['precision']} ({m['backend']})",
                    stack.enter_context(ev.bundle_policy(other, threads)),
                    ev.bundle_meta(other),
                )
            )
        if dataset is not None:
            names = [i["name"] for i in manifest["inputs"]]
            dtypes = {i["name"]: i["dtype"] for i in manifest["inputs"]}
            result = ev.open_loop(dataset, ref, cands, names, dtypes, gripper_dim)
            path = save_result(bundle_dir, f"openloop-{dataset.stem}", result)
        else:
            assert task_name is not None
            t = stack.enter_context(get_task(task_name))
            ev.check_policy_fits(t, manifest["inputs"], str(bundle_dir))
            if record is not None:
                info = ev.record_episodes(t, ref, ev.seeds_for(episodes, seed), record)
                click.echo(
                    json.dumps(info)
                    if as_json
                    else f"recorded {info['episodes']} episodes, {info['steps']} steps -> {record}"
                )
                return
            total = episodes * (1 + len(cands))
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                log(f"episode {done[0]}/{total} on {task_name}", "tick", done[0] / total)

            result = ev.closed_loop(
                t, ref, cands, episodes=episodes, seed=seed, metric=metric,
                reference_label=f"original fp32 ({ref_spec})",
                criteria=ev.Criteria(max_return_drop, max_success_drop), progress=tick,
            )  # fmt: skip
            path = save_result(bundle_dir, f"eval-{task_name}", result)
    _regenerate_report(bundle_dir)
    failures = []
    crit = result.get("criteria")
    if crit and not crit["passed"]:
        failures = [f"closed loop: {f}" for f in crit["failures"]]
    if as_json:
        click.echo(json.dumps({**result, "path": str(path)}, default=str))
    elif result["kind"] == "closed_loop":
        rows = evaluation_lines(result)
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            click.echo(f"{k:<{w}}  {v}")
        click.echo(f"saved {path}")
    else:
        click.echo(format_open_loop(result))
        click.echo(f"saved {path}")
    _criteria_exit(failures, fail_on_criteria, "the results were saved")


def format_open_loop(r: dict[str, Any]) -> str:
    lines = [f"open loop on {r['dataset']}: {r['samples']} steps"]
    for e in r["engines"]:
        mae = ", ".join(f"{v:.3g}" for v in e["per_dim"]["mae"])
        lines.append(
            f"  {e['label']}: L2 mean {e['l2']['mean']:.4g} "
            f"(relative {e['l2']['relative_mean']:.3%}), "
            f"p95 {e['l2']['p95']:.4g}, max deviation {e['max_deviation']:.4g}; MAE per dim [{mae}]"
            + (
                f"; gripper flips {e['gripper_flips']}"
                if e.get("gripper_flips") is not None
                else ""
            )
        )
    return "\n".join(lines)


def _regenerate_report(bundle_dir: Path) -> None:
    """Rewrite report.html/report.md with the new results (never fails the command)."""
    from robopt_compile.report import refresh_reports

    try:
        refresh_reports(bundle_dir, warn=lambda m: click.echo(f"{PROG}: warning: {m}", err=True))
    except Exception as exc:  # the measurement is saved; a report glitch must not lose it
        click.echo(f"{PROG}: warning: report not regenerated: {exc}", err=True)


def _store_options(f: Any) -> Any:
    """``--store``, ``--json`` and ``--debug`` for the store and session commands."""
    opts = [
        click.option(
            "--store",
            "store_spec",
            metavar="PATH|URL",
            help="Store folder, .db file or sqlite:///abs/path/store.db (default: $ROBOPT_STORE, "
            "else ~/.cache/robopt/store).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _open_existing_store(spec: str | None):
    from robopt_compile.store import open_store

    return open_store(spec, create=False)


def _short_time(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _compact(data: Any, width: int = 48) -> str:
    """A JSON object as ``k=v k=v`` on one line, cut to ``width`` characters."""
    if isinstance(data, dict):
        text = " ".join(
            f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, dict | list) else v}"
            for k, v in data.items()
        )
    else:
        text = json.dumps(data, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


@cli.command("sessions")
@_store_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def sessions_cmd(store_spec: str | None, as_json: bool, debug: bool, limit: int) -> None:
    """List optimization sessions, newest first."""
    with _open_existing_store(store_spec) as store:
        rows = store.sessions(limit=limit)
    if as_json:
        click.echo(json.dumps({"sessions": [r.to_dict() for r in rows]}))
        return
    if not rows:
        click.echo("no sessions yet")
        return
    click.echo(
        f"{'id':<12} {'state':<11} {'created':<19} {'source':<24} {'target':<16} steps  summary"
    )
    for r in rows:
        click.echo(
            f"{r.id[:12]:<12} {r.state:<11} {_short_time(r.created):<19} "
            f"{(r.source or '-')[:24]:<24} {(r.target or '-')[:16]:<16} "
            f"{f'{r.steps_done}/{r.steps_total}':<6} {_compact(r.error or r.summary)}"
        )


@cli.command("session")
@click.argument("session_id")
@_store_options
def session_cmd(session_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Show one session (an id or an unambiguous prefix): steps, results and events."""
    with _open_existing_store(store_spec) as store:
        rec = store.get_session(session_id)
        steps = store.steps(rec.id)
        results = store.results(rec.id)
        events = store.events(rec.id)
        log = store.event_log_path(rec.id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "session": rec.to_dict(),
                    "steps": [s.to_dict() for s in steps],
                    "results": [r.to_dict() for r in results],
                    "events": [e.to_dict() for e in events],
                    "event_log": str(log),
                }
            )
        )
        return
    click.echo(f"session  {rec.id}  {rec.state}")
    click.echo(f"source   {rec.source or '-'}  ->  target {rec.target or '-'}")
    click.echo(f"created  {_short_time(rec.created)}  updated {_short_time(rec.updated)}")
    click.echo(f"process  pid {rec.pid or '-'} on {rec.host or '-'}")
    if rec.criteria:
        click.echo(f"criteria {_compact(rec.criteria, 200)}")
    if rec.summary:
        click.echo(f"summary  {_compact(rec.summary, 200)}")
    if rec.error:
        click.echo(f"error    {rec.error}")
    click.echo(f"\nsteps ({rec.steps_done} done of {rec.steps_total})")
    for s in steps:
        out = (s.output_hash or "-")[:12]
        click.echo(f"  {s.index:>3} {s.name:<20} {s.state:<12} out {out:<12} {s.error or ''}")
    if results:
        click.echo("\nresults")
        for r in results:
            where = "-" if r.step_index is None else str(r.step_index)
            click.echo(f"  step {where:>3} {r.kind:<20} {_compact(r.data, 80)}")
    click.echo(f"\nevents ({len(events)}; log {log})")
    for e in events:
        click.echo(f"  {e.seq:>4} {_short_time(e.time)} {e.type:<14} {_compact(e.payload, 80)}")


@cli.group("store")
def store_group() -> None:
    """The model store: models, lineage, artifacts (ls, show, lineage, gc, verify)."""


@store_group.command("ls")
@_store_options
@click.option("--artifacts", is_flag=True, help="List stored objects instead of models.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def store_ls_cmd(
    store_spec: str | None, as_json: bool, debug: bool, artifacts: bool, limit: int
) -> None:
    """List models (or, with --artifacts, objects), newest first."""
    with _open_existing_store(store_spec) as store:
        if artifacts:
            arts = store.artifacts(limit=limit)
            if as_json:
                click.echo(json.dumps({"artifacts": [a.to_dict() for a in arts]}))
                return
            click.echo(f"{'sha256':<16} {'kind':<6} {'size':>12} created")
            for a in arts:
                click.echo(f"{a.sha256[:16]} {a.kind:<6} {a.size:>12} {_short_time(a.created)}")
            return
        models = store.models(limit=limit)
    if as_json:
        click.echo(json.dumps({"models": [m.to_dict() for m in models]}))
        return
    if not models:
        click.echo("no models yet")
        return
    click.echo(f"{'id':<12} {'name':<24} {'kind':<8} {'parent':<12} {'artifact':<12} created")
    for m in models:
        click.echo(
            f"{m.id[:12]} {m.name[:24]:<24} {(m.source_kind or '-')[:8]:<8} "
            f"{(m.parent_id or '-')[:12]:<12} {(m.artifact or '-')[:12]:<12} "
            f"{_short_time(m.created)}"
        )


@store_group.command("show")
@click.argument("item_id")
@_store_options
def store_show_cmd(item_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Show a model (id or prefix) or, failing that, an artifact (sha256 or prefix)."""
    from robopt_compile.store import UnknownIdError

    with _open_existing_store(store_spec) as store:
        try:
            data: dict[str, Any] = {"model": store.get_model(item_id).to_dict()}
        except UnknownIdError as model_exc:
            try:
                art = store.resolve_artifact(item_id)
            except UnknownIdError:
                raise model_exc from None
            data = {"artifact": art.to_dict(), "path": str(store.object_path(art.sha256))}
            if art.kind == "tree":
                data["files"] = store.tree_manifest(art.sha256)["files"]
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in (data.get("model") or data["artifact"]).items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{key:<12} {shown if shown is not None else '-'}")
    if "path" in data:
        click.echo(f"{'path':<12} {data['path']}")
    for f in data.get("files", []):
        click.echo(f"  {f['sha256'][:12]} {f['size']:>12} {f['path']}")


@store_group.command("lineage")
@click.argument("model_id")
@_store_options
def store_lineage_cmd(model_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """The chain of models from the original source to MODEL_ID, with the step of each edge."""
    with _open_existing_store(store_spec) as store:
        chain = store.lineage(model_id)
    if as_json:
        click.echo(json.dumps({"lineage": chain}))
        return
    for i, link in enumerate(chain):
        m, how = link["model"], link["derived_by"]
        if how:
            step = how.get("pass") or how.get("step") or "?"
            sess = (how.get("session_id") or "-")[:12]
            click.echo(f"  | {step} (session {sess}, step {how.get('step_index')})")
        arrow = "" if i == 0 else "  v\n"
        click.echo(f"{arrow}{m['id'][:12]} {m['name']} [{m['source_kind'] or '-'}] "
                   f"{m['source'] or ''}".rstrip())  # fmt: skip


@store_group.command("gc")
@_store_options
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Keep objects younger than this many seconds (a running compile may be about to "
    "reference them).",
)
@click.option(
    "--cache-max-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="First forget the least recently used build-cache entries until the cache fits in "
    "this many MB (0: forget them all); then remove what nothing references.",
)
def store_gc_cmd(
    store_spec: str | None,
    as_json: bool,
    debug: bool,
    dry_run: bool,
    grace: float,
    cache_max_mb: float | None,
) -> None:
    """Remove objects nothing references (never those of a running session)."""
    trim = None
    with _open_existing_store(store_spec) as store:
        if cache_max_mb is not None:
            trim = store.cache_trim(int(cache_max_mb * 1e6), dry_run=dry_run)
        out = store.gc(dry_run=dry_run, grace_s=grace)
    if trim is not None:
        out["cache"] = trim
    if as_json:
        click.echo(json.dumps(out))
        return
    verb = "would remove" if dry_run else "removed"
    if trim is not None:
        click.echo(
            f"build cache: {'would forget' if dry_run else 'forgot'} {len(trim['removed'])} "
            f"least recently used entries; {trim['kept']} kept "
            f"({trim['kept_bytes'] / 1e6:.1f} MB)"
            + (" (a dry run counts their objects as still referenced)" if dry_run else "")
        )
    click.echo(
        f"{verb} {len(out['removed'])} objects ({out['bytes']} bytes) and "
        f"{len(out['tmp_removed'])} temporary files; {out['kept']} referenced objects kept"
    )
    for sha in out["removed"]:
        click.echo(f"  {sha}")


@store_group.command("verify")
@_store_options
def store_verify_cmd(store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Re-hash every object and check every reference; exit 4 on any problem."""
    with _open_existing_store(store_spec) as store:
        rep = store.verify()
    if as_json:
        click.echo(json.dumps(rep))
    else:
        click.echo(
            f"{rep['checked']} objects ({rep['bytes']} bytes) re-hashed; database "
            f"{rep['integrity']}; {len(rep['orphans'])} unreferenced files, {len(rep['tmp'])} "
            "temporary files (store gc removes them)"
        )
        for m in rep["mismatched"]:
            click.echo(f"MISMATCH {m['sha256']} hashes to {m['actual']} ({m['path']})")
        for sha in rep["missing"]:
            click.echo(f"MISSING  {sha} (catalogued, no file)")
        for d in rep["dangling"]:
            click.echo(f"DANGLING {d['sha256'] or '-'} referenced by {d['where']}")
    if not rep["ok"]:
        parts = [f"{len(rep[k])} {k}" for k in ("mismatched", "missing", "dangling") if rep[k]] + (
            [f"database {rep['integrity']}"] if rep["integrity"] != "ok" else []
        )
        raise CheckFailedError(f"store {rep['store']} failed verification: {', '.join(parts)}.")


def main(argv: list[str] | None = None) -> None:
    global _ARGV
    args = list(sys.argv[1:] if argv is None else argv)
    _ARGV = args
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except RoboptError as exc:
        if debug:
            raise
        click.echo(f"{PROG}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted; no output was written", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        click.echo(
            f"{PROG}: internal error: {type(exc).__name__}: {msg} "
            "(re-run with --debug and report it)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
