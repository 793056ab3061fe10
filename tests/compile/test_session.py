"""A plain robopt-compile run recorded as a store session (robopt_compile/compile/session.py):
steps and events, rollback events, failure and cancellation, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from robopt_compile.errors import EXIT_BAD_INPUT
from robopt_compile.store import open_store


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("ROBOPT_STORE", str(root))
    return root


def _only_session():
    with open_store() as st:
        (rec,) = st.sessions()
        return rec, st.steps(rec.id), st.events(rec.id), st.results(rec.id)


def test_compile_records_a_session_with_steps_events_and_lineage(
    tmp_path: Path, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    code, _, err = run_cli(["zoo:state-mlp", "--threads", "1", "-o", str(out)], capsys)
    assert code == 0, err
    rec, steps, events, results = _only_session()
    assert rec.state == "finished" and rec.source == "zoo:state-mlp" and rec.target == "host"
    assert rec.criteria["_compile"]["argv"] == ["zoo:state-mlp", "--threads", "1", "-o", str(out)]
    names = [s.name for s in steps]
    assert names[:2] == ["resolve", "export"] and names[-3:] == ["build", "verify", "report"]
    assert all(s.state == "finished" for s in steps)
    types = [e.type for e in events]
    assert types[0] == "started" and types[-1] == "finished"
    assert types.count("step_started") == types.count("step_finished") == len(steps)
    metrics = {e.payload["name"] for e in events if e.type == "metric"}
    assert "engine_cosine" in metrics
    (summary,) = [r.data for r in results if r.kind == "compile"]
    assert summary["engine_passed"] is True and summary["backend"] == "onnxruntime"
    assert rec.summary["bundle"] == str(out.resolve())
    # The bundle is in the store, derived from the source model.
    with open_store() as st:
        models = {m.name: m for m in st.models()}
        built = next(m for n, m in models.items() if n.startswith("state-mlp ["))
        chain = st.lineage(built.id)
        assert [c["model"]["name"] for c in chain] == ["state-mlp", built.name]
        assert chain[1]["derived_by"]["session_id"] == rec.id
        tree = st.tree_manifest(built.artifact)
        assert {f["path"] for f in tree["files"]} >= {"manifest.json", "model.onnx"}
    # The JSON-lines log mirrors the store's events.
    log = store_dir / "sessions" / f"{rec.id}.jsonl"
    assert len(log.read_text().splitlines()) == len(events)
    # An unchanged rebuild is its own session, with the reuse step.
    code, _, err = run_cli(["zoo:state-mlp", "--threads", "1", "-o", str(out), "--force"], capsys)
    assert code == 0, err
    with open_store() as st:
        newest = st.sessions()[0]
        assert [s.name for s in st.steps(newest.id)] == ["resolve", "reuse"]


def test_accuracy_rollback_is_an_event_and_the_step_is_rolled_back(
    policy_dir: Path, tmp_path: Path, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["tiny_policies:make_mlp", "--precision", "int8-dynamic", "--max-accuracy-drop",
            "1e-12", "-o", str(tmp_path / "w")]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rec, steps, events, _ = _only_session()
    assert rec.state == "finished"
    (quant,) = [s for s in steps if s.name == "quantize"]
    assert quant.state == "rolled_back" and "1e-12" in quant.error
    (ev,) = [e for e in events if e.type == "rolled_back"]
    assert ev.payload["name"] == "quantize" and ev.payload["step"] == quant.index
    assert any(e.type == "warning" and "rolled back" in e.payload["message"] for e in events)


def test_a_failing_compile_fails_its_step_and_session(
    tmp_path: Path, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    code, _, _ = run_cli([str(bad), "-o", str(tmp_path / "o")], capsys)
    assert code == EXIT_BAD_INPUT and not (tmp_path / "o").exists()
    rec, steps, events, _ = _only_session()
    assert rec.state == "failed" and rec.error and "\n" not in rec.error
    assert steps[-1].name == "export" and steps[-1].state == "failed"
    assert events[-1].type == "failed"


def test_unwritable_store_is_a_warning_and_the_compile_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ROBOPT_STORE", str(blocker / "store"))
    code, _, err = run_cli(["zoo:state-mlp", "-o", str(tmp_path / "o")], capsys)
    assert code == 0 and (tmp_path / "o" / "manifest.json").is_file()
    assert "session not recorded" in err


def _wait_for(pred, timeout: float = 120.0) -> None:
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.02)


def test_kill_9_then_resume_goes_on_after_the_last_finished_stage(
    tmp_path: Path, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "robopt_compile.cli", "zoo:state-mlp", "--threads", "1",
           "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))  # fmt: skip

    def export_done() -> bool:
        if not (store_dir / "store.db").is_file():
            return False
        with open_store() as st:
            rows = st.sessions()
            return bool(rows) and any(
                s.name == "export" and s.state == "finished" for s in st.steps(rows[0].id)
            )

    try:
        _wait_for(export_done)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # the bundle is written atomically: nothing half-written
    rec, steps, _, _ = _only_session()
    assert rec.state == "interrupted"
    done_before = [s.name for s in steps if s.state == "finished"]
    assert done_before[:2] == ["resolve", "export"]
    code, _, err = run_cli(["zoo:state-mlp", "--resume", rec.id[:12]], capsys)
    assert code == 0, err
    assert f"resuming session {rec.id[:12]}" in err
    rec2, steps2, events2, _ = _only_session()  # the same session, not a new one
    assert rec2.id == rec.id and rec2.state == "finished"
    assert steps2[: len(steps)] == steps and steps2[-1].name == "report"
    assert [e.payload.get("resumed") for e in events2 if e.type == "started"] == [False, True]
    report = json.loads((out / "report.json").read_text())
    assert report["cache"]["export"]["cache"] == "hit"  # the finished stage was not redone
    assert (out / "manifest.json").is_file()
    code, _, err = run_cli(["zoo:state-mlp", "--resume", rec.id[:12]], capsys)
    assert code == EXIT_BAD_INPUT and "finished" in err  # a finished session stays finished
