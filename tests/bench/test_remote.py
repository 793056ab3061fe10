"""Remote benchmarking against a real ``robopt-bench serve`` on loopback, with real bundles.

Servers run in a thread of the test process (``BenchServer(...).start()``, port 0) or, for the
CLI's start-up and signal handling, in a subprocess. A ``runner`` hook stands in for the
harness where a test needs the worker busy (a threading.Event, no sleeps) or a failing job.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from robopt_compile.bench.cli import main as bench_main
from robopt_compile.bench.harness import run_benchmark
from robopt_compile.bench.manifest import load_manifest
from robopt_compile.bench.remote import (
    pack_bundle,
    read_token_file,
    remote_benchmark,
    save_remote_result,
)
from robopt_compile.bench.serve import BenchServer, HTTPError, harness_runner, parse_settings
from robopt_compile.errors import BackendUnavailableError, InputError

TOKEN = "test-token-0123456789abcdefghijklmnop"


class Calls:
    """A runner that counts its calls and may hold the worker until released."""

    def __init__(self, hold: bool = False, fail: Exception | None = None) -> None:
        self.count = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail

    def __call__(self, bundle: Path, settings: dict[str, Any], progress: Any) -> dict[str, Any]:
        self.count += 1
        assert self.release.wait(30), "the test never released the worker"
        if self.fail is not None:
            raise self.fail
        return harness_runner(bundle, settings, progress)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def make_server(work: Path) -> Iterator[Callable[..., BenchServer]]:
    servers: list[BenchServer] = []

    def make(**kw: Any) -> BenchServer:
        kw.setdefault("runner", Calls())
        s = BenchServer(TOKEN, port=0, work_dir=work, log=lambda line: None, **kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close(grace_s=5)


@pytest.fixture
def server(make_server: Callable[..., BenchServer]) -> BenchServer:
    return make_server()


@pytest.fixture(scope="module")
def packed(ort_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The session bundle as the client uploads it."""
    path = tmp_path_factory.mktemp("packed") / "b.tar.gz"
    pack_bundle(ort_bundle, path)
    return path.read_bytes()


def request(
    srv: BenchServer,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """A raw request: headers exactly as given (Content-Length only when ``headers`` lack it
    and there is a body), the answer's status and JSON."""
    port = srv.httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest(method, path, skip_accept_encoding=True)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if body and "Content-Length" not in h and "Transfer-Encoding" not in h:
        h["Content-Length"] = str(len(body))
    for k, v in h.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


def job_dirs(work: Path) -> list[Path]:
    return list(work.glob("robopt-serve-*/job-*"))


def wait_state(srv: BenchServer, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = srv.view(job_id, wait_s=0.05)
        if view["state"] in states:
            return view
    raise AssertionError(f"job {job_id} never reached {states}")


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def bundle_members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            out.append((tarfile.TarInfo(p.relative_to(bundle).as_posix()), p.read_bytes()))
    return out


# --- the good path ---------------------------------------------------------------------------


def test_good_job_matches_the_local_harness(ort_bundle: Path, server: BenchServer) -> None:
    remote = remote_benchmark(ort_bundle, server.url, TOKEN, runs=20, warmup=2, threads=1)
    local = run_benchmark(ort_bundle, runs=20, warmup=2, threads=1)
    assert remote["fidelity"]["passed"] is True
    assert set(remote) - {"remote"} == set(local)
    for key in ("settings", "model", "backend", "precision", "target", "inputs", "bundle"):
        assert remote[key] == local[key], key
    assert set(remote["latency"]) == set(local["latency"]) and remote["latency"]["n"] == 20
    assert remote["fidelity"]["outputs"].keys() == local["fidelity"]["outputs"].keys()
    rem = remote["remote"]
    assert rem["host"] == socket.gethostname() and rem["server_version"]
    assert rem["upload_bytes"] > 0 and rem["validate_ms"] > 0 and rem["queue_wait_ms"] >= 0
    assert rem["url"] == server.url and rem["overlapping_uploads"] == 0
    assert job_dirs(server.root.parent) == []  # the job folder went with the job


def test_wait_returns_the_finished_job(packed: bytes, server: BenchServer) -> None:
    status, job = request(server, "POST", "/v1/jobs?runs=3&warmup=0&threads=1&wait=1", packed)
    assert status == 200 and job["state"] == "done", job
    assert job["result"]["latency"]["n"] == 3 and job["result"]["settings"]["threads"] == 1
    status, again = request(server, "GET", f"/v1/jobs/{job['id']}")
    assert status == 200 and again["result"] == job["result"]


def test_health(server: BenchServer) -> None:
    status, h = request(server, "GET", "/v1/health")
    assert status == 200 and h["api"] == "v1"
    assert h["runtimes"]["onnxruntime"]["available"] is True
    assert h["queue"] == {"waiting": 0, "uploading": 0, "running": None, "max": 8}
    assert h["machine"]["cores_logical"] >= 1 and h["max_upload_bytes"] == 2048 << 20


# --- refusals --------------------------------------------------------------------------------


def test_bad_token_is_401_and_nothing_happens(
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    # More wrong tokens than the default 10 per minute (then 429: test_serve_faults.py).
    server = make_server(max_auth_failures=100)
    calls = server.runner
    for token in (None, "wrong", TOKEN + "x"):
        assert request(server, "GET", "/v1/health", token=token)[0] == 401
        assert request(server, "GET", "/v1/jobs/abc", token=token)[0] == 401
        assert request(server, "DELETE", "/v1/nope", token=token)[0] == 401
    # The body is not read: an answer comes although only 10 of 10**6 declared bytes arrive.
    status, err = request(
        server, "POST", "/v1/jobs", b"x" * 10, "wrong", {"Content-Length": str(10**6)}
    )
    assert status == 401 and "token" in err["error"]
    status, _ = request(server, "POST", "/v1/jobs", packed, token="Bearer-not")
    assert status == 401
    with pytest.raises(InputError, match=r"token rejected by .*: check --token-file"):
        remote_benchmark(ort_bundle, server.url, "wrong", runs=2)
    assert isinstance(calls, Calls) and calls.count == 0
    assert job_dirs(server.root.parent) == [] and list(server.root.iterdir()) == []


def test_oversized_upload_is_413_before_reading(
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    srv = make_server(max_upload_bytes=1000)
    status, err = request(srv, "POST", "/v1/jobs", b"x" * 10, headers={"Content-Length": "5000"})
    assert status == 413 and "at most" in err["error"]
    status, err = request(srv, "POST", "/v1/jobs", packed, headers={"Expect": "100-continue"})
    assert status == 413
    with pytest.raises(InputError, match="takes at most"):
        remote_benchmark(ort_bundle, srv.url, TOKEN, runs=2)
    assert list(srv.root.iterdir()) == []


def test_length_required_and_bad_requests(packed: bytes, server: BenchServer) -> None:
    assert request(server, "POST", "/v1/jobs")[0] == 411
    chunked = {"Transfer-Encoding": "chunked"}
    assert request(server, "POST", "/v1/jobs", b"0\r\n\r\n", headers=chunked)[0] == 411
    assert request(server, "POST", "/v1/jobs?runs=0", packed)[0] == 400
    assert request(server, "POST", "/v1/jobs?runz=5", packed)[0] == 400
    assert request(server, "POST", "/v1/jobs", b"not a tar archive at all")[0] == 400
    assert request(server, "GET", "/v1/jobs/0123456789abcdef")[0] == 404
    assert request(server, "GET", "/v2/health")[0] == 404
    assert request(server, "GET", "/v1/jobs")[0] == 405
    assert request(server, "POST", "/v1/health", packed)[0] == 405
    assert request(server, "PUT", "/v1/jobs")[0] == 405
    assert server.runner.count == 0  # type: ignore[attr-defined]


def test_settings_parsing() -> None:
    assert parse_settings("runs=5&threads=&control_rate=50&verify=0&wait=1") == (
        {"runs": 5, "warmup": 10, "threads": None, "control_rate": 50.0, "verify": False},
        True,
    )
    for bad in ("runs=-1", "control_rate=0", "control_rate=nan", "threads=x", "runs=1&runs=2"):
        with pytest.raises(HTTPError, match=bad.split("=")[0]) as info:
            parse_settings(bad)
        assert info.value.status == 400


def test_cut_and_short_uploads_are_400(packed: bytes, server: BenchServer) -> None:
    half = packed[: len(packed) // 2]  # declared length cuts the archive
    status, err = request(server, "POST", "/v1/jobs", half)
    assert status == 400 and "not a valid tar" in err["error"]
    port = server.httpd.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(packed) + 100}\r\n\r\n"
        )
        s.sendall(head.encode() + packed)
        s.shutdown(socket.SHUT_WR)  # the stream ends before its declared length
        answer = s.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 400") and "ended after" in answer
    assert server.runner.count == 0  # type: ignore[attr-defined]
    assert job_dirs(server.root.parent) == []


def _evil(kind: str, tmp_path: Path) -> tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]:
    def info(name: str, type_: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        i = tarfile.TarInfo(name)
        i.type, i.linkname = type_, link
        return i

    if kind == "dotdot":
        return [(info("../../../../escaped"), b"x")], "'..'"
    if kind == "absolute":
        return [(info(str(tmp_path / "abs-escaped")), b"x")], "absolute path"
    if kind == "symlink":
        return [(info("engine", tarfile.SYMTYPE, str(tmp_path)), None)], "symbolic link"
    if kind == "hardlink":
        return [(info("f"), b"x"), (info("g", tarfile.LNKTYPE, "f"), None)], "hard link"
    if kind == "fifo":
        return [(info("pipe", tarfile.FIFOTYPE), None)], "FIFO"
    if kind == "device":
        return [(info("dev", tarfile.CHRTYPE), None)], "device"
    assert kind == "duplicate"
    return [(info("manifest.json"), b"{}"), (info("./manifest.json"), b"{}")], "more than once"


@pytest.mark.parametrize(
    "kind", ["dotdot", "absolute", "symlink", "hardlink", "fifo", "device", "duplicate"]
)
def test_unsafe_archives_are_400_and_write_nothing_outside(
    kind: str, ort_bundle: Path, server: BenchServer, tmp_path: Path
) -> None:
    evil, why = _evil(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = request(server, "POST", "/v1/jobs", tar_bytes(bundle_members(ort_bundle) + evil))
    assert status == 400 and why in err["error"], err
    assert "archive member" in err["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs-escaped").exists()
    assert job_dirs(server.root.parent) == [] and server.runner.count == 0  # type: ignore[attr-defined]


def test_tampered_bundle_is_422_and_nothing_runs(
    ort_bundle: Path,
    server: BenchServer,
    bundle_copy: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    b = bundle_copy(ort_bundle)
    archive = tmp_path / "t.tar.gz"
    engine = b / "engine" / "model.ort-opt.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF  # changed after the manifest hashed it
    engine.write_bytes(bytes(data))
    pack_bundle(b, archive)
    status, err = request(server, "POST", "/v1/jobs", archive.read_bytes())
    assert status == 422 and "does not match its sha256" in err["error"], err
    assert str(server.root) not in err["error"]  # no server paths in answers
    with pytest.raises(InputError, match=r"rejected the bundle: .*sha256"):
        remote_benchmark(b, server.url, TOKEN, runs=2, verify=False)
    assert server.runner.count == 0  # type: ignore[attr-defined]
    assert job_dirs(server.root.parent) == []


def test_manifest_path_outside_the_bundle_is_422(
    ort_bundle: Path,
    server: BenchServer,
    bundle_copy: Callable[[Path], Path],
    rehash: Callable[[Path], None],
    tmp_path: Path,
) -> None:
    b = bundle_copy(ort_bundle)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["engine"]["config"]["model"] = "../../../../etc/passwd"
    (b / "manifest.json").write_text(json.dumps(manifest))
    rehash(b)
    pack_bundle(b, tmp_path / "m.tar.gz")
    status, err = request(server, "POST", "/v1/jobs", (tmp_path / "m.tar.gz").read_bytes())
    assert status == 422 and "engine.config.model" in err["error"] and "outside" in err["error"]
    assert server.runner.count == 0  # type: ignore[attr-defined]


def test_queue_full_is_503(packed: bytes, make_server: Callable[..., BenchServer]) -> None:
    held = Calls(hold=True)
    srv = make_server(max_queue=1, runner=held)
    try:
        status, a = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 202 and a["state"] == "queued"
        assert wait_state(srv, a["id"], ("running",))["position"] is None
        status, b = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 202 and b["position"] == 1
        status, err = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 503 and "queue is full" in err["error"]
        status, err = request(srv, "POST", "/v1/jobs", packed, headers={"Expect": "100-continue"})
        assert status == 503
        health = request(srv, "GET", "/v1/health")[1]
        assert health["queue"] == {"waiting": 1, "uploading": 0, "running": a["id"], "max": 1}
    finally:
        held.release.set()
    assert wait_state(srv, b["id"], ("done",))["result"]["fidelity"]["passed"] is True
    assert request(srv, "GET", f"/v1/jobs/{a['id']}")[1]["state"] == "done"
    assert held.count == 2 and job_dirs(srv.root.parent) == []


def test_busy_server_is_retried_with_backoff_until_it_has_room(
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    """503 (queue full) is transient: the client waits, doubling, and gets in once the
    queue drains; a non-transient answer (bad token) is never retried."""
    held = Calls(hold=True)
    srv = make_server(max_queue=1, runner=held)
    notes: list[str] = []

    def on_retry(msg: str) -> None:
        notes.append(msg)
        held.release.set()  # the robot finishes its work while the client waits

    try:
        status, a = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert wait_state(srv, a["id"], ("running",))["position"] is None
        status, b = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 202 and b["position"] == 1  # the queue is full now
        r = remote_benchmark(ort_bundle, srv.url, TOKEN, runs=3, warmup=0, retries=8,
                             retry_base_s=0.05, on_retry=on_retry)  # fmt: skip
    finally:
        held.release.set()
    assert r["fidelity"]["passed"] and held.count == 3
    assert notes and all(n.startswith("upload:") and "is busy" in n for n in notes)
    with pytest.raises(InputError, match="token rejected"):
        remote_benchmark(ort_bundle, srv.url, "wrong-token", runs=2, retries=3,
                         retry_base_s=0.01, on_retry=notes.append)  # fmt: skip
    assert all("token" not in n for n in notes)


def test_failed_job_maps_to_the_robopt_error(
    ort_bundle: Path, make_server: Callable[..., BenchServer]
) -> None:
    fail = BackendUnavailableError("backend 'onnxruntime' cannot run here: not installed.")
    srv = make_server(runner=Calls(fail=fail))
    with pytest.raises(BackendUnavailableError, match=r"^on .+\(http://127.0.0.1:\d+\): backend"):
        remote_benchmark(ort_bundle, srv.url, TOKEN, runs=2)


def test_unreachable_server_is_one_line(ort_bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(BackendUnavailableError) as info:
        remote_benchmark(ort_bundle, f"http://127.0.0.1:{port}", TOKEN, runs=2, retries=0)
    msg = str(info.value)
    assert "\n" not in msg and "connection refused" in msg
    assert msg.endswith("is `robopt-bench serve` running there?")
    # Connection refused is transient (the server may be restarting): retried, then raised.
    notes: list[str] = []
    with pytest.raises(BackendUnavailableError, match="connection refused"):
        remote_benchmark(ort_bundle, f"http://127.0.0.1:{port}", TOKEN, runs=2, retries=2,
                         retry_base_s=0.01, on_retry=notes.append)  # fmt: skip
    assert len(notes) == 2 and "retry 2 of 2" in notes[1] and notes[0].startswith("health")
    with pytest.raises(InputError, match="must look like"):
        remote_benchmark(ort_bundle, "ftp://robot", TOKEN)


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


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


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


def test_serve_subprocess_starts_and_stops_on_sigterm(token_file: Path, tmp_path: Path) -> None:
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
            f"{url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=20) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        rest = proc.stderr.read()
        assert "GET /v1/health 200" in rest and "stopped" in rest and TOKEN not in rest
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
    assert r.exit_code == 2 and "go together" in r.stderr


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
    from robopt_compile.cli.main import main as compile_main

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
