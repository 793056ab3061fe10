"""The model store and session events: real SQLite in temporary folders, real processes.

Covers objects (dedup, atomic writes, trees), verify and gc, lineage, the session lifecycle
and its events in the table and the .jsonl log, several processes writing at once, ``kill -9``
at random moments, and the ``sessions`` / ``session`` / ``store`` commands.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from robopt_compile.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED
from robopt_compile.store.db import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    UnknownIdError,
    open_store,
    pid_alive,
    store_location,
)
from robopt_compile.store.events import EVENT_TYPES, read_event_log

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = open_store(str(tmp_path / "store"))
    yield st
    st.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ location and schema


def test_location_env_url_and_db_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOPT_STORE", str(tmp_path / "env"))
    assert store_location(None) == (tmp_path / "env", tmp_path / "env" / "store.db")
    monkeypatch.delenv("ROBOPT_STORE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_location(None)[0] == tmp_path / "xdg" / "robopt" / "store"
    url = f"sqlite://{tmp_path}/u/my.db"  # tmp_path starts with the third slash
    assert store_location(url) == (tmp_path / "u", tmp_path / "u" / "my.db")
    assert store_location(str(tmp_path / "f.db")) == (tmp_path, tmp_path / "f.db")
    with pytest.raises(StoreError, match="only sqlite"):
        open_store("postgresql://host/db")
    with pytest.raises(StoreError, match="no robopt store"):
        open_store(str(tmp_path / "missing"), create=False)
    st = open_store(url)
    assert (tmp_path / "u" / "my.db").is_file() and (tmp_path / "u" / "objects").is_dir()
    assert st.schema_version() == SCHEMA_VERSION
    st.close()


def test_newer_schema_refused_and_garbage_db(tmp_path):
    st = open_store(str(tmp_path / "s"))
    st.write(lambda c: c.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,)))
    st.close()
    with pytest.raises(StoreError, match="schema version"):
        open_store(str(tmp_path / "s"))
    bad = tmp_path / "bad" / "store.db"
    bad.parent.mkdir()
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable robopt store"):
        open_store(str(bad.parent))
    # reopening an existing store migrates nothing and keeps the data
    st = open_store(str(tmp_path / "t"))
    sha = st.put_bytes(b"x")
    st.close()
    st = open_store(str(tmp_path / "t"))
    assert st.get_bytes(sha) == b"x" and st.schema_version() == SCHEMA_VERSION
    st.close()


# ------------------------------------------------------------------ objects


def test_put_get_dedup_and_trees(store, tmp_path):
    a = store.put_bytes(b"hello")
    assert a == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.put_bytes(b"hello") == a
    f = tmp_path / "w.bin"
    f.write_bytes(b"hello")
    inode = store.get_path(a).stat().st_ino
    assert store.put_file(f) == a  # same bytes: one object, not rewritten
    assert store.get_path(a).stat().st_ino == inode
    assert store.get_bytes(a) == b"hello"
    assert len(store.artifacts()) == 1
    assert store.get_path(a) == store.root / "objects" / a[:2] / a
    with pytest.raises(UnknownIdError):
        store.get_path("0" * 64)
    with pytest.raises(StoreError, match="not a sha256"):
        store.get_path("../etc/passwd")

    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(os.urandom(3000))
    (src / "sub" / "ref.npz").write_bytes(b"ref")
    tree = store.put_tree(src)
    manifest = store.tree_manifest(tree)
    assert [e["path"] for e in manifest["files"]] == ["model.onnx", "sub/ref.npz"]
    assert store.put_tree(src) == tree
    out = store.materialize_tree(tree, tmp_path / "copy")
    assert (out / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    assert (out / "sub" / "ref.npz").read_bytes() == b"ref"
    assert store.resolve_artifact(tree[:10]).kind == "tree"


def test_object_write_is_atomic(store, monkeypatch):
    """A write that dies before the rename leaves no object, no row, and no visible tmp file."""
    data = os.urandom(10000)

    def boom(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes(data)
    monkeypatch.undo()
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    assert not store.object_path(sha).exists() and not store.has_artifact(sha)
    assert list(store.tmp.iterdir()) == []
    # a partial temp file left by a killed writer is never an object
    (store.tmp / "123-partial.tmp").write_bytes(data[:100])
    with pytest.raises(UnknownIdError):
        store.get_path(sha)
    rep = store.verify()
    assert rep["ok"] and rep["checked"] == 0 and rep["tmp"] == ["123-partial.tmp"]
    assert store.gc()["tmp_removed"] == []  # young: a live writer may own it
    assert store.gc(grace_s=0)["tmp_removed"] == ["123-partial.tmp"]
    assert store.put_bytes(data) == sha and store.get_bytes(sha) == data


# ------------------------------------------------------------------ verify and gc


def test_verify_detects_flipped_byte_and_dangling_reference(store, tmp_path, capsys):
    a = store.put_bytes(b"a" * 1000)
    b = store.put_bytes(b"b" * 1000)
    store.register_model("m", artifact=a)
    with store.create_session("zoo:x", "host") as s:
        s.start_step("export")
        s.finish_step(b)
    assert store.verify()["ok"]

    p = store.get_path(a)
    raw = bytearray(p.read_bytes())
    raw[500] ^= 0x01
    p.write_bytes(bytes(raw))
    rep = store.verify()
    assert not rep["ok"] and [m["sha256"] for m in rep["mismatched"]] == [a]
    code, out, err = run_cli(["store", "verify", "--store", str(store.root)], capsys)
    assert code == EXIT_CHECK_FAILED and f"MISMATCH {a}" in out
    assert err.strip().count("\n") == 0 and "1 mismatched" in err

    p.write_bytes(b"a" * 1000)  # repaired
    store.get_path(b).unlink()  # a step's output vanishes
    rep = store.verify()
    assert rep["missing"] == [b]
    assert rep["dangling"] and rep["dangling"][0]["sha256"] == b
    assert "output_hash" in rep["dangling"][0]["where"]
    code, out, _ = run_cli(["store", "verify", "--store", str(store.root), "--json"], capsys)
    assert code == EXIT_CHECK_FAILED and json.loads(out)["missing"] == [b]


def test_gc_removes_only_unreferenced(store, tmp_path):
    keep_model = store.put_bytes(b"model")
    store.register_model("m", artifact=keep_model)
    garbage = store.put_bytes(b"garbage")
    src = tmp_path / "t"
    src.mkdir()
    (src / "x").write_bytes(b"tree member")
    with store.create_session("zoo:x", "host") as s:
        s.start_step("build")
        tree = s.put_tree(src)
        s.finish_step(tree)
    member = store.tree_manifest(tree)["files"][0]["sha256"]
    running = store.create_session("zoo:y", "host")
    in_flight = running.put_bytes(b"not referenced yet")

    assert store.gc(grace_s=0, dry_run=True)["removed"] == [garbage]
    assert store.get_path(garbage).exists()
    assert store.gc()["removed"] == []  # everything is younger than the grace period
    out = store.gc(grace_s=0)
    assert out["removed"] == [garbage]
    for sha in (keep_model, tree, member, in_flight):
        assert store.get_path(sha).is_file()
    assert not store.has_artifact(garbage)
    running.finish({})
    again = store.create_session("zoo:z", "host")
    assert again.put_bytes(b"garbage") == garbage  # stored again by a running session
    assert store.gc(grace_s=0)["removed"] == [in_flight]  # its session is over
    assert store.get_bytes(garbage) == b"garbage"
    again.cancel("test")
    assert store.verify()["ok"]


# ------------------------------------------------------------------ lineage


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


# ------------------------------------------------------------------ sessions and events


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


# ------------------------------------------------------------------ several processes

WRITER = """
import sys
from robopt_compile.store.db import open_store
root, tag, n, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
st = open_store(root)
s = st.create_session(tag, "host", plan=["p"] * (n // 50))
other = st.open_session(shared)
for i in range(n):
    if i % 50 == 0:
        if s.current_step is not None:
            s.finish_step(s.put_bytes(f"{tag}-{i}".encode()), {"chunk": {"i": i}})
        s.start_step(f"step{i // 50}", None, {"i": i})
    s.emit("metric", name="i", value=i, tag=tag)
    s.add_result("point", {"tag": tag, "i": i})
    if i % 4 == 0:
        other.emit("metric", name="shared", tag=tag, i=i)
s.finish_step(s.put_bytes(b"last-" + tag.encode()), {})
s.finish({"n": n})
print(s.id)
"""


def test_concurrent_writers_lose_nothing(tmp_path):
    root = tmp_path / "store"
    st = open_store(str(root))
    shared = st.create_session("shared", "host", start=False)
    n, procs = 200, 3
    ps = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), f"w{k}", str(n), shared.id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for k in range(procs)
    ]
    ids = []
    for p in ps:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.append(out.strip())
    assert len(set(ids)) == procs
    for sid in ids:
        rec = st.get_session(sid)
        assert rec.state == "finished" and rec.summary == {"n": n}
        events = st.events(sid)
        metrics = [e for e in events if e.type == "metric"]
        assert [e.payload["value"] for e in metrics] == list(range(n))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        points = [r.data["i"] for r in st.results(sid) if r.kind == "point"]
        assert points == list(range(n))
        assert len(st.steps(sid)) == n // 50
        assert len(read_event_log(st.event_log_path(sid))) == len(events)
    shared_events = st.events(shared.id)
    assert len(shared_events) == procs * n // 4
    assert [e.seq for e in shared_events] == list(range(1, len(shared_events) + 1))
    assert len(read_event_log(st.event_log_path(shared.id))) == len(shared_events)
    assert st.integrity_check() == "ok"
    with sqlite3.connect(root / "store.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.verify()["ok"]
    st.close()


KILLED = """
import os, sys
from robopt_compile.store.db import open_store
st = open_store(sys.argv[1])
s = st.create_session("victim", "host")
print(s.id, flush=True)
i = 0
while True:
    s.start_step(f"s{i}", None, {"i": i})
    sha = s.put_bytes(os.urandom(20000 + i))
    s.emit("metric", name="i", value=i)
    s.add_result("point", {"i": i})
    s.finish_step(sha, {"r": {"i": i}})
    i += 1
"""


def test_kill_9_at_random_moments_leaves_a_consistent_store(tmp_path):
    root = tmp_path / "store"
    open_store(str(root)).close()
    rng = random.Random(7)
    killed = []
    for _ in range(5):
        p = subprocess.Popen(
            [sys.executable, "-c", KILLED, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        sid = p.stdout.readline().strip()
        assert sid, p.stderr.read()
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        killed.append(sid)

    st = open_store(str(root))
    assert st.integrity_check() == "ok"
    for sid in killed:
        rec = st.get_session(sid)
        assert rec.state == "interrupted"
        events = st.events(sid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[0].type == "started" and events[-1].type == "interrupted"
        # every committed event is readable in the log too: a torn last line is skipped, and
        # the one committed but not yet appended at the kill was added when it was reaped
        logged = {e["seq"]: e for e in read_event_log(st.event_log_path(sid))}
        table = {e.seq: e.to_dict() for e in events}
        assert logged == table
        steps = st.steps(sid)
        assert all(x.state in ("finished", "interrupted") for x in steps)
        assert sum(x.state == "interrupted" for x in steps) <= 1
        for x in steps:
            if x.state == "finished":  # a finished step's output and results are all there
                assert st.get_path(x.output_hash).is_file()
                assert [r.kind for r in st.results(sid, x.index)] == ["r"]
    rep = st.verify()  # every file under objects/ab/ hashes to its name: no torn object
    assert rep["ok"] and not rep["mismatched"], rep
    st.gc(grace_s=0)
    assert list(st.tmp.iterdir()) == []
    assert st.verify()["ok"]
    st.close()


# ------------------------------------------------------------------ CLI


@pytest.fixture
def filled(tmp_path) -> tuple[Path, str, str]:
    root = tmp_path / "cli-store"
    st = open_store(str(root))
    src = st.register_model("cnn", source="zoo:visuomotor-cnn", source_kind="zoo")
    with st.create_session("zoo:visuomotor-cnn", "host", {"max_latency_ms": 5}) as s:
        s.start_step("export")
        sha = s.put_bytes(b"onnx")
        m = s.record_model("cnn-onnx", sha, src.id)
        s.finish_step(sha, {"parity": {"cosine": 1.0}})
        s.finish({"latency_ms": 1.5})
    st.close()
    return root, s.id, m.id


def test_cli_sessions_and_session(filled, capsys):
    root, sid, _ = filled
    code, out, _ = run_cli(["sessions", "--store", str(root)], capsys)
    assert code == 0 and sid[:12] in out and "finished" in out and "1/1" in out
    assert "latency_ms=1.5" in out
    code, out, _ = run_cli(["sessions", "--store", str(root), "--json", "--limit", "5"], capsys)
    assert code == 0 and json.loads(out)["sessions"][0]["id"] == sid
    code, out, _ = run_cli(["session", sid[:10], "--store", str(root)], capsys)
    assert code == 0 and "export" in out and "step_finished" in out and "parity" in out
    code, out, _ = run_cli(["session", sid, "--store", str(root), "--json"], capsys)
    data = json.loads(out)
    assert [e["type"] for e in data["events"]][-1] == "finished"
    assert data["steps"][0]["name"] == "export"


def test_cli_store_commands(filled, capsys, monkeypatch):
    root, _, mid = filled
    monkeypatch.setenv("ROBOPT_STORE", str(root))
    code, out, _ = run_cli(["store", "ls"], capsys)
    assert code == 0 and "cnn-onnx" in out and mid[:12] in out
    code, out, _ = run_cli(["store", "ls", "--artifacts", "--json"], capsys)
    assert code == 0 and len(json.loads(out)["artifacts"]) == 1
    code, out, _ = run_cli(["store", "show", mid[:8]], capsys)
    assert code == 0 and "cnn-onnx" in out
    code, out, _ = run_cli(["store", "lineage", mid, "--json"], capsys)
    names = [x["model"]["name"] for x in json.loads(out)["lineage"]]
    assert code == 0 and names == ["cnn", "cnn-onnx"]
    code, out, _ = run_cli(["store", "lineage", mid], capsys)
    assert code == 0 and "export (session" in out
    code, out, _ = run_cli(["store", "gc", "--dry-run", "--grace", "0"], capsys)
    assert code == 0 and "would remove 0 objects" in out
    code, out, _ = run_cli(["store", "verify"], capsys)
    assert code == 0 and "1 objects" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["session", "deadbeef"], "no session 'deadbeef'"),
        (["store", "show", "abc123"], "no model 'abc123'"),
        (["store", "lineage", "zz-top"], "is not an id"),
    ],
)
def test_cli_unknown_id_one_line_exit_2(filled, capsys, args, needle):
    root, _, _ = filled
    code, _, err = run_cli([*args, "--store", str(root)], capsys)
    assert code == EXIT_BAD_INPUT and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_store_exit_2(tmp_path, capsys):
    for args in (["sessions"], ["store", "ls"], ["store", "verify"]):
        code, _, err = run_cli([*args, "--store", str(tmp_path / "nowhere")], capsys)
        assert code == EXIT_BAD_INPUT and "no robopt store" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()
