"""Output folders: robopt replaces only what it wrote, publishes last, tidies what a kill left
(issue 15: defects 3, 4, 5, 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import assert_bundle, leftovers, run_cli

from robopt_compile.bench.manifest import load_manifest
from robopt_compile.compile import bundle
from robopt_compile.compile.options import CompileOptions
from robopt_compile.compile.pipeline import compile_model
from robopt_compile.errors import EXIT_BAD_INPUT, OutputExistsError

MODEL = "zoo:state-mlp"
HOST = ["--target", "host", "--threads", "1", "--no-cache"]


def _compile(out: Path, *extra: str, capsys) -> tuple[int, str]:
    code, _, err = run_cli([MODEL, *HOST, "-o", str(out), *extra], capsys)
    return code, err


def test_force_refuses_a_folder_robopt_did_not_write(tmp_path, capsys):
    """The issue's reproduction: a user folder with a stray manifest.json survives --force."""
    p = tmp_path / "P"
    (p / "src").mkdir(parents=True)
    (p / "src" / "main.py").write_text("print('mine')\n")
    (p / "manifest.json").write_text("{}")
    (p / "notes.txt").write_text("x\n")
    code, err = _compile(p, "--force", capsys=capsys)
    assert code == EXIT_BAD_INPUT, err
    assert "not a robopt bundle" in err and "Traceback" not in err
    assert (p / "notes.txt").read_text() == "x\n"
    assert (p / "src" / "main.py").is_file()
    assert leftovers(tmp_path) == []


def test_force_replaces_a_bundle_only_while_it_holds_its_own_files(tmp_path, capsys):
    out = tmp_path / "b"
    assert _compile(out, capsys=capsys)[0] == 0
    assert json.loads((out / "manifest.json").read_text())["producer"] == "robopt-compile"
    (out / "results").mkdir(exist_ok=True)
    (out / "results" / "bench-old.json").write_text("{}")  # robopt's: replaced with the bundle
    code, err = _compile(out, "--force", capsys=capsys)
    assert code == 0, err
    assert not (out / "results" / "bench-old.json").exists()
    (out / "notes.txt").write_text("someone's notes\n")  # not robopt's: the folder is kept
    code, err = _compile(out, "--force", capsys=capsys)
    assert code == EXIT_BAD_INPUT and "notes.txt is not a file of the bundle" in err
    assert (out / "notes.txt").read_text() == "someone's notes\n"
    (out / "notes.txt").unlink()
    (out / "engine" / "link").symlink_to("/etc/hostname")
    code, err = _compile(out, "--force", capsys=capsys)
    assert code == EXIT_BAD_INPUT and "symbolic link" in err
    assert (out / "engine" / "link").is_symlink()


def _appear(out: Path, stage: str, bundle_like: bool = False):
    """A progress hook that creates ``out`` (with a file) when ``stage`` starts."""

    def hook(name: str, event: str, seconds: float) -> None:
        if name == stage and event == "start" and not out.exists():
            out.mkdir()
            if bundle_like:
                (out / "manifest.json").write_text(
                    json.dumps({"schema_version": 1, "producer": "robopt-compile", "files": {}})
                )
            (out / "data.txt").write_text("written during the compile\n")

    return hook


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_appears_during_the_compile_is_never_deleted(tmp_path, force):
    out = tmp_path / "o"
    opts = CompileOptions(target="host", threads=1, cache=False)
    with pytest.raises(OutputExistsError) as info:
        compile_model(MODEL, out, opts, force=force, progress=_appear(out, "build", force))
    msg = str(info.value)
    assert "was not replaced" in msg and "kept at" in msg
    assert (out / "data.txt").read_text() == "written during the compile\n"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("o.new-")]
    assert len(kept) == 1 and str(kept[0]) in msg
    load_manifest(kept[0], verify=True)  # the finished bundle is whole, and named
    assert leftovers(tmp_path) == []


def test_the_cli_says_where_the_new_bundle_is(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    real = bundle.publish

    def late(tmp, dest, force, tag, cleanup):  # someone writes to -o just before publishing
        dest.mkdir()
        (dest / "x.txt").write_text("mine")
        real(tmp, dest, force, tag, cleanup)

    monkeypatch.setattr(bundle, "publish", late)
    code, err = _compile(out, capsys=capsys)
    assert code == EXIT_BAD_INPUT and "kept at" in err, err
    assert err.strip().splitlines()[-1].startswith("robopt-compile: error:")
    assert (out / "x.txt").read_text() == "mine"


KILL_AT_STAGE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    def hook(name, event, seconds):
        if name == sys.argv[2] and event == "start":
            os.kill(os.getpid(), signal.SIGKILL)

    compile_model("zoo:state-mlp", Path(sys.argv[1]),
                  CompileOptions(target="host", threads=1, cache=False), progress=hook)
    """
)


def test_a_kill_before_the_report_publishes_nothing_and_is_tidied_later(tmp_path, capsys):
    """Defect 5 and 9a: the bundle appears with its report or not at all; the staging folder
    a kill leaves is removed by the next run."""
    out = tmp_path / "k"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STAGE, str(out), "report"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()  # nothing published without its report
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".k.tmp-")]
    assert len(staged) == 1 and (staged[0] / "manifest.json").is_file()
    code, err = _compile(out, capsys=capsys)
    assert code == 0, err
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert leftovers(tmp_path) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_staging_of_a_dead_run_is_cleaned_and_a_moved_bundle_restored(tmp_path, capsys):
    out = tmp_path / "b"
    assert _compile(out, capsys=capsys)[0] == 0
    host = bundle._staging_tag().split("@", 1)[1]
    dead = _dead_pid()
    # A kill between "move the old bundle aside" and "move the new one in".
    aside = tmp_path / f".b.old-{dead}@{host}-123"
    out.rename(aside)
    junk = tmp_path / f".b.tmp-{dead}@{host}-abc"
    junk.mkdir()
    (junk / "model.onnx").write_text("half")
    live = tmp_path / f".b.tmp-{os.getpid()}@{host}-live"  # a running compile's: kept
    live.mkdir()
    other_host = tmp_path / f".b.tmp-{dead}@elsewhere-xyz"  # another machine's: kept
    other_host.mkdir()
    code, err = _compile(out, capsys=capsys)
    assert code == EXIT_BAD_INPUT and "--force" in err  # the old bundle is back in place
    assert_bundle(out, "onnxruntime")
    assert not junk.exists() and not aside.exists()
    assert live.is_dir() and other_host.is_dir()


DYNAMIC_ONNX = textwrap.dedent(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    seqpool (float[1, seq, 4] x) => (float[1, 4] y) {
        r = ReduceMean <axes = [1], keepdims = 0> (x)
        y = Relu (r)
    }
    """
)


def test_a_dynamic_non_batch_dim_is_warned_and_checked_at_a_second_size(tmp_path, capsys):
    import onnx
    import onnx.parser

    proto = onnx.parser.parse_model(DYNAMIC_ONNX)
    src = tmp_path / "seqpool.onnx"
    onnx.save(proto, src)
    out = tmp_path / "d"
    code, _, err = run_cli([str(src), *HOST, "-o", str(out)], capsys)
    assert code == 0, err
    assert "x[1]=seq" in err and "at 1 and at 3" in err
    dyn = json.loads((out / "manifest.json").read_text())["parity"]["engine_dynamic"]
    assert dyn["passed"] is True and dyn["dims"] == ["x[1]=seq"]
