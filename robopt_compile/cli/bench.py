"""``robopt-bench``: the robot-side command (``robopt_compile/bench/cli.py``: run, serve) plus
what needs the store above it: ``devices add|ls|rm`` (``cli/devices.py``) and ``--device
NAME|any:BOARD`` through the device farm (``robopt_compile/farm``, docs/REMOTE.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from robopt_compile.bench import cli as bench_cli
from robopt_compile.cli.devices import devices_group

__all__ = ["main"]


def farm_run(bundle: str, device: str, store_spec: str | None, queue_timeout: float, runs: int,
             warmup: int, threads: int | None, control_rate: float | None, verify: bool,
             as_json: bool) -> dict[str, Any]:  # fmt: skip
    """``robopt-bench BUNDLE --device NAME|any:BOARD``: one ``api.bench`` call, printed as a
    remote run with a ``farm`` line."""
    import robopt_compile.api as robopt

    prog = bench_cli.PROG
    with bench_cli._progress(runs, "timing") as progress:
        b = robopt.bench(
            bundle, runs=runs, warmup=warmup, threads=threads, control_rate=control_rate,
            verify=verify, device=device, store=store_spec, queue_timeout_s=queue_timeout,
            progress=progress, warn=lambda m: click.echo(f"{prog}: warning: {m}", err=True),
        )  # fmt: skip
    result, farm = b.to_json(), b.to_json()["remote"]["farm"]
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False))
        click.echo(f"{prog}: saved {b.saved}", err=True)
        return result
    tried = "".join(f"; {n} failed it first: {why}" for n, why in farm["tried"].items())
    click.echo(bench_cli.format_result(result) + "\n"
               + bench_cli.format_remote(result, str(b.saved))
               + f"\nfarm        robot {farm['device']['name']} ({farm['device']['board']}), "
               f"queued {farm['queued_s']:.1f} s{tried}")  # fmt: skip
    return result


bench_cli.FARM = farm_run
main = bench_cli.main
if "devices" not in main.commands:
    main.add_command(devices_group)
