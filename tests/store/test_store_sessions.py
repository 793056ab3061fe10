"""Lineage of models, the session lifecycle, and its events in the table and the .jsonl log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robopt_compile.store import StoreError, UnknownIdError
from robopt_compile.store.events import EVENT_TYPES, read_event_log
from robopt_compile.store.liveness import pid_alive


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lineage_walks_parent_links(store):
    src = store.register_model(
        "act-policy", source="zoo:act-policy", source_kind="zoo", family="act"
    )
    with store.create_session("zoo:act-policy", "jetson-orin-nano") as s:
        chain = [src]
        for name in ("export", "quantize", "build"):
            s.start_step(name, config={"what": name})
            sha = s.put_bytes(name.encode())
            chain.append(s.record_model(f"{name}ed", sha, chain[-1].id, config={"k": 1}))
            s.finish_step(sha)
    lin = store.lineage(chain[-1].id[:10])
    assert [x["model"]["name"] for x in lin] == ["act-policy", "exported", "quantizeed", "builded"]
    assert lin[0]["derived_by"] is None
    assert [x["derived_by"]["pass"] for x in lin[1:]] == ["export", "quantize", "build"]
    assert [x["derived_by"]["step_index"] for x in lin[1:]] == [0, 1, 2]
    assert {x["derived_by"]["session_id"] for x in lin[1:]} == {s.id}
    assert [m.id for m in store.children(src.id)] == [chain[1].id]
    with pytest.raises(UnknownIdError):
        store.register_model("orphan", parent_id="f" * 32)


def test_session_lifecycle_events_table_and_jsonl(store):
    s = store.create_session("zoo:x", "host", {"max_latency_ms": 20}, ["export", "int8", "build"])
    assert s.record().state == "running" and s.record().pid == os.getpid()
    src = store.put_bytes(b"src")
    i0 = s.start_step("export", src, {"opset": 18})
    exported = s.put_bytes(b"onnx")
    s.emit("metric", name="parity_cosine", value=0.99999, unit="")
    s.finish_step(exported, {"parity": {"cosine": 0.99999, "nan": float("nan")}})
    i1 = s.start_step("int8", exported, {"precision": "int8"})
    s.emit("retry", name="int8", attempt=2, reason="calibration diverged")
    s.finish_step(s.put_bytes(b"int8"), {"fidelity": {"cosine": 0.98}})
    s.rollback_step(i1, "accuracy drop 0.02 > 0.01")
    s.emit("warning", message="rolled back to fp32")
    s.start_step("build", exported)
    s.fail_step("TensorRT missing")
    assert (i0, i1) == (0, 1)
    assert s.last_finished_step().name == "export"
    s.finish({"latency_ms": 3.2})

    rec = store.get_session(s.id[:8])
    assert rec.state == "finished" and rec.summary == {"latency_ms": 3.2}
    assert (rec.steps_done, rec.steps_total) == (1, 3)
    assert [st.state for st in s.steps()] == ["finished", "rolled_back", "failed"]
    res = store.results(s.id)
    assert [(r.step_index, r.kind) for r in res] == [(0, "parity"), (1, "fidelity")]
    assert res[0].data["nan"] is None  # strict JSON

    table = [e.to_dict() for e in store.events(s.id)]
    types = [e["type"] for e in table]
    assert types == [
        "started",
        "step_started",
        "metric",
        "step_finished",
        "step_started",
        "retry",
        "step_finished",
        "rolled_back",
        "warning",
        "step_started",
        "step_finished",
        "finished",
    ]
    assert set(types) <= set(EVENT_TYPES)
    assert [e["seq"] for e in table] == list(range(1, len(table) + 1))
    assert table[2]["payload"]["step"] == 0  # metric inside a step names it
    assert table[10]["payload"]["state"] == "failed"
    assert table[10]["payload"]["error"] == "TensorRT missing"
    log = store.event_log_path(s.id)
    assert log == store.root / "sessions" / f"{s.id}.jsonl"
    lines = log.read_text().splitlines()
    assert [json.loads(x) for x in lines] == table
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in table)
    assert store.events(s.id, after_seq=10)[0].seq == 11
    with pytest.raises(ValueError, match="unknown event type"):
        s.emit("exploded")


def test_context_manager_failure_and_resume(store, tmp_path):
    with pytest.raises(RuntimeError), store.create_session("zoo:x", "host") as s:
        s.start_step("export")
        raise RuntimeError("boom")
    rec = store.get_session(s.id)
    assert rec.state == "failed" and "boom" in rec.error
    assert [st.state for st in store.steps(s.id)] == ["failed"]

    # a process that died mid-step: its session reads as interrupted, and resumes
    t = store.create_session("zoo:x", "host", plan=["a", "b", "c"])
    t.start_step("a")
    t.finish_step(store.put_bytes(b"a"), {"r": 1})
    t.start_step("b")
    dead = _dead_pid()
    assert not pid_alive(dead)
    store.write(lambda c: c.execute("UPDATE sessions SET pid=? WHERE id=?", (dead, t.id)))
    assert store.get_session(t.id).state == "interrupted"
    assert [st.state for st in store.steps(t.id)] == ["finished", "interrupted"]
    assert store.events(t.id)[-1].type == "interrupted"
    with pytest.raises(StoreError, match="cannot be resumed"):
        store.resume_session(s.id[:0] + store.create_session("q", "h").id)
    r = store.resume_session(t.id)
    assert r.record().state == "running" and r.events()[-1].payload["resumed"] is True
    assert r.last_finished_step().name == "a"
    assert r.start_step("b") == 2
    r.finish_step()
    r.finish({})
    assert store.get_session(t.id).state == "finished"


def test_torn_jsonl_line_is_skipped(store):
    s = store.create_session("zoo:x", "host")
    log = store.event_log_path(s.id)
    with open(log, "a") as f:
        f.write('{"session": "x", "seq": 99, "ty')  # a writer killed mid-line
    s.emit("warning", message="after the crash")
    events = read_event_log(log)
    assert [e["type"] for e in events] == ["started", "warning"]
    assert [e["seq"] for e in events] == [1, 2]
