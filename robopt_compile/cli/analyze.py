"""``robopt-compile analyze SOURCE``: facts about a model for a target (api.analyze)."""

from __future__ import annotations

from typing import Any

import click

from robopt_compile import api
from robopt_compile.cli.common import StageLog, compile_options, print_json, source_options


@click.command("analyze")
@source_options
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
    opts = compile_options(kw, precision=precision)
    a = api.analyze(kw["source"], options=opts, progress=StageLog(not kw["as_json"]))
    if kw["as_json"]:
        print_json(a.to_json(), lenient=True)
        return
    click.echo(f"{a.source} on {a.target} ({a.description})")
    click.echo(a.table(top))
