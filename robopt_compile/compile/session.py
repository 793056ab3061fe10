"""A plain ``robopt-compile`` run as a store session (the Optimization Manager's record).

Every compile that is not a planner search is recorded in the model store
(``robopt_compile.store``): one session with a step per pipeline stage (resolve, export,
optimize, quantize, analyze, build, verify, report, ...), the warnings as events, a
``rolled_back`` event for each step the accuracy guard or a compression bound undid, the
bundle's figures as results, and the bundle itself (content-addressed, so the build cache's
copies are shared; a bundle over ``ROBOPT_STORE_BUNDLE_MAX_MB``, default 512, is recorded by its
manifest only) with its lineage from the source model.

Failures: a failing stage fails its step and the session with the one-line error; Ctrl-C
cancels it; a ``kill -9`` leaves it ``running`` until the next store open marks it
``interrupted``. ``robopt-compile SOURCE --resume ID`` then re-runs the recorded command in
the same session: the stages that finished before the crash come back from the build cache
(stored as each one finishes), so the work resumes after the last finished stage.

Recording never fails a compile: a store that cannot be opened or written is one warning, and
the compile goes on without a session.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.store import Store, StoreError, open_store

Progress = Callable[[str, str, float], None]
COMPILE_KEY = "_compile"  # in a session's criteria: the command to re-run on --resume
_STORE_ERRORS = (StoreError, OSError, sqlite3.Error)


class CompileRecorder:
    """Mirrors the pipeline's progress into a session; stops recording on a store error."""

    def __init__(self, session: Any, progress: Progress) -> None:
        self.session = session
        self.inner = progress
        self.steps: dict[str, int] = {}  # stage -> the step index of its latest run
        self.broken: str | None = None

    def _safe(self, fn: Callable[[], Any]) -> Any:
        if self.session is None or self.broken is not None:
            return None
        try:
            return fn()
        except _STORE_ERRORS as exc:
            self.broken = str(exc)
            self.inner(f"session recording stopped: {exc}", "note", 0.0)
            return None

    def __call__(self, stage: str, event: str, seconds: float) -> None:
        s = self.session
        if event == "start":

            def start() -> None:
                if s.current_step is not None:  # a stage inside another: close the outer one
                    s.finish_step()
                self.steps[stage] = s.start_step(stage)

            self._safe(start)
        elif event == "done":

            def done() -> None:
                if s.current_step is not None and s.current_step == self.steps.get(stage):
                    s.finish_step(results={"stage": {"seconds": round(seconds, 4)}})

            self._safe(done)
        elif event == "note":
            self._safe(lambda: s.emit("warning", message=stage))
        self.inner(stage, event, seconds)

    def failed(self, exc: BaseException) -> None:
        """Close the open step and the session for an exception (Ctrl-C: cancelled)."""
        s = self.session
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]

        def close() -> None:
            if isinstance(exc, KeyboardInterrupt):
                s.cancel("interrupted by the user (Ctrl-C)")
                return
            if s.current_step is not None:
                s.fail_step(msg)
            s.fail(msg)

        self._safe(close)

    def finished(self, result: Any) -> None:
        """Results, rollbacks, the bundle with its lineage, and the session's summary."""
        s = self.session
        report, manifest = result.report, result.manifest

        def finish() -> None:
            q = report.get("quantization") or {}
            if q.get("rolled_back") and "quantize" in self.steps:
                s.rollback_step(self.steps["quantize"], str(q.get("rollback_reason", "")))
            for step in (report.get("compression") or {}).get("steps", []):
                if step.get("rolled_back"):
                    s.emit(
                        "rolled_back",
                        step=self.steps.get("compress"),
                        name=step.get("pass"),
                        reason=step.get("reason") or step.get("rollback_reason") or "",
                    )
            for name, value in _metrics(report, manifest).items():
                s.emit("metric", name=name, value=value)
            summary = _summary(result)
            s.add_result("compile", summary)
            size = tree_bytes(Path(result.out))
            limit = bundle_max_bytes()
            if size <= limit:
                tree = s.put_tree(result.out)
            else:  # a multi-GB bundle is not copied: its manifest (with every sha256) is
                tree = s.put_file(Path(result.out) / "manifest.json", kind="manifest")
                msg = (
                    f"the {size / 2**20:.0f} MiB bundle was not copied into the store (limit "
                    f"{limit / 2**20:.0f} MiB, ROBOPT_STORE_BUNDLE_MAX_MB); its manifest was"
                )
                s.emit("warning", message=msg)
            src = s.record_model(
                manifest["model"]["name"], None, None, source=manifest["model"]["source"],
                source_kind=manifest["model"].get("source_kind"),
            )  # fmt: skip
            s.record_model(
                f"{manifest['model']['name']} [{manifest['backend']} {manifest['precision']}]",
                tree,
                src.id,
                pass_name="compile",
                config={
                    "target": manifest["target"]["profile"],
                    "backend": manifest["backend"],
                    "precision": manifest["precision"],
                },
            )
            s.finish({**summary, "bundle_tree": tree})

        self._safe(finish)


def _metrics(report: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    eng = (manifest.get("parity") or {}).get("engine") or {}
    if eng.get("cosine") is not None:
        out["engine_cosine"] = eng["cosine"]
    q = report.get("quantization") or {}
    if isinstance(q.get("final"), dict) and q["final"].get("drop") is not None:
        out["quantization_drop"] = q["final"]["drop"]
    est = (report.get("summary") or {}).get("estimated_latency_ms")
    if est is not None:
        out["roofline_latency_ms_estimate"] = est
    return out


def _summary(result: Any) -> dict[str, Any]:
    m, r = result.manifest, result.report
    return {
        "bundle": str(Path(result.out).resolve()),
        "backend": m.get("backend"),
        "precision": m.get("precision"),
        "target": (m.get("target") or {}).get("profile"),
        "engine_passed": ((m.get("parity") or {}).get("engine") or {}).get("passed"),
        "cache": {k: v.get("cache") for k, v in (r.get("cache") or {}).items()},
    }


def _open(store_spec: str | None, progress: Progress) -> Store | None:
    try:
        return open_store(store_spec)
    except _STORE_ERRORS as exc:
        progress(f"session not recorded: the store cannot be opened ({exc})", "note", 0.0)
        return None


@contextlib.contextmanager
def compile_session(
    source: str,
    target: str,
    argv: Sequence[str] | None,
    progress: Progress,
    store_spec: str | Path | None = None,
    resume: Any = None,
) -> Iterator[CompileRecorder]:
    """Record the compile run inside the block; yields the progress callback to pass on.

    ``argv``: the command line that started it, recorded for ``--resume`` (None from the
    Python API: such a session cannot be resumed by re-running a command). ``resume``: a
    session claimed with ``Store.resume_session`` (``--resume ID``) to go on in, instead of a
    new one. The caller calls ``recorder.finished(result)`` on success; an exception leaving
    the block fails (or, for Ctrl-C, cancels) the session.
    """
    store = resume.store if resume is not None else _open(store_spec, progress)
    session = resume
    if session is None and store is not None:
        try:
            run = {} if argv is None else {COMPILE_KEY: {"argv": list(argv), "cwd": os.getcwd()}}
            session = store.create_session(str(source), target, run, ["compile"])
        except _STORE_ERRORS as exc:
            progress(f"session not recorded: {exc}", "note", 0.0)
            session = None
    rec = CompileRecorder(session, progress)
    try:
        yield rec
    except BaseException as exc:
        rec.failed(exc)
        raise
    finally:
        if store is not None and resume is None:  # a resumed session's store is its caller's
            with contextlib.suppress(*_STORE_ERRORS):
                store.close()


def compile_command(record: Any) -> tuple[list[str], str] | None:
    """(argv, cwd) of a recorded plain compile session, or None for another kind."""
    run = (record.criteria or {}).get(COMPILE_KEY)
    if not isinstance(run, dict) or not isinstance(run.get("argv"), list):
        return None
    return [str(a) for a in run["argv"]], str(run.get("cwd") or os.getcwd())


Rerun = Callable[[list[str], Any], None]  # (recorded argv, the claimed session) -> None


def resume_compile(store: Store, record: Any, rerun: Rerun) -> None:
    """Go on with a killed plain compile in its own session (``--resume ID``).

    Claims the session (refusing a running or finished one), then calls ``rerun(argv,
    session)`` from the folder the command was started in (its paths are relative to it):
    the caller parses the recorded command line and compiles with ``resume=session``; the
    stages finished before come back from the build cache. A re-run that stops before its
    compile starts (a bad option) fails the session rather than leaving it running.
    """
    cmd = compile_command(record)
    if cmd is None:
        raise InputError(
            f"session {record.id[:12]} did not record its command (it was not started by "
            f"robopt-compile); run the compile again without --resume."
        )
    session = store.resume_session(record.id)  # refuses a running or finished session
    argv, cwd = cmd
    here = os.getcwd()
    try:
        if cwd != here:
            os.chdir(cwd)
        rerun(argv, session)
    finally:
        os.chdir(here)
        with contextlib.suppress(StoreError, OSError):
            if session.record().state == "running":  # the re-run never reached its compile
                session.fail("the resumed command stopped before compiling")


def bundle_max_bytes() -> float:
    """The largest bundle the store copies (sessions, build cache): ROBOPT_STORE_BUNDLE_MAX_MB,
    default 512."""
    return float(os.environ.get("ROBOPT_STORE_BUNDLE_MAX_MB", "512")) * 2**20


def tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
