"""``robopt-compile``: the command line.

    robopt-compile SOURCE --target T [-o OUT]     compile (the default command)
    robopt-compile analyze SOURCE --target T      facts table (--json for machines)
    robopt-compile --list-targets                 boards, backends and what runs here

Module level imports only click and the error classes so ``--help`` starts fast on a robot;
everything heavy is imported by the command that needs it. Errors print one line and exit with
the code documented in ``robopt_compile.errors``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from robopt_compile import __version__
from robopt_compile.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, RoboptError

PROG = "robopt-compile"
GROUP_FLAGS = {"--help", "-h", "--version"}

EXIT_CODES_HELP = """\b
Exit codes: 0 ok; 1 internal error (a bug: re-run with --debug and report it);
2 bad input (missing/corrupt model, unknown target, bad option, output exists);
3 backend missing or engine build failed; 4 a numerical check failed."""


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
        formatter.write_usage(PROG, "--list-targets [--json]", prefix="       ")


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
    from robopt_compile.pipeline import CompileOptions

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
    required=True,
    help="Bundle folder to write (refused if it exists, unless --force).",
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
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
def compile_cmd(
    out: Path,
    backend: str | None,
    precision: str,
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
    force: bool,
    **kw: Any,
) -> None:
    """Compile SOURCE into a deployable bundle at OUT."""
    from robopt_compile.compress import CompressOptions
    from robopt_compile.pipeline import compile_model
    from robopt_compile.quantize import QuantOptions

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
    )
    result = compile_model(
        kw["source"], out, opts, force=force, progress=_StageLog(not kw["as_json"])
    )
    m = result.manifest
    if kw["as_json"]:
        click.echo(
            json.dumps({"bundle": str(out), "manifest": m, "report": result.report}, default=str)
        )
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
    checked_here = eng.get("engine_checked", True)
    rows.append(
        (
            "engine fidelity" if checked_here else "ONNX fidelity",
            f"cosine {eng['cosine']:.7f}, max abs err {eng['max_abs']:.2e} "
            f"({'pass' if eng['passed'] else 'FAIL'})"
            + ("" if checked_here else "; engine not run here, robopt-bench checks it on device"),
        )
    )
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
    where = "" if checked_here else " (on the device)"
    click.echo(f"\nnext{where}: robopt-bench {out} --runs 500")


def _quant_line(q: dict[str, Any]) -> str:
    f = q["final"]
    data = q["data"]
    line = (
        f"{q['pass']}: held-out {q['metric']} {f['drop']:.4g} (bound {q['max_accuracy_drop']}), "
        f"cosine {f['cosine']:.5f} on {f['samples']} held-out samples"
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
    from robopt_compile import analysis
    from robopt_compile.frontend import load_source
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner
    from robopt_compile.pipeline import build_passes, check_options, resolve_profile

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


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def targets_cmd(as_json: bool, debug: bool) -> None:
    """List board profiles, their backends and whether each runs on this machine."""
    from robopt_compile.hwprofiles import load_profile, profile_names
    from robopt_compile.pipeline import target_status
    from robopt_compile.targets import TARGETS, get_backend

    avail = {}
    for b in TARGETS:
        ok, why = get_backend(b).availability()
        avail[b] = {"available": ok, "reason": why}
    rows = []
    for name in profile_names():
        p = load_profile(name)
        rows.append(
            {
                "name": name,
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
        for b, v in r["backends"].items():
            if not v["run"]:
                click.echo(f"{'':<24}   {b}: {v['reason']}")
    missing = {b: v["reason"] for b, v in avail.items() if not v["available"]}
    for b, why in missing.items():
        click.echo(f"\n{b} unavailable here: {why}")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
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
