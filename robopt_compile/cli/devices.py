"""``robopt-bench devices add|ls|rm``: the device farm's registry of robots (docs/REMOTE.md,
"Device farm"). Tokens are read from a file, kept in the store, never printed."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

PROG = "robopt-bench"


def _fail(exc: BaseException, debug: bool) -> None:
    from robopt_compile.bench.cli import _fail as bench_fail

    bench_fail(exc, debug)


def _options(f: Any) -> Any:
    for o in reversed([
        click.option("--store", "store_spec", metavar="PATH|URL", default=None,
                     help="Store folder, .db file or sqlite:///abs/path/store.db (default: "
                     "$ROBOPT_STORE, else ~/.cache/robopt/store)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]):  # fmt: skip
        f = o(f)
    return f


def _store(spec: str | None) -> Any:
    from robopt_compile.store import open_store

    return open_store(spec)


@click.group("devices", context_settings={"help_option_names": ["-h", "--help"]})
def devices_group() -> None:
    """The robots of the device farm: `robopt-bench BUNDLE --device any:BOARD` runs on the
    first free one of that board, `--device NAME` on that one."""


@devices_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--board", required=True, help="The robot's hardware profile, e.g. jetson-orin-nano.")
@click.option("--token-file", required=True, type=click.Path(path_type=str),
              help="File whose first line is the token the robot's robopt-bench serve was "
              "started with.")  # fmt: skip
@click.option("--no-check", is_flag=True, help="Do not ask the robot for its health now.")
@_options
def add_cmd(name: str, url: str, board: str, token_file: str, no_check: bool,
            store_spec: str | None, as_json: bool, debug: bool) -> None:  # fmt: skip
    """Register the robot NAME serving at URL (http://ROBOT:8470)."""
    try:
        from robopt_compile import farm
        from robopt_compile.bench.remote import read_token_file

        token = read_token_file(token_file, warn=lambda m: click.echo(f"{PROG}: warning: {m}",
                                                                      err=True))  # fmt: skip
        with _store(store_spec) as st:
            d = farm.add_device(st, name, url, token, board)
            h = None if no_check else farm.health(st, d["id"])
        if h is not None and not h["reachable"]:
            click.echo(f"{PROG}: warning: {d['name']} was added but does not answer: "
                       f"{h['error']}", err=True)  # fmt: skip
        if as_json:
            click.echo(json.dumps({**d, "health": h}))
        else:
            state = "unchecked" if h is None else ("up" if h["reachable"] else "down")
            click.echo(f"added {d['name']} ({d['board']}, {d['url']}): {state}")
    except Exception as exc:  # CLI boundary: one line and an exit code
        _fail(exc, debug)


@devices_group.command("ls")
@click.option("--board", default=None, help="Only the robots of this board.")
@click.option("--no-check", is_flag=True, help="Do not ask the robots for their health.")
@_options
def ls_cmd(board: str | None, no_check: bool, store_spec: str | None, as_json: bool,
           debug: bool) -> None:  # fmt: skip
    """The registered robots: health (asked now), who holds each, the queue per board."""
    try:
        from robopt_compile import farm

        with _store(store_spec) as st:
            devs = farm.list_devices(st, board) if no_check else farm.check_all(st, board)
            held, queued = farm.leases(st), farm.waiting(st)
        for d in devs:
            lease = held.get(d["id"])
            d["held_by"] = None if lease is None else {
                k: lease[k] for k in ("pid", "host", "label", "acquired")}  # fmt: skip
        if as_json:
            click.echo(json.dumps({"devices": devs, "waiting": queued}))
            return
        if not devs:
            click.echo("no robots registered: robopt-bench devices add NAME URL --board BOARD "
                       "--token-file FILE")  # fmt: skip
            return
        click.echo(f"{'name':<14} {'board':<18} {'state':<9} {'health ms':>9}  {'held by':<28} "
                   "url")  # fmt: skip
        for d in devs:
            h = d.get("health")
            state = ("down" if d["down"] else "-") if h is None else (
                "up" if h["reachable"] else "down")  # fmt: skip
            ms = f"{h['ms']:.0f}" if h and h["reachable"] else "-"
            lease = d["held_by"]
            who = "-" if lease is None else f"{lease['label'][:16]} pid {lease['pid']}"
            click.echo(f"{d['name'][:14]:<14} {d['board'][:18]:<18} {state:<9} {ms:>9}  "
                       f"{who[:28]:<28} {d['url']}")  # fmt: skip
        for d in devs:
            h = d.get("health")
            if h is not None and not h["reachable"]:
                click.echo(f"  {d['name']}: {h['error']}")
        for b, n in sorted(queued.items()):
            click.echo(f"queue: {n} job(s) waiting for a {b} robot")
        if any(d.get("health") and not d["health"]["reachable"] for d in devs):
            sys.exit(3)
    except SystemExit:
        raise
    except Exception as exc:  # CLI boundary: one line and an exit code
        _fail(exc, debug)


@devices_group.command("rm")
@click.argument("name")
@_options
def rm_cmd(name: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Unregister the robot NAME (or id); a benchmark running on it goes on."""
    try:
        from robopt_compile import farm

        with _store(store_spec) as st:
            d = farm.remove_device(st, name)
        click.echo(json.dumps({"removed": d["id"], "name": d["name"]}) if as_json
                   else f"removed {d['name']} ({d['url']})")  # fmt: skip
    except Exception as exc:  # CLI boundary: one line and an exit code
        _fail(exc, debug)
