"""The ``sessions``, ``session`` and ``store`` commands on a filled store, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from robopt_compile.errors import EXIT_BAD_INPUT
from robopt_compile.store import open_store


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
