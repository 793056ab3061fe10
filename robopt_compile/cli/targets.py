"""``robopt-compile targets`` (``--list-targets``): board profiles, their backends and what
builds and runs on this machine (api.targets)."""

from __future__ import annotations

import click

from robopt_compile import api
from robopt_compile.cli.common import print_json


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def targets_cmd(as_json: bool, debug: bool) -> None:
    """List board profiles, their backends and whether each runs on this machine."""
    t = api.targets()
    if as_json:
        print_json(t.to_json())
        return
    click.echo(f"{'target':<24} {'arch':<8} {'precisions':<18} backends (build here / run here)")
    for r in t.targets:
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
    missing = {b: v["reason"] for b, v in t.backends.items() if not v["available"]}
    for b, why in missing.items():
        click.echo(f"\n{b} unavailable here: {why}")
