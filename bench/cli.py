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

from robopt_compile.errors import EXIT_INTERNAL, CheckFailedError, InputError, RoboptError

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


def _memory_line(mem: dict[str, Any], what: str) -> str:
    return (f"memory      peak RSS {_f(mem['peak_rss_mib'], '.1f')} MiB, "
            f"{_f(mem['rss_increase_mib'], '+.1f')} MiB over the RSS before the {what} "
            "loaded")  # fmt: skip


def format_graph_result(r: dict[str, Any]) -> str:
    """A multi-graph bundle's result: time per control step (one action), actions/s, the time
    of each graph within a step, and fidelity in action terms."""
    m, s, t, lat, f = r["machine"], r["settings"], r["timing"], r["latency"], r["fidelity"]
    threads = s["threads"] if s["threads"] else "runtime default"
    graphs = ", ".join(f"{k} {v:.2f}" for k, v in r["graph_ms_p50"].items())
    weights = sum(v or 0 for v in r["weight_bytes"].values()) / 2**20
    lines = [
        f"bundle      {r['bundle']}",
        f"model       {r['model']} ({r['backend']}, {r['precision']}, target {r['target']}), "
        f"driver {r['driver']}",
        f"machine     {m['cpu_model']}, {m['cores_available']}/{m['cores_logical']} cores, "
        f"{m['runtime']} {m['runtime_version']}"
        + "".join(f", {k} {v}" for k, v in (m.get("other_runtimes") or {}).items()),
        f"settings    {s['runs']} control steps after {s['warmup']} warm-up, threads {threads}",
        f"start-up    bundle check {_f(t['bundle_check_ms'], '.1f')} ms, engines load "
        f"{_f(t['engine_load_ms'], '.1f')} ms",
        "",
        f"{'step ms':<12}" + "".join(f"{k:>10}" for k in _COLS),
        f"{'':<12}" + "".join(f"{lat[k + '_ms']:>10.3f}" for k in _COLS),
        f"steps/s     {r['actions_per_s']:.2f} (control steps per second at p50: one action, or "
        "one action chunk)",
        f"per graph   p50 ms within a step: {graphs}",
        f"weights     {weights:.1f} MiB in all graphs",
    ]
    if r.get("memory"):
        lines.append(_memory_line(r["memory"], "engines"))
    c = r.get("control")
    if c is not None:
        lines.append(
            f"control     {c['rate_hz']:g} Hz, deadline {c['deadline_ms']:.1f} ms: "
            f"{c['misses']}/{c['runs']} missed ({c['miss_fraction']:.2%})"
        )
    l2 = f["action_l2"]
    verdict = "PASS" if f["passed"] else "FAIL"
    if "token_agreement" in f:
        lines += ["", f"fidelity    {verdict}: {f['token_agreement']:.1%} of action tokens agree "
                  f"with the fp32 torch model on {f['observations']} held-out observations "
                  f"(need {f['min_token_agreement']:.0%}); action L2 mean {l2['mean']:.3g}, "
                  f"max {l2['max']:.3g}; gripper flips {f['gripper_flips']}"]  # fmt: skip
    else:
        lines += ["", f"fidelity    {verdict}: actions at fixed noise vs the fp32 torch policy on "
                  f"{f['observations']} held-out observations: max abs "
                  f"{f['action_max_abs']:.3g} (bound {f['action_atol']:.3g}), L2 mean "
                  f"{l2['mean']:.3g}"]  # fmt: skip
    return "\n".join(lines)


def format_result(r: dict[str, Any]) -> str:
    """The benchmark result as a table for people (``--json`` gives the machine form)."""
    if "driver" in r:
        return format_graph_result(r)
    m, s, t, lat = r["machine"], r["settings"], r["timing"], r["latency"]
    threads = s["threads"] if s["threads"] else "runtime default"
    digits = 4 if lat["p50_ms"] < 1 else 3  # ms like every other figure, 4 digits kept
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
        f"{'latency ms':<12}" + "".join(f"{k:>10}" for k in _COLS),
        f"{'':<12}" + "".join(f"{lat[k + '_ms']:>10.{digits}f}" for k in _COLS),
        f"jitter      stdev {lat['stdev_ms']:.3f} ms, p99-p50 {lat['jitter_p99_p50_ms']:.3f} ms",
        f"throughput  {lat['throughput_per_s']:.1f} items/s (batch {lat['batch']})",
    ]
    c = r["control"]
    if c is not None:
        lines.append(
            f"control     {c['rate_hz']:g} Hz, deadline {c['deadline_ms']:.3f} ms: "
            f"{c['misses']}/{c['runs']} missed ({c['miss_fraction']:.2%}), "
            f"p99 headroom {c['p99_headroom_ms']:.3f} ms (back-to-back runs)"
        )
        pc = c.get("paced")
        if pc:
            lat, jit, mem = pc["latency_ms"], pc["jitter_ms"], pc["rss_mib"]
            lines += [
                f"paced loop  {pc['ticks']} ticks at {pc['rate_hz']:g} Hz: {pc['misses']} missed "
                f"({pc['miss_fraction']:.2%}, longest streak {pc['longest_miss_streak']}), "
                f"utilisation {pc['utilisation']:.1%}",
                f"            latency p50 {lat['p50']:.3f} / p99 {lat['p99']:.3f} / p99.9 "
                f"{lat['p99.9']:.3f} / max {lat['max']:.3f} ms; release jitter p99 "
                f"{jit['p99']:.3f} ms, max {jit['max']:.3f} ms",
                f"            cold start {pc['cold_start_ms']:.1f} ms (load + first inference), "
                f"warm first run {pc['warm_first_ms']:.3f} ms, RSS growth "
                f"{_f(mem['growth'], '+.2f')} MiB over the loop",
            ]
    lines.append(_memory_line(r["memory"], "engine"))
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
@click.option(
    "--save",
    is_flag=True,
    help="Also save the result, with every latency sample, in BUNDLE/results/ (the latency "
    "histogram of the bundle's report.html).",
)
@click.option(
    "--device",
    metavar="URL|NAME|any:BOARD",
    default=None,
    help="Run on a robot serving `robopt-bench serve` instead of here: its URL "
    "(http://ROBOT:8470, with --token-file), a robot registered with `robopt-bench devices "
    "add` by NAME, or any:BOARD for the first free registered robot of that board (queued "
    "while all are busy, moved to another one if it drops off). The result is also saved in "
    "BUNDLE/results/.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=str),
    default=None,
    help="File whose first line is the --device URL's token (registered robots need none).",
)
@click.option(
    "--store",
    "store_spec",
    metavar="PATH|URL",
    default=None,
    help="Store whose device registry --device NAME|any:BOARD uses (default: $ROBOPT_STORE, "
    "else ~/.cache/robopt/store).",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    metavar="S",
    help="With --device any:BOARD or NAME: seconds to wait for a free robot before giving up.",
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
    save: bool,
    device: str | None,
    token_file: str | None,
    store_spec: str | None,
    queue_timeout: float,
    debug: bool,
) -> None:
    """Benchmark the bundle in BUNDLE: engine fidelity, latency, jitter, memory.

    Exit codes: 0 ok, 2 bad bundle or option, 3 runtime missing or engine will not load
    (or --device unreachable), 4 engine outputs do not match the reference (results are
    printed first), 1 internal error.
    """
    try:
        if device is None and token_file is not None:
            raise InputError("--token-file goes with --device URL: give both or neither.")
        if device is not None:
            if overhead:
                raise InputError("--overhead runs here only: drop --device or --overhead.")
            if token_file is None:
                from .remote import is_device_name

                if not is_device_name(device):
                    raise InputError(
                        f"--device {device}: a robot's URL needs --token-file (registered "
                        "robots are named: --device NAME or any:BOARD)."
                    )
                if FARM is None:
                    raise InputError(
                        "--device NAME|any:BOARD needs the device registry: run the installed "
                        "robopt-bench, or give a URL with --token-file."
                    )
                result = FARM(
                    bundle, device, store_spec, queue_timeout, runs, warmup, threads,
                    control_rate, verify, as_json,
                )  # fmt: skip
            else:
                result = _remote_run(
                    bundle, device, token_file, runs, warmup, threads, control_rate, verify,
                    as_json,
                )  # fmt: skip
            _check_fidelity(result)
            return
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
                keep_samples=save,
            )
        if save:
            _save_local(bundle, result, control_rate)
            result = {**result, "latency": {
                k: v for k, v in result["latency"].items() if k != "samples_ms"}}  # fmt: skip
        click.echo(
            json.dumps(result, indent=2, allow_nan=False) if as_json else format_result(result)
        )
        _check_fidelity(result)
    except Exception as exc:  # CLI boundary: one line and an exit code; others are internal errors
        _fail(exc, debug)


def _save_local(bundle: str, result: dict[str, Any], control_rate: float | None) -> None:
    """``--save``: the result (samples included) and the paced loop into BUNDLE/results/."""
    import platform
    import time

    from robopt_compile.bench.results import save_result

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in platform.node()) or "host"
    path = save_result(bundle, f"bench-{host}-{stamp}", result, unique=True)
    click.echo(f"saved {path}", err=True)
    paced = (result.get("control") or {}).get("paced")
    if control_rate is not None and paced:
        save_result(bundle, f"control-{host}-{control_rate:g}hz", paced)


def _check_fidelity(result: dict[str, Any]) -> None:
    """Raise ``CheckFailedError`` (exit 4) when the engine missed the reference."""
    if not result["fidelity"]["passed"]:
        failed = {
            n: o["reason"] for n, o in result["fidelity"]["outputs"].items() if not o["passed"]
        }
        raise CheckFailedError(
            f"engine fidelity check failed: {failed}; the engine does not reproduce the "
            "source model within the manifest's tolerance."
        )


def format_remote(r: dict[str, Any], saved: str) -> str:
    """The ``remote`` block of a result as two table lines."""
    rem = r["remote"]
    return "\n".join(
        [
            f"remote      {rem['host']} ({rem['url']}, robopt {rem['server_version']}): upload "
            f"{rem['upload_bytes'] / 2**20:.1f} MiB in {rem['upload_ms']:.0f} ms, check "
            f"{rem['validate_ms']:.0f} ms, queue {rem['queue_wait_ms']:.0f} ms",
            f"saved       {saved}",
        ]
    )


# ``robopt-bench`` (robopt_compile/cli/bench.py) sets this to the device farm's run, which
# queues for a registered robot and prints as a remote run does: the registry lives in the
# store, above this robot-side layer. Called as FARM(bundle, device, store_spec,
# queue_timeout, runs, warmup, threads, control_rate, verify, as_json) -> the result.
FARM: Callable[..., dict[str, Any]] | None = None


def _remote_run(
    bundle: str,
    device: str,
    token_file: str,
    runs: int,
    warmup: int,
    threads: int | None,
    control_rate: float | None,
    verify: bool,
    as_json: bool,
) -> dict[str, Any]:
    """Benchmark on ``device``, print as a local run does, save into BUNDLE/results/."""
    from .remote import read_token_file, remote_benchmark, save_remote_result

    token = read_token_file(
        token_file, warn=lambda m: click.echo(f"{PROG}: warning: {m}", err=True)
    )
    with _progress(runs, "timing") as progress:
        result = remote_benchmark(
            bundle,
            device,
            token,
            runs=runs,
            warmup=warmup,
            threads=threads,
            control_rate=control_rate,
            verify=verify,
            progress=progress,
            on_retry=lambda m: click.echo(f"\n{PROG}: warning: {m}", err=True),
        )
    saved = save_remote_result(bundle, result)
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False))
        click.echo(f"{PROG}: saved {saved}", err=True)
    else:
        click.echo(format_result(result) + "\n" + format_remote(result, str(saved)))
    if result["remote"].get("overlapping_uploads"):
        click.echo(
            f"{PROG}: warning: other uploads reached {result['remote']['host']} during this "
            "run and may have disturbed its timings; rerun when the robot is idle",
            err=True,
        )
    return result


@main.command("serve", context_settings=_CONTEXT)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 for every interface (plain HTTP: see docs/REMOTE.md).",
)
@click.option(
    "--port", default=8470, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
)
@click.option(
    "--token-file",
    required=True,
    type=click.Path(path_type=str),
    help="File whose first line is the token clients must send (chmod 600).",
)
@click.option(
    "--max-upload-mb",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest bundle upload accepted.",
)
@click.option(
    "--max-queue",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs that may wait behind the running one.",
)
@click.option(
    "--max-unpacked-mb",
    default=4096,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest size an upload may unpack to (and at most --max-unpack-ratio times the "
    "compressed bytes received).",
)
@click.option(
    "--max-unpack-ratio",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Unpacked bytes per compressed byte received, plus 1 MiB (stops compression bombs).",
)
@click.option(
    "--max-connections",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests served at once; more get 503 at once.",
)
@click.option(
    "--max-uploads-per-ip",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Uploads one client address may have under way at once.",
)
@click.option(
    "--min-upload-kib-s",
    default=64.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Average upload rate below which an upload is dropped (408), after a 10 s grace.",
)
@click.option(
    "--max-job-s",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Wall-clock limit of one job; it is cancelled after that (and a paced control loop "
    "may not be longer).",
)
@click.option(
    "--stop-grace-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="On SIGTERM / Ctrl-C, how long to wait for the cancelled running job to stop.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=str),
    default=None,
    help="Where uploads are unpacked [default: the system temp folder].",
)
@click.option(
    "--allow-native-code",
    is_flag=True,
    help="Also run bundles whose engine is native code (a TVM library, a prebuilt TensorRT "
    "engine): anyone with the token can then run any code as this user. Default: refused (422).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve(
    host: str,
    port: int,
    token_file: str,
    max_upload_mb: int,
    max_queue: int,
    max_unpacked_mb: int,
    max_unpack_ratio: float,
    max_connections: int,
    max_uploads_per_ip: int,
    min_upload_kib_s: float,
    max_job_s: float,
    stop_grace_s: float,
    work_dir: str | None,
    allow_native_code: bool,
    debug: bool,
) -> None:
    """Serve benchmarks to build machines: `robopt-bench BUNDLE --device URL` uploads a
    bundle, this machine runs it (one at a time) and sends back the result. See
    docs/REMOTE.md: plain HTTP with a token, for trusted networks or an SSH tunnel.
    """
    try:
        from .serve import serve as serve_forever

        serve_forever(
            token_file,
            host=host,
            port=port,
            max_upload_mb=max_upload_mb,
            max_queue=max_queue,
            work_dir=work_dir,
            debug=debug,
            max_unpacked_mb=max_unpacked_mb,
            max_unpack_ratio=max_unpack_ratio,
            max_connections=max_connections,
            max_uploads_per_ip=max_uploads_per_ip,
            min_upload_kib_s=min_upload_kib_s,
            max_job_s=max_job_s,
            stop_grace_s=stop_grace_s,
            allow_native_code=allow_native_code,
        )
    except Exception as exc:  # CLI boundary: one line and an exit code; others are internal errors
        _fail(exc, debug)
