"""The model store's commands: ``sessions``, ``session ID`` and ``store ls|show|lineage|gc|
verify`` (each a call of ``robopt_compile.store.Store``, printed)."""

from __future__ import annotations

import json
from typing import Any

import click

from robopt_compile.errors import CheckFailedError


def store_options(f: Any) -> Any:
    """``--store``, ``--json`` and ``--debug`` for the store and session commands."""
    opts = [
        click.option(
            "--store",
            "store_spec",
            metavar="PATH|URL",
            help="Store folder, .db file or sqlite:///abs/path/store.db (default: $ROBOPT_STORE, "
            "else ~/.cache/robopt/store).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _open_existing_store(spec: str | None) -> Any:
    from robopt_compile.store import open_store

    return open_store(spec, create=False)


def _short_time(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _compact(data: Any, width: int = 48) -> str:
    """A JSON object as ``k=v k=v`` on one line, cut to ``width`` characters."""
    if isinstance(data, dict):
        text = " ".join(
            f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, dict | list) else v}"
            for k, v in data.items()
        )
    else:
        text = json.dumps(data, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


@click.command("sessions")
@store_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def sessions_cmd(store_spec: str | None, as_json: bool, debug: bool, limit: int) -> None:
    """List optimization sessions, newest first."""
    with _open_existing_store(store_spec) as store:
        rows = store.sessions(limit=limit)
    if as_json:
        click.echo(json.dumps({"sessions": [r.to_dict() for r in rows]}))
        return
    if not rows:
        click.echo("no sessions yet")
        return
    click.echo(
        f"{'id':<12} {'state':<11} {'created':<19} {'source':<24} {'target':<16} steps  summary"
    )
    for r in rows:
        click.echo(
            f"{r.id[:12]:<12} {r.state:<11} {_short_time(r.created):<19} "
            f"{(r.source or '-')[:24]:<24} {(r.target or '-')[:16]:<16} "
            f"{f'{r.steps_done}/{r.steps_total}':<6} {_compact(r.error or r.summary)}"
        )


@click.command("session")
@click.argument("session_id")
@store_options
def session_cmd(session_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Show one session (an id or an unambiguous prefix): steps, results and events."""
    with _open_existing_store(store_spec) as store:
        rec = store.get_session(session_id)
        steps = store.steps(rec.id)
        results = store.results(rec.id)
        events = store.events(rec.id)
        log = store.event_log_path(rec.id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "session": rec.to_dict(),
                    "steps": [s.to_dict() for s in steps],
                    "results": [r.to_dict() for r in results],
                    "events": [e.to_dict() for e in events],
                    "event_log": str(log),
                }
            )
        )
        return
    click.echo(f"session  {rec.id}  {rec.state}")
    click.echo(f"source   {rec.source or '-'}  ->  target {rec.target or '-'}")
    click.echo(f"created  {_short_time(rec.created)}  updated {_short_time(rec.updated)}")
    click.echo(f"process  pid {rec.pid or '-'} on {rec.host or '-'}")
    if rec.criteria:
        click.echo(f"criteria {_compact(rec.criteria, 200)}")
    if rec.summary:
        click.echo(f"summary  {_compact(rec.summary, 200)}")
    if rec.error:
        click.echo(f"error    {rec.error}")
    click.echo(f"\nsteps ({rec.steps_done} done of {rec.steps_total})")
    for s in steps:
        out = (s.output_hash or "-")[:12]
        click.echo(f"  {s.index:>3} {s.name:<20} {s.state:<12} out {out:<12} {s.error or ''}")
    if results:
        click.echo("\nresults")
        for r in results:
            where = "-" if r.step_index is None else str(r.step_index)
            click.echo(f"  step {where:>3} {r.kind:<20} {_compact(r.data, 80)}")
    click.echo(f"\nevents ({len(events)}; log {log})")
    for e in events:
        click.echo(f"  {e.seq:>4} {_short_time(e.time)} {e.type:<14} {_compact(e.payload, 80)}")


@click.group("store")
def store_group() -> None:
    """The model store: models, lineage, artifacts (ls, show, lineage, gc, verify)."""


@store_group.command("ls")
@store_options
@click.option("--artifacts", is_flag=True, help="List stored objects instead of models.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def store_ls_cmd(
    store_spec: str | None, as_json: bool, debug: bool, artifacts: bool, limit: int
) -> None:
    """List models (or, with --artifacts, objects), newest first."""
    with _open_existing_store(store_spec) as store:
        if artifacts:
            arts = store.artifacts(limit=limit)
            if as_json:
                click.echo(json.dumps({"artifacts": [a.to_dict() for a in arts]}))
                return
            click.echo(f"{'sha256':<16} {'kind':<6} {'size':>12} created")
            for a in arts:
                click.echo(f"{a.sha256[:16]} {a.kind:<6} {a.size:>12} {_short_time(a.created)}")
            return
        models = store.models(limit=limit)
    if as_json:
        click.echo(json.dumps({"models": [m.to_dict() for m in models]}))
        return
    if not models:
        click.echo("no models yet")
        return
    click.echo(f"{'id':<12} {'name':<24} {'kind':<8} {'parent':<12} {'artifact':<12} created")
    for m in models:
        click.echo(
            f"{m.id[:12]} {m.name[:24]:<24} {(m.source_kind or '-')[:8]:<8} "
            f"{(m.parent_id or '-')[:12]:<12} {(m.artifact or '-')[:12]:<12} "
            f"{_short_time(m.created)}"
        )


@store_group.command("show")
@click.argument("item_id")
@store_options
def store_show_cmd(item_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Show a model (id or prefix) or, failing that, an artifact (sha256 or prefix)."""
    from robopt_compile.store import UnknownIdError

    with _open_existing_store(store_spec) as store:
        try:
            data: dict[str, Any] = {"model": store.get_model(item_id).to_dict()}
        except UnknownIdError as model_exc:
            try:
                art = store.resolve_artifact(item_id)
            except UnknownIdError:
                raise model_exc from None
            data = {"artifact": art.to_dict(), "path": str(store.object_path(art.sha256))}
            if art.kind == "tree":
                data["files"] = store.tree_manifest(art.sha256)["files"]
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in (data.get("model") or data["artifact"]).items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{key:<12} {shown if shown is not None else '-'}")
    if "path" in data:
        click.echo(f"{'path':<12} {data['path']}")
    for f in data.get("files", []):
        click.echo(f"  {f['sha256'][:12]} {f['size']:>12} {f['path']}")


@store_group.command("lineage")
@click.argument("model_id")
@store_options
def store_lineage_cmd(model_id: str, store_spec: str | None, as_json: bool, debug: bool) -> None:
    """The chain of models from the original source to MODEL_ID, with the step of each edge."""
    with _open_existing_store(store_spec) as store:
        chain = store.lineage(model_id)
    if as_json:
        click.echo(json.dumps({"lineage": chain}))
        return
    for i, link in enumerate(chain):
        m, how = link["model"], link["derived_by"]
        if how:
            step = how.get("pass") or how.get("step") or "?"
            sess = (how.get("session_id") or "-")[:12]
            click.echo(f"  | {step} (session {sess}, step {how.get('step_index')})")
        arrow = "" if i == 0 else "  v\n"
        click.echo(f"{arrow}{m['id'][:12]} {m['name']} [{m['source_kind'] or '-'}] "
                   f"{m['source'] or ''}".rstrip())  # fmt: skip


@store_group.command("gc")
@store_options
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Keep objects younger than this many seconds (a running compile may be about to "
    "reference them).",
)
@click.option(
    "--cache-max-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="First forget the least recently used build-cache entries until the cache fits in "
    "this many MB (0: forget them all); then remove what nothing references.",
)
def store_gc_cmd(
    store_spec: str | None,
    as_json: bool,
    debug: bool,
    dry_run: bool,
    grace: float,
    cache_max_mb: float | None,
) -> None:
    """Remove objects nothing references (never those of a running session)."""
    trim = None
    with _open_existing_store(store_spec) as store:
        if cache_max_mb is not None:
            trim = store.cache_trim(int(cache_max_mb * 1e6), dry_run=dry_run)
        out = store.gc(dry_run=dry_run, grace_s=grace)
    if trim is not None:
        out["cache"] = trim
    if as_json:
        click.echo(json.dumps(out))
        return
    verb = "would remove" if dry_run else "removed"
    if trim is not None:
        click.echo(
            f"build cache: {'would forget' if dry_run else 'forgot'} {len(trim['removed'])} "
            f"least recently used entries; {trim['kept']} kept "
            f"({trim['kept_bytes'] / 1e6:.1f} MB)"
            + (" (a dry run counts their objects as still referenced)" if dry_run else "")
        )
    click.echo(
        f"{verb} {len(out['removed'])} objects ({out['bytes']} bytes) and "
        f"{len(out['tmp_removed'])} temporary files; {out['kept']} referenced objects kept"
    )
    for sha in out["removed"]:
        click.echo(f"  {sha}")


@store_group.command("verify")
@store_options
def store_verify_cmd(store_spec: str | None, as_json: bool, debug: bool) -> None:
    """Re-hash every object and check every reference; exit 4 on any problem."""
    with _open_existing_store(store_spec) as store:
        rep = store.verify()
    if as_json:
        click.echo(json.dumps(rep))
    else:
        click.echo(
            f"{rep['checked']} objects ({rep['bytes']} bytes) re-hashed; database "
            f"{rep['integrity']}; {len(rep['orphans'])} unreferenced files, {len(rep['tmp'])} "
            "temporary files (store gc removes them)"
        )
        for m in rep["mismatched"]:
            click.echo(f"MISMATCH {m['sha256']} hashes to {m['actual']} ({m['path']})")
        for sha in rep["missing"]:
            click.echo(f"MISSING  {sha} (catalogued, no file)")
        for d in rep["dangling"]:
            click.echo(f"DANGLING {d['sha256'] or '-'} referenced by {d['where']}")
    if not rep["ok"]:
        parts = [f"{len(rep[k])} {k}" for k in ("mismatched", "missing", "dangling") if rep[k]] + (
            [f"database {rep['integrity']}"] if rep["integrity"] != "ok" else []
        )
        raise CheckFailedError(f"store {rep['store']} failed verification: {', '.join(parts)}.")
