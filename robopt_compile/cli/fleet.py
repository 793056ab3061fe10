"""``robopt-compile SOURCE --target a,b,c -o OUT``: one bundle per board, a fleet table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robopt_compile import api
from robopt_compile.cli.common import print_json, warn
from robopt_compile.errors import EXIT_BACKEND


def fleet_table(summary: dict[str, Any]) -> list[str]:
    """The fleet summary for people: one row per board, in the order given."""
    head = f"{'board':<22} {'backend':<12} {'precision':<10} {'MB':>7} {'s':>6}  result"
    lines = [head, "-" * len(head)]
    for r in summary["boards"]:
        if r["error"]:
            lines.append(f"{r['board']:<22} {'-':<12} {'-':<10} {'-':>7} {r['seconds']:>6.1f}  "
                         f"FAILED: {r['error']}")  # fmt: skip
            continue
        checked = "engine checked here" if r["engine_checked"] else "engine checked on the board"
        lines.append(f"{r['board']:<22} {r['backend']:<12} {r['precision']:<10} "
                     f"{r['size_mb']:>7.2f} {r['seconds']:>6.1f}  {checked}")  # fmt: skip
    ex = summary["executor"]
    lines.append(f"{len(summary['boards']) - summary['failed']}/{len(summary['boards'])} boards "
                 f"built in {summary['seconds']:.1f} s on {ex['executor']} "
                 f"({ex['workers']} worker{'s' if ex['workers'] != 1 else ''})")  # fmt: skip
    return lines


def run_fleet(source: str, out: Path | None, opts: Any, force: bool, as_json: bool) -> None:
    """Build the fleet, print its table (or JSON); exit 3 when a board failed."""
    from robopt_compile.compile.fleet import NoBoardBuiltError, parse_targets

    if out is None:
        raise click.UsageError("Missing option '-o' / '--output' (the fleet's folder).")
    boards = parse_targets(opts.target)
    log = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
    try:
        summary = api.compile_fleet(source, out=out, targets=boards, options=opts, force=force,
                                    log=log, warn=warn)  # fmt: skip
    except NoBoardBuiltError as exc:
        if as_json:
            print_json(exc.summary)
        else:
            click.echo("\n".join(fleet_table(exc.summary)))
        raise
    if as_json:
        print_json(summary)
    else:
        click.echo("\n".join(fleet_table(summary)))
        click.echo(f"saved {out}/fleet.json")
    if summary["failed"]:
        warn(f"{summary['failed']} board(s) failed (see the table); the others are in {out}.")
        raise SystemExit(EXIT_BACKEND)
