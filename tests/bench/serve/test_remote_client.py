"""The client side of remote benchmarking and the command lines, against a real
``robopt-bench serve`` on loopback: how failures map to robopt errors, packing, saved results,
token files, what the robot side imports, ``robopt-bench serve`` as a subprocess (start-up,
SIGTERM), ``robopt-bench BUNDLE --device`` and ``robopt-compile --device``.

Servers come from ``conftest.py`` (a thread of the test process, or a subprocess for the CLI's
start-up and signal handling).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from robopt_compile.bench.cli import main as bench_main
from robopt_compile.bench.manifest import load_manifest
from robopt_compile.bench.remote import (
    pack_bundle,
    read_token_file,
    remote_benchmark,
    save_remote_result,
)
from robopt_compile.bench.serve import BenchServer
from robopt_compile.errors import BackendUnavailableError, InputError

# --- errors ----------------------------------------------------------------------------------


def test_failed_job_maps_to_the_robopt_error(
    ort_bundle: Path, make_server: Callable[..., BenchServer], token: str
) -> None:
    fail = BackendUnavailableError("backend 'onnxruntime' cannot run here: not installed.")
    srv = make_server(fail=fail)
    with pytest.raises(BackendUnavailableError, match=r"^on .+\(http://127.0.0.1:\d+\): backend"):
        remote_benchmark(ort_bundle, srv.url, token, runs=2)


def test_unreachable_server_is_one_line(ort_bundle: Path, token: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(BackendUnavailableError) as info:
        remote_benchmark(ort_bundle, f"http://127.0.0.1:{port}", token, runs=2, retries=0)
    msg = str(info.value)
    assert "\n" not in msg and "connection refused" in msg
    assert msg.endswith("is `robopt-bench serve` running there?")
    # Connection refused is transient (the server may be restarting): retried, then raised.
    notes: list[str] = []
    with pytest.raises(BackendUnavailableError, match="connection refused"):
        remote_benchmark(ort_bundle, f"http://127.0.0.1:{port}", token, runs=2, retries=2,
                         retry_base_s=0.01, on_retry=notes.append)  # fmt: skip
    assert len(notes) == 2 and "retry 2 of 2" in notes[1] and notes[0].startswith("health")
    with pytest.raises(InputError, match="must look like"):
        remote_benchmark(ort_bundle, "ftp://robot", token)


# --- client pieces ---------------------------------------------------------------------------


def test_pack_skips_results_and_refuses_links(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path], tmp_path: Path
) -> None:
    b = bundle_copy(ort_bundle)
    (b / "results").mkdir()
    (b / "results" / "old.json").write_text("{}")
    pack_bundle(b, tmp_path / "p.tar.gz")
    with tarfile.open(tmp_path / "p.tar.gz") as tar:
        names = tar.getnames()
        assert all(m.isreg() and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert "manifest.json" in names and not any(n.startswith("results") for n in names)
    os.symlink(b / "model.onnx", b / "link.onnx")
    with pytest.raises(InputError, match=r"'link\.onnx' is a link"):
        pack_bundle(b, tmp_path / "q.tar.gz")


def test_save_remote_result_is_atomic_and_outside_the_hashes(
    ort_bundle: Path, bundle_copy: Callable[[Path], Path]
) -> None:
    b = bundle_copy(ort_bundle)
    result = {"remote": {"host": "robot/../1"}, "latency": {"p50_ms": 1.0}}
    first, second = save_remote_result(b, result), save_remote_result(b, result)
    assert first != second and first.parent == second.parent == b / "results"
    assert re.fullmatch(r"remote-robot_\.\._1-\d{8}T\d{6}Z(-1)?\.json", first.name), first.name
    assert json.loads(first.read_text()) == result
    assert sorted(p.name for p in (b / "results").iterdir()) == sorted([first.name, second.name])
    load_manifest(b, verify=True)  # results/ is not part of the hashed files


def test_token_file_checks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_token_file(tmp_path / "none")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        read_token_file(tmp_path / "empty")
    (tmp_path / "tok").write_text("short\nignored\n")
    (tmp_path / "tok").chmod(0o644)
    warnings: list[str] = []
    assert read_token_file(tmp_path / "tok", warn=warnings.append) == "short"
    assert any("chmod 600" in w for w in warnings) and any("characters" in w for w in warnings)


def test_robot_side_modules_import_only_the_standard_library() -> None:
    """The robot has numpy, click and one runtime: the server and client need none of them."""
    code = (
        "import sys; before = set(sys.modules); "
        "import robopt_compile.bench.serve, robopt_compile.bench.remote; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(m for m in new if m not in sys.stdlib_module_names "
        "and m != 'robopt_compile' and not m.startswith('_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- the CLIs --------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_token_file(tmp_path: Path) -> None:
    r = CliRunner().invoke(bench_main, ["serve", "--port", "0"])
    assert r.exit_code == 2 and "--token-file" in r.output
    r = CliRunner().invoke(bench_main, ["serve", "--port", "0", "--token-file", "nope"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], lines
    (tmp_path / "empty").write_text("")
    r = CliRunner().invoke(bench_main, ["serve", "--token-file", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "is empty" in r.stderr


def test_serve_subprocess_starts_and_stops_on_sigterm(
    token_file: Path, token: str, tmp_path: Path
) -> None:
    token_file.chmod(0o640)
    work = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from robopt_compile.bench.cli import main; main()", "serve",
         "--token-file", str(token_file), "--port", "0", "--work-dir", str(work)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        while not lines or "listening on" not in lines[-1]:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert any("readable by group or others" in ln for ln in lines)
        url = re.search(r"listening on (http://\S+)", lines[-1]).group(1)  # type: ignore[union-attr]
        req = urllib.request.Request(
            f"{url}/v1/health", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=20) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        rest = proc.stderr.read()
        assert "GET /v1/health 200" in rest and "stopped" in rest and token not in rest
        assert list(work.iterdir()) == []  # the server's folder is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bench_cli_device_end_to_end(
    ort_bundle: Path,
    server: BenchServer,
    token_file: Path,
    bundle_copy: Callable[[Path], Path],
) -> None:
    b = bundle_copy(ort_bundle)
    args = [str(b), "--device", server.url, "--token-file", str(token_file), "--runs", "5"]
    r = CliRunner().invoke(bench_main, [*args, "--warmup", "1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["fidelity"]["passed"] is True and result["latency"]["n"] == 5
    assert result["bundle"] == str(b.resolve()) and result["remote"]["url"] == server.url
    saved = list((b / "results").glob("remote-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == result
    assert r.stderr.strip() == f"robopt-bench: saved {saved[0]}"
    r = CliRunner().invoke(bench_main, args)
    assert r.exit_code == 0, r.output
    assert "fidelity    PASS" in r.stdout and "remote      " in r.stdout and "saved" in r.stdout
    assert len(list((b / "results").glob("remote-*.json"))) == 2
    r = CliRunner().invoke(bench_main, [str(b), "--device", server.url])
    assert r.exit_code == 2 and "URL needs --token-file" in r.stderr


def test_bench_cli_remote_fidelity_failure_exits_4(
    ort_bundle: Path,
    server: BenchServer,
    token_file: Path,
    bundle_copy: Callable[[Path], Path],
    rehash: Callable[[Path], None],
) -> None:
    b = bundle_copy(ort_bundle)
    path = b / "reference" / "outputs.npz"
    with np.load(path) as z:
        outs = {k: z[k] for k in z.files}
    np.savez(path, action=outs["action"] + 1.0, value=outs["value"])
    rehash(b)
    r = CliRunner().invoke(
        bench_main, [str(b), "--device", server.url, "--token-file", str(token_file), "--runs", "2"]
    )
    assert r.exit_code == 4 and "fidelity    FAIL" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("robopt-bench: error: engine fidelity")


def test_compile_with_device(
    source: dict[str, Any],
    server: BenchServer,
    token_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from robopt_compile.cli import main as compile_main

    def compile_(*args: str) -> int:
        with pytest.raises(SystemExit) as exit_:
            compile_main([str(source["onnx"]), "-t", "host", "-b", "onnxruntime", *args])
            raise SystemExit(0)
        return int(exit_.value.code or 0)

    out = tmp_path / "out"
    code = compile_("-o", str(out), "--threads", "1", "--device", server.url,
                    "--token-file", str(token_file))  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "remote bench  " in captured.out and "fidelity PASS" in captured.out
    (saved,) = (out / "results").glob("remote-*.json")
    assert json.loads(saved.read_text())["fidelity"]["passed"] is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    out2 = tmp_path / "out2"
    code = compile_("-o", str(out2), "--device", dead, "--token-file", str(token_file), "--json")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    err = [line for line in lines if not line.startswith("robopt-compile: warning:")]
    assert code == 3 and len(err) == 1 and "cannot reach" in err[0], err
    assert sum("Retrying in" in line for line in lines) == 3  # refused is transient
    assert "was written and kept" in err[0] and (out2 / "manifest.json").is_file()
    assert captured.out == ""  # --json: no half answer on stdout
    shutil.rmtree(out2)
    code = compile_("-o", str(out2), "--device", dead)
    assert code == 2 and not out2.exists()  # refused before building
