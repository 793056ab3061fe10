"""``robopt-compile report BUNDLE`` (report.html and report.md) and ``quant-report BUNDLE``
(the per-layer quantization table)."""

from __future__ import annotations

from pathlib import Path

import click

from robopt_compile import api
from robopt_compile.cli.common import print_json, warn
from robopt_compile.cli.tables import quant_line


@click.command("quant-report")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def quant_report_cmd(bundle_dir: Path, as_json: bool, debug: bool) -> None:
    """Per-layer quantization table of a bundle: precision, sensitivity, error contribution."""
    qr = api.quant_report(bundle_dir)
    q = qr.quantization
    if as_json:
        print_json(qr.to_json(), lenient=True)
        return
    click.echo(f"{bundle_dir}: {qr.backend} {qr.precision} "
               f"(requested {q['requested_precision']}), {quant_line(q)}")  # fmt: skip
    if q.get("data_note"):
        click.echo(f"note: {q['data_note']}")
    if q.get("rolled_back"):
        click.echo(f"rolled back: {q['rollback_reason']}")
    click.echo(f"full quantization: held-out {q['metric']} {q['full_quantization']['drop']:.4g}")
    layers = q.get("layers", [])
    measured = any(r.get("sensitivity") is not None for r in layers)
    click.echo(f"\n{'layer':<40} {'op':<10} {'precision':<9} {'sensitivity':>12} "
               f"{'drop if only this fp32':>22}")  # fmt: skip
    rows = sorted(layers, key=lambda r: -(r.get("sensitivity") or 0.0))
    for row in rows:
        sens = "" if row.get("sensitivity") is None else f"{row['sensitivity']:.4g}"
        alone = row.get("drop_with_only_this_fp32")
        alone = "" if alone is None else f"{alone:.4g}"
        click.echo(f"{row['node'][:40]:<40} {row['op_type']:<10} {row['precision']:<9} "
                   f"{sens:>12} {alone:>22}")  # fmt: skip
    if not measured:
        click.echo("\nsensitivity not measured (the bound was met with every layer quantized); "
                   "recompile with --measure-sensitivity to measure it.")  # fmt: skip


@click.command("report")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--profile-layers/--no-profile-layers",
    default=True,
    show_default=True,
    help="Measure per-layer times first (results/layers.json) when they are missing and the "
    "engine runs here.",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Profiled runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report_cmd(
    bundle_dir: Path, profile_layers: bool, runs: int, as_json: bool, debug: bool
) -> None:
    """Write BUNDLE_DIR/report.html (self-contained, offline) and report.md (for CI)."""
    paths = api.report(bundle_dir, profile_layers=profile_layers, runs=runs, warn=warn)
    if as_json:
        print_json({k: str(v) for k, v in paths.items()})
        return
    for k, v in paths.items():
        click.echo(f"{k:<6} {v}")
