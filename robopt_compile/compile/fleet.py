"""A fleet build: one policy, one bundle per board (``--target a,b,c``), in parallel on the
executor (docs/SCALE.md).

Each board is one unit (``build_board``): the normal pipeline with that board's profile, into
``OUT/<board>/``. A board that fails does not stop the others: its one-line error and exit
code go into ``OUT/fleet.json`` and the summary, and the caller exits 3 at the end. The
fleet folder is staged beside ``OUT`` and published by one rename when every board has
finished, so a killed fleet build leaves nothing half-written; if no board built, nothing is
published at all.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from robopt_compile.compile.options import CompileOptions
from robopt_compile.errors import InputError, RoboptError


def parse_targets(text: str) -> list[str]:
    """``a,b,c`` -> the boards, each named once (one-line errors for empty or repeated names)."""
    boards = [t.strip() for t in text.split(",")]
    if any(not b for b in boards):
        raise InputError(f"--target {text!r}: an empty board name; write --target a,b,c.")
    dup = sorted({b for b in boards if boards.count(b) > 1})
    if dup:
        raise InputError(f"--target {text!r}: {', '.join(dup)} named twice.")
    return boards


class NoBoardBuiltError(RoboptError):
    """Every board of a fleet failed (the summary says why each one did)."""

    exit_code = 3

    def __init__(self, summary: dict[str, Any]) -> None:
        first = summary["boards"][0]
        why = str(first["error"]).rstrip(".")
        n = len(summary["boards"])
        super().__init__(f"no board built ({first['board']}: {why}; {n} boards failed); "
                         "nothing was written.")  # fmt: skip
        self.summary = summary


def build_board(source: str, board: str, out: str | None, opts: CompileOptions) -> dict[str, Any]:
    """One unit: compile ``source`` for ``board`` into ``out`` (None: a temporary folder whose
    bundle comes back as tar bytes, from a remote worker). Never raises a RoboptError: the
    error is returned, so the other boards go on."""
    from robopt_compile.bench.machine import machine_profile
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.executor import pack_tree

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="robopt-board-")) if out is None else None
    bdir = tmp / "bundle" if tmp is not None else Path(str(out))
    row: dict[str, Any] = {"board": board, "machine": machine_profile()["host"]}
    try:
        res = compile_model(source, bdir, replace(opts, target=board, executor="local"),
                            force=True)  # fmt: skip
        verdict = (res.manifest.get("parity") or {}).get("engine") or {}
        row.update(
            bundle=board, backend=res.manifest["backend"], precision=res.manifest["precision"],
            engine_checked=bool(verdict.get("engine_checked", True)),
            size_mb=sum(p.stat().st_size for p in bdir.rglob("*") if p.is_file()) / 2**20,
            error=None, tar=pack_tree(bdir) if tmp is not None else None,
        )  # fmt: skip
    except RoboptError as exc:
        shutil.rmtree(bdir, ignore_errors=True)
        row.update(bundle=None, error=str(exc).splitlines()[0], exit_code=exc.exit_code, tar=None)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def compile_fleet(
    source: str,
    out: Path,
    boards: list[str],
    opts: CompileOptions,
    executor: Any,
    *,
    force: bool = False,
    log: Any = lambda m: None,
) -> dict[str, Any]:
    """Build every board (in parallel where the executor has workers); returns the summary
    that ``OUT/fleet.json`` holds: ``boards`` (one row each, in the order given) and
    ``failed`` (how many). Raises only for input errors found before any build."""
    from robopt_compile.compile.bundle import FLEET, staged_output
    from robopt_compile.compile.resolve import resolve_profile
    from robopt_compile.executor import unpack_tree

    for b in boards:  # unknown boards fail fast, before any build
        resolve_profile(replace(opts, target=b))
    t0 = time.perf_counter()
    local = executor.name == "local"
    with staged_output(out, force) as tmp:
        args = [(source, b, str(tmp / b) if local else None, opts) for b in boards]

        def done(i: int, row: dict[str, Any]) -> None:
            what = f"failed: {row['error']}" if row["error"] else \
                f"{row['backend']} {row['precision']}"  # fmt: skip
            log(f"{boards[i]}: {what} ({row['seconds']:.1f} s)")

        rows = executor.map(build_board, args, progress=done)
        for row in rows:
            data = row.pop("tar")
            if data is not None:
                unpack_tree(data, tmp / row["board"])
        summary = {
            "kind": "fleet",
            "source": source,
            "executor": executor.describe(),
            "boards": rows,
            "failed": sum(1 for r in rows if r["error"]),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if summary["failed"] == len(rows):  # nothing to publish: the staging folder goes
            raise NoBoardBuiltError(summary)
        (tmp / FLEET).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
