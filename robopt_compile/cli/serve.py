"""``robopt-compile serve`` (the platform: API, web UI, job queue) and ``robopt-compile token``
(API tokens): each a call of ``robopt_compile.service``, printed."""

from __future__ import annotations

import json
from typing import Any

import click

from robopt_compile.cli.store import store_options


def _store_root(spec: str | None) -> str:
    from robopt_compile.store.locate import store_location

    return str(store_location(spec)[0])


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but 127.0.0.1 exposes the API to the network "
              "(use TLS then).")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=8400, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Jobs run at once (each in its own process); 0: the API only.")  # fmt: skip
@click.option(
    "--store",
    "store_spec",
    metavar="PATH",
    help="Store folder (default: $ROBOPT_STORE, else ~/.cache/robopt/store).",
)
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=512.0,
              show_default=True)  # fmt: skip
@click.option("--rate-limit", type=click.FloatRange(min=0.1), default=50.0, show_default=True,
              help="Requests per second per token (bursts of 4x).")  # fmt: skip
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--trust-pt2-uploads", "trust_pt2", is_flag=True,
              help="Accept .pt2 (torch.export) uploads. Loading one unpickles it, so anyone "
              "with an operator token can run code as this server's user: only where every "
              "operator is trusted. Default: .onnx and .zip uploads only.")  # fmt: skip
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve_cmd(host: str, port: int, workers: int, store_spec: str | None, max_upload_mb: float,
              rate_limit: float, ssl_certfile: str | None, ssl_keyfile: str | None,
              trust_pt2: bool, debug: bool) -> None:  # fmt: skip
    """Serve the HTTP API (/api/v1, docs at /api/docs), the web UI and the job queue."""
    from robopt_compile.errors import InputError
    from robopt_compile.service.app import ServiceConfig
    from robopt_compile.service.server import serve
    from robopt_compile.store import open_store

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise InputError("--ssl-certfile and --ssl-keyfile go together.")
    root = _store_root(store_spec)
    with open_store(root):  # create it (and migrate) before the workers start
        pass
    cfg = ServiceConfig(store=root, workers=workers, max_upload_mb=max_upload_mb,
                        rate_per_s=rate_limit, burst=int(rate_limit * 4),
                        trust_pt2=trust_pt2)  # fmt: skip
    serve(cfg, host, port, ssl_certfile, ssl_keyfile)


@click.group("token")
def token_group() -> None:
    """API tokens for `robopt-compile serve`: create (shown once), list, revoke."""


@token_group.command("create")
@store_options
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer",
              show_default=True)  # fmt: skip
@click.option("--name", required=True, help="Who or what uses it (ci, alice, ...).")
def token_create(store_spec: str | None, as_json: bool, debug: bool, role: str, name: str
                 ) -> None:  # fmt: skip
    """Create a token and print it ONCE (only its hash is kept)."""
    from robopt_compile.service.tokens import create_token
    from robopt_compile.store import open_store

    with open_store(_store_root(store_spec)) as store:
        rec, text = create_token(store, name, role)
    if as_json:
        click.echo(json.dumps({**rec.to_json(), "token": text}))
        return
    click.echo(text)
    click.echo(f"token {rec.id} ({rec.role}, {rec.name}): shown once, keep it safe", err=True)


@token_group.command("list")
@store_options
def token_list(store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Tokens (never their secrets), newest first."""
    from robopt_compile.service.tokens import list_tokens
    from robopt_compile.store import open_store

    with open_store(_store_root(store_spec), create=False) as store:
        rows: list[Any] = [t.to_json() for t in list_tokens(store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':<14}{'role':<10}{'name':<20}{'created':<21}{'last used':<21}revoked")
    for t in rows:
        click.echo(f"{t['id']:<14}{t['role']:<10}{t['name'][:19]:<20}{t['created'][:19]:<21}"
                   f"{(t['last_used'] or '-')[:19]:<21}{(t['revoked'] or '-')[:19]}")  # fmt: skip


@token_group.command("revoke")
@store_options
@click.argument("token_id")
def token_revoke(store_spec: str | None, as_json: bool, debug: bool, token_id: str) -> None:
    """Revoke a token by id: it stops working at once."""
    from robopt_compile.service.tokens import revoke_token
    from robopt_compile.store import open_store

    with open_store(_store_root(store_spec), create=False) as store:
        rec = revoke_token(store, token_id)
    click.echo(json.dumps(rec.to_json()) if as_json else f"revoked {rec.id} ({rec.name})")
