"""Content-addressed objects (dedup, atomic writes, trees), ``verify`` and ``gc``."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from helpers import run_cli

from robopt_compile.errors import EXIT_CHECK_FAILED
from robopt_compile.store import StoreError, UnknownIdError


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
