"""``robopt-bench``: benchmark a bundle on the robot it will drive.

``main`` is a click group whose default command is ``run``: ``robopt-bench BUNDLE [OPTIONS]``
means ``robopt-bench run BUNDLE [OPTIONS]``, so a later ``serve`` subcommand is one
``@main.command()`` away and every existing call keeps working. (A bundle folder literally
named ``run`` must be written ``./run``.) Module level imports only click and the error
classes: numpy and the runtime load when a benchmark starts, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import click

from robopt_compile.errors import EXIT_INTERNAL, CheckFailedError, RoboptError

PROG = "robopt-bench"
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _DefaultGroup(click.Group):
    """A group that runs ``default_command`` when the first argument names no subcommand."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # People type `robopt-bench --help` wanting the benchmark's options: show those first.
        cmd = self.commands[self.default_command]
        cmd.format_help(
            click.Context(cmd, info_name=ctx.info_name, **cmd.context_settings), formatter
        )
        self.format_commands(ctx, formatter)


@click.group(cls=_DefaultGroup, context_settings=_CONTEXT)
def main() -> None:
    """robopt-bench: run robopt bundles on this machine."""


def _fail(exc: BaseException, debug: bool) -> None:
    """Report an error on one stderr line and exit with its class's code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, RoboptError):
        msg, code = str(exc), exc.exit_code
    else:
        msg = f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)"
        code = EXIT_INTERNAL
    click.echo(f"{PROG}: error: {' '.join(msg.split())}", err=True)
    sys.exit(code)


@contextmanager
def _progress(length: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A click progress bar on stderr when a person watches it; nothing in pipes and logs.

    The bar appears at the first update, so it does not sit at 0% while the engine loads.
    """
    if not sys.stderr.isatty():
        yield None
        return
    with ExitStack() as stack:
        bar: Any = None

        def update(n: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=length, label=label, file=sys.stderr)
                )
            bar.update(n)

        yield update


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


_COLS = ("p50", "p90", "p99", "mean", "min", "max")


def format_result(r: dict[str, Any]) -> str:
    """The benchmark result as a table for people (``--json`` gives the machine form)."""
    m, s, t, lat = r["machine"], r["settings"], r["timing"], r["latency"]
    threads = s["threads"] if s["threads"] else "runtime default"
    scale, unit = (1e3, "us") if lat["p50_ms"] < 1 else (1.0, "ms")  # keep 4 digits
    shapes = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in r["inputs"])
    unpack = t.get("engine_unpack_ms")  # only for bundles with a compressed engine
    startup = (
        f"start-up    bundle check {_f(t['bundle_check_ms'], '.1f')} ms, "
        + ("" if unpack is None else f"engine unpack {unpack:.1f} ms, ")
        + f"engine load {_f(t['engine_load_ms'], '.1f')} ms, "
        f"first inference {_f(t['first_infer_ms'], '.2f')} ms"
    )
    lines = [
        f"bundle      {r['bundle']}",
        f"model       {r['model']} ({r['backend']}, {r['precision']}, target {r['target']})",
        f"machine     {m['cpu_model']}, {m['cores_available']}/{m['cores_logical']} cores, "
        f"{m['runtime']} {m['runtime_version']} (built with {m['runtime_version_at_build']})",
        f"settings    {s['runs']} runs after {s['warmup']} warm-up, threads {threads}",
        f"inputs      {shapes}",
        startup,
        "",
        f"{'latency ' + unit:<12}" + "".join(f"{k:>10}" for k in _COLS),
        f"{'':<12}" + "".join(f"{lat[k + '_ms'] * scale:>10.3f}" for k in _COLS),
        f"jitter      stdev {lat['stdev_ms']:.3f} ms, p99-p50 {lat['jitter_p99_p50_ms']:.3f} ms",
        f"throughput  {lat['throughput_per_s']:.1f} items/s (batch {lat['batch']})",
    ]
    c = r["control"]
    if c is not None:
        lines.append(
            f"control     {c['rate_hz']:g} Hz, deadline {c['deadline_ms']:.3f} ms: "
            f"{c['misses']}/{c['runs']} missed ({c['miss_fraction']:.2%}), "
            f"p99 headroom {c['p99_headroom_ms']:.3f} ms"
        )
    mem = r["memory"]
    lines.append(
        f"memory      peak RSS {_f(mem['peak_rss_mib'], '.1f')} MiB, "
        f"{_f(mem['rss_increase_mib'], '+.1f')} MiB over the RSS before the engine loaded"
    )
    fid = r["fidelity"]
    tol = fid["tolerance"]
    lines += [
        "",
        f"fidelity    {'PASS' if fid['passed'] else 'FAIL'} (cosine >= {tol['cosine_min']:g}, "
        f"|diff| <= {tol['atol']:g} + {tol['rtol']:g}*|ref|)",
        f"  {'output':<20}{'max_abs':>12}{'max_rel':>12}{'cosine':>12}  result",
    ]
    for name, o in fid["outputs"].items():
        verdict = "pass" if o["passed"] else f"FAIL: {o['reason']}"
        lines.append(
            f"  {name:<20}{_f(o['max_abs'], '.3g'):>12}{_f(o['max_rel'], '.3g'):>12}"
            f"{_f(o['cosine'], '.6f'):>12}  {verdict}"
        )
    return "\n".join(lines)


def format_overhead(o: dict[str, Any]) -> str:
    """The ``--overhead`` comparison as a short table."""
    threads = o["threads"] if o["threads"] else "runtime default"
    return "\n".join(
        [
            f"overhead    {o['backend']}, threads {threads}, {o['blocks']} interleaved blocks, "
            f"{o['runs_each']} runs each",
            f"harness p50 {o['harness_p50_ms']:.4f} ms (mean {o['harness_mean_ms']:.4f})",
            f"bare p50    {o['bare_p50_ms']:.4f} ms (mean {o['bare_mean_ms']:.4f})",
            f"overhead    {o['overhead_pct']:+.3f} % of the bare-loop p50",
        ]
    )


@main.command("run", context_settings=_CONTEXT)
@click.argument("bundle", type=click.Path(path_type=str))
@click.option(
    "--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed runs."
)
@click.option(
    "--warmup",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Untimed runs before timing.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads [default: the runtime's, usually all cores].",
)
@click.option(
    "--control-rate",
    "control_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="HZ",
    help="Control-loop rate: report deadline misses.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only JSON on stdout.")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check the sha256 of every bundle file first.",
)
@click.option(
    "--overhead",
    is_flag=True,
    help="Measure the harness's own overhead against a bare runtime loop instead.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run(
    bundle: str,
    runs: int,
    warmup: int,
    threads: int | None,
    control_rate: float | None,
    as_json: bool,
    verify: bool,
    overhead: bool,
    debug: bool,
) -> None:
    """Benchmark the bundle in BUNDLE: engine fidelity, latency, jitter, memory.

    Exit codes: 0 ok, 2 bad bundle or option, 3 runtime missing or engine will not load,
    4 engine outputs do not match the reference (results are printed first), 1 internal error.
    """
    try:
        from .harness import measure_overhead, run_benchmark

        if overhead:
            with _progress(2 * runs, "overhead") as progress:
                result = measure_overhead(
                    bundle,
                    runs=runs,
                    warmup=warmup,
                    threads=threads,
                    verify=verify,
                    progress=progress,
                )
            click.echo(json.dumps(result, indent=2) if as_json else format_overhead(result))
            return
        with _progress(runs, "timing") as progress:
            result = run_benchmark(
                bundle,
                runs=runs,
                warmup=warmup,
                threads=threads,
                control_rate=control_rate,
                progress=progress,
                verify=verify,
            )
        click.echo(
            json.dumps(result, indent=2, allow_nan=False) if as_json else format_result(result)
        )
        if not result["fidelity"]["passed"]:
            failed = {
                n: o["reason"] for n, o in result["fidelity"]["outputs"].items() if not o["passed"]
            }
            raise CheckFailedError(
                f"engine fidelity check failed: {failed}; the engine does not reproduce the "
                "source model within the manifest's tolerance."
            )
    except Exception as exc:
        _fail(exc, debug)
