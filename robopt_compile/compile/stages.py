"""What every compile stage shares: the progress callback and stage timer, the result type, the
report stage and the build cache's notes (single-graph and multi-graph compiles alike)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopt_compile.errors import RoboptError

Progress = Callable[[str, str, float], None]  # (stage, "start" | "done", seconds)


@dataclass
class CompileResult:
    out: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # closed-loop figures (``--eval``)


def noop(stage: str, event: str, seconds: float) -> None:
    pass


@contextmanager
def stage(progress: Progress, name: str, timings: dict[str, float]) -> Iterator[None]:
    progress(name, "start", 0.0)
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t
    progress(name, "done", timings[name])


def write_report(staged: Path, progress: Progress = noop, out: Path | None = None) -> None:
    """report.html + report.md in the fresh bundle (staged, to be published at ``out``), with
    per-layer times where the engine runs here. A report problem is a warning: the bundle
    itself is complete."""
    try:
        from robopt_compile.report import refresh_reports

        refresh_reports(staged, warn=lambda m: progress(m, "note", 0.0), shown=out)
    except (RoboptError, OSError) as exc:  # the bundle is complete; its report is not
        progress(f"report.html not written: {type(exc).__name__}: {exc}", "note", 0.0)


def cache_note(progress: Progress, what: str, exc: BaseException) -> None:
    progress(f"build cache: {what} ({type(exc).__name__}: {exc})", "note", 0.0)
