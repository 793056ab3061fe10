"""What the command groups share: the options every source command takes, turning them into
``CompileOptions``, the progress printer, warnings, JSON on stdout and the criteria exit.

Imports only click and the error classes at module level (``--help`` must start fast).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from robopt_compile.errors import CheckFailedError, InputError

PROG = "robopt-compile"


@dataclass(frozen=True)
class Invocation:
    """What ``main`` hands every command (click's ``obj``): the command line, recorded with
    a compile's session for ``--resume``, and the session a ``--resume`` continues in."""

    argv: list[str] | None = None
    resuming: Any = None


def warn(message: str) -> None:
    """A warning line on stderr, shown even in ``--json`` mode."""
    click.echo(f"{PROG}: warning: {message}", err=True)


def print_json(doc: Any, lenient: bool = False) -> None:
    """One JSON document on stdout; ``lenient``: anything not JSON as its ``str``."""
    click.echo(json.dumps(doc, default=str) if lenient else json.dumps(doc))


def print_rows(rows: list[tuple[str, str]]) -> None:
    """``key  value`` lines with the keys in one column."""
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


EXECUTOR_HELP = (
    "Where independent units run (evaluation episodes, planner builds, one board of a fleet): "
    "local (default), ray (this machine's cluster, `ray start --head`), ray://HOST:PORT, or "
    "auto (ray when a cluster answers, else local). docs/SCALE.md."
)


def executor_option(f: Any) -> Any:
    return click.option("--executor", default="local", show_default=True, metavar="WHERE",
                        help=EXECUTOR_HELP)(f)  # fmt: skip


def source_options(f: Any) -> Any:
    """SOURCE and the options of every command that loads a model (compile, analyze)."""
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
            help="CPU threads on this machine: the build's checks, guards and timings (default: "
            "all cores).",
        ),
        click.option(
            "--robot-threads",
            type=click.IntRange(min=1),
            default=None,
            help="Threads the engine will run with on the robot, for backends that build them "
            "in (TVM: num-cores). Default: the board profile's cores (host: --threads).",
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


def compile_options(kw: dict[str, Any], **extra: Any) -> Any:
    """``CompileOptions`` from the :func:`source_options` values plus ``extra`` fields."""
    from robopt_compile.compile.options import CompileOptions

    return CompileOptions(
        target=kw["target"],
        hwprofile=kw["hwprofile"],
        threads=kw["threads"],
        robot_threads=kw.get("robot_threads"),
        dynamic_batch=kw["dynamic_batch"],
        opset=kw["opset"],
        simplify=kw["simplify"],
        dump_ir=kw["dump_ir"],
        check_parity=not kw["no_parity_check"],
        seed=kw["seed"],
        reference_inputs=kw["reference_inputs"],
        **extra,
    )


class StageLog:
    """Progress on stderr: a line per stage with its time; on a terminal, a long stage's
    progress (episodes, distillation steps, tuning trials, planner builds) as click's
    progress bar with an ETA. Without a terminal, or with ``--json``, no bar and no tick lines:
    logs get one line per stage."""

    STEPS = 1000  # the bar's resolution: a tick reports a done fraction

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._open_line = False  # a "  stage ..." line without its newline yet

    def _tick(self, label: str, fraction: float) -> None:
        if self._bar is None:
            if self._open_line:  # "  stage ..." waits for its time: the bar goes below it
                click.echo("", err=True)
                self._open_line = False
            self._bar = click.progressbar(length=self.STEPS, label=f"  {label}", show_eta=True,
                                          file=sys.stderr, width=24)  # fmt: skip
            self._bar.__enter__()
            self._done = 0
        self._bar.label = f"  {label[:50]:<50}"
        step = min(self.STEPS, int(fraction * self.STEPS)) - self._done
        if step > 0:
            self._bar.update(step)
            self._done += step

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __call__(self, stage: str, event: str, seconds: float) -> None:
        if event == "line" and self.enabled:  # a log line goes above the bar, which stays
            if self._bar is not None:
                click.echo(f"\r\x1b[K  {stage}", err=True)
                self._bar.render_progress()
            else:
                click.echo(f"  {stage}", err=True)
            return
        if event != "tick":
            self._close_bar()  # a line of text ends the bar (a new one starts at the next tick)
        if event == "note":  # a warning the user must see even in --json mode
            warn(stage)
            return
        if not self.enabled:
            return
        if event == "info":  # a choice robopt made for the user (not in --json mode)
            click.echo(f"{PROG}: {stage}", err=True)
            return
        if event == "tick":  # progress inside a long stage; ``seconds`` is the done fraction
            if self.tty:
                self._tick(stage, seconds)
            return
        if event == "start":
            if self.tty:
                click.echo(f"  {stage:<10} ...", err=True, nl=False)
                self._open_line = True
            return
        prefix = "\r" if self.tty else ""
        self._open_line = False
        click.echo(f"{prefix}  {stage:<10} {seconds:7.2f} s", err=True)


def line_log(as_json: bool, stages: StageLog | None = None) -> Any:
    """A planner's log lines on stderr, indented (none in ``--json`` mode); through ``stages``
    when given, so a progress bar on the terminal ends before a line is printed."""
    if as_json:
        return lambda m: None
    if stages is not None:
        return lambda m: stages(m, "line", 0.0)
    return lambda m: click.echo(f"  {m}", err=True)


def criteria_exit(
    failures: list[str], fail_on_criteria: bool, kept: str = "the bundle was written"
) -> None:
    """Print every bound that did not hold; with ``--fail-on-criteria`` exit 4."""
    if not failures:
        return
    for f in failures:
        click.echo(f"{PROG}: criteria: {f}", err=True)
    if fail_on_criteria:
        raise CheckFailedError(f"{len(failures)} bound(s) did not hold (above); {kept}.")


def device_token(device: str | None, token_file: Path | None) -> str | None:
    """The --device server's token (read before the build), or None without --device."""
    if (device is None) != (token_file is None):
        raise InputError("--device and --token-file go together: give both or neither.")
    if token_file is None:
        return None
    from robopt_compile.bench.remote import read_token_file

    return read_token_file(token_file, warn=warn)
