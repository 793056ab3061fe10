"""Planner mode of ``robopt-compile SOURCE`` (any planner option) and ``--resume ID``: the
search's plans, measurements and choice on stdout, exit 4 when no plan met every bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robopt_compile import api
from robopt_compile.cli.common import PROG, Invocation, StageLog, line_log, print_json
from robopt_compile.cli.tables import format_plan
from robopt_compile.errors import CheckFailedError


def run_planner(
    source: str,
    out: Path | None,
    opts: Any,
    criteria: dict[str, Any],
    recipe: Path | None,
    plan_only: bool,
    force: bool,
    store_spec: str | None,
    as_json: bool,
) -> None:
    """Propose plans, build and measure the promising ones, keep the best (api.plan)."""
    stages = StageLog(not as_json)  # a bar over the builds on a terminal
    r = api.plan(
        source, out=out, criteria=criteria, recipe=recipe, options=opts, plan_only=plan_only,
        force=force, store=store_spec, log=line_log(as_json, stages), progress=stages,
    )  # fmt: skip
    report_plan(r, as_json, plan_only)


def report_plan(r: Any, as_json: bool, plan_only: bool = False) -> None:
    """The search's result on stdout; exit 4 when a search kept no plan."""
    if as_json:
        best = r.best.bundle if r.best else None
        print_json({"bundle": best, **r.to_json()}, lenient=True)
    else:
        click.echo(format_plan(r, r.criteria))
    if not plan_only and r.best is None:
        raise CheckFailedError(
            f"no plan met every bound ({len(r.measured)} measured, {len(r.failed)} failed); "
            "nothing was written. Loosen a bound, allow more --techniques or --search-budget."
        )


def resume(source: str, session_id: str, store_spec: str | None, as_json: bool) -> None:
    """``--resume ID``: a planner search or a plain compile goes on where it stopped.

    A compile re-runs its recorded command line through this command group, in the same
    session (handed over as click's ``obj``); the stages it finished before come back from
    the build cache.
    """
    root = click.get_current_context().find_root().command

    def rerun(argv: list[str], session: Any) -> None:
        if not as_json:
            click.echo(f"{PROG}: resuming session {session.id[:12]}: {PROG} {' '.join(argv)}",
                       err=True)  # fmt: skip
        root.main(args=argv, prog_name=PROG, standalone_mode=False,
                  obj=Invocation(argv=argv, resuming=session))  # fmt: skip

    r = api.resume(source, session_id, rerun=rerun, store=store_spec, log=line_log(as_json))
    if r is not None:
        report_plan(r, as_json)
