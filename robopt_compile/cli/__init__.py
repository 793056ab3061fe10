"""``robopt-compile``: the command line, a thin layer over :mod:`robopt_compile.api`.

    robopt-compile SOURCE --target T [-o OUT]     compile (the default command)
    robopt-compile analyze SOURCE --target T      facts table (--json for machines)
    robopt-compile --list-targets                 boards, backends and what runs here

Each command parses its options, calls one function of the API and prints what it returns;
the commands live one group per module (``compile``, ``plan``, ``analyze``, ``evaluate``,
``report``, ``targets``, ``store``), what they share in ``common`` and the text they print in
``tables``. Module level imports only click, the error classes and the (light) API so
``--help`` starts fast on a robot; everything heavy is imported by the call that needs it.
Errors print one line and exit with the code documented in ``robopt_compile.errors``;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import click

from robopt_compile import __version__
from robopt_compile.cli.analyze import analyze_cmd
from robopt_compile.cli.common import PROG, Invocation
from robopt_compile.cli.compile import compile_cmd
from robopt_compile.cli.evaluate import evaluate_cmd
from robopt_compile.cli.report import quant_report_cmd, report_cmd
from robopt_compile.cli.serve import serve_cmd, token_group
from robopt_compile.cli.store import session_cmd, sessions_cmd, store_group
from robopt_compile.cli.targets import targets_cmd
from robopt_compile.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, RoboptError

__all__ = ["cli", "main"]

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
        formatter.write_usage(PROG, "serve [--port 8400] | token create --role R --name N",
                              prefix="       ")  # fmt: skip


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


# In the order the group lists them in --help (alphabetical, as click sorts them).
for _command in (
    compile_cmd,
    analyze_cmd,
    quant_report_cmd,
    report_cmd,
    targets_cmd,
    evaluate_cmd,
    sessions_cmd,
    session_cmd,
    store_group,
    serve_cmd,
    token_group,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run ``robopt-compile`` with ``argv`` (default: ``sys.argv[1:]``); exits with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False, obj=Invocation(argv=args))
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
    except Exception as exc:  # the last resort: any bug is one line and exit 1, not a traceback
        if debug:
            raise
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        click.echo(
            f"{PROG}: internal error: {type(exc).__name__}: {msg} "
            "(re-run with --debug and report it)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)
