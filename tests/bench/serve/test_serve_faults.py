"""``robopt-bench serve`` under attack (issue 15, defects 1, 2, 6 and 7), on a real server.

Every test talks to a real ``BenchServer`` on 127.0.0.1 (port 0) or, for signals, a real
``robopt-bench serve`` subprocess. Deadlines are shortened through the server's own settings
so each test ends in a few seconds; every socket has a timeout, so a regression fails the
test instead of hanging it. A second loopback address (127.0.0.2) plays "another client".
``work`` and ``packed`` come from conftest.py; ``make_server`` here holds the worker by default.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import select
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from robopt_compile.bench.remote import cancel_job, pack_bundle, remote_benchmark
from robopt_compile.bench.serve import BenchServer, HTTPError, harness_runner, parse_settings
from robopt_compile.errors import BackendUnavailableError, InputError

TOKEN = "test-token-0123456789abcdefghijklmnop"
OTHER_IP = "127.0.0.2"


class Held:
    """A runner that holds the worker until released (then runs the real harness)."""

    def __init__(self) -> None:
        self.count = 0
        self.release = threading.Event()

    def __call__(self, bundle: Path, settings: dict[str, Any], progress: Any) -> dict[str, Any]:
        self.count += 1
        assert self.release.wait(30), "the test never released the worker"
        return harness_runner(bundle, settings, progress)


def endless(bundle: Path, settings: dict[str, Any], progress: Any) -> dict[str, Any]:
    """A job that only ends when the server stops it through its progress callback."""
    for _ in range(3000):  # 30 s at most, should the server never stop it
        time.sleep(0.01)
        progress(1)
    raise AssertionError("the server never stopped the job")


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def make_server(work: Path, logs: list[str]) -> Iterator[Callable[..., BenchServer]]:
    """Overrides conftest.py's: the worker is held by default and the log is kept."""
    servers: list[BenchServer] = []

    def make(**kw: Any) -> BenchServer:
        kw.setdefault("runner", Held())
        s = BenchServer(TOKEN, port=0, work_dir=work, log=logs.append, **kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        if isinstance(s.runner, Held):
            s.runner.release.set()
        s.close(grace_s=5)


def port(srv: BenchServer) -> int:
    return int(srv.httpd.server_address[1])


def request(
    srv: BenchServer,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = TOKEN,
    source: str = "127.0.0.1",
    timeout: float = 20,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """One request from ``source``: status, JSON answer, the response (for headers)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port(srv), timeout=timeout, source_address=(source, 0)
    )
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request(method, path, body=body or None, headers=headers)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data, resp


def wait_for(cond: Callable[[], Any], what: str, limit_s: float = 10.0) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {limit_s} s")


def wait_state(srv: BenchServer, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    return wait_for(
        lambda: (v := srv.view(job_id, wait_s=0.05))["state"] in states and v,
        f"job {job_id} never reached {states}",
    )


def job_dirs(work: Path) -> list[Path]:
    return list(work.glob("robopt-serve-*/job-*"))


def gz(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def no_leak(text: str, srv: BenchServer, *secrets_: str) -> None:
    """An answer names no server path and echoes no long request data."""
    assert str(srv.root) not in text and str(srv.root.parent) not in text, text
    assert "/tmp/" not in text and len(text) < 400, text
    for s in secrets_:
        assert s not in text, text


# --- defect 2: archive headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["gnu-longname", "pax-path", "pax-comment", "long-name", "long-part"],
)
def test_archive_header_bombs_are_400_and_echo_nothing(
    kind: str, make_server: Callable[..., BenchServer], work: Path
) -> None:
    """A multi-megabyte GNU long-name or PAX header is refused from its 512-byte header,
    before its data is read; a long member name is refused with a short, path-free line."""
    srv = make_server()
    big = "a" * (8 << 20)  # 8 MiB of name: gzip makes it about 8 KiB on the wire
    if kind == "gnu-longname":
        body = gz([(tarfile.TarInfo(big), b"x")], tarfile.GNU_FORMAT)
    elif kind == "pax-path":
        body = gz([(tarfile.TarInfo(big), b"x")])
    elif kind == "pax-comment":
        info = tarfile.TarInfo("manifest.json")
        info.pax_headers = {"comment": big}
        body = gz([(info, b"{}")])
    elif kind == "long-name":
        body = gz([(tarfile.TarInfo("d/" * 600 + "f"), b"x")])
    else:
        body = gz([(tarfile.TarInfo("b" * 2000), b"x")])
    assert len(body) < 64 << 10
    t0 = time.monotonic()
    status, err, _ = request(srv, "POST", "/v1/jobs", body)
    assert status == 400, err
    assert time.monotonic() - t0 < 5
    header_bomb = kind in ("gnu-longname", "pax-path", "pax-comment")
    assert ("header" if header_bomb else "name") in err["error"], err
    no_leak(err["error"], srv, "a" * 100, "b" * 100, "d/" * 60)
    assert job_dirs(work) == [] and srv.runner.count == 0  # type: ignore[attr-defined]


def test_internal_errors_do_not_echo_paths(
    packed: bytes, make_server: Callable[..., BenchServer], logs: list[str]
) -> None:
    """A server fault (here: its work folder was deleted under it, as a tmp cleaner would)
    is a 500 with a generic line; the detail, with paths, goes to the server log only."""
    import shutil

    srv = make_server()
    shutil.rmtree(srv.root)
    status, err, _ = request(srv, "POST", "/v1/jobs", packed)
    assert status == 500 and "see the server log" in err["error"], err
    no_leak(err["error"], srv)
    assert any(str(srv.root) in line for line in logs), logs


# --- defect 7: unpacked size --------------------------------------------------------------


def test_compression_bomb_stops_at_the_ratio_limit(
    make_server: Callable[..., BenchServer], work: Path
) -> None:
    """64 MiB of zeros gzip to ~64 KiB: unpacking stops near 20 x the bytes received
    (+ 1 MiB), long before the file's declared size, with a 413."""
    srv = make_server()
    body = gz([(tarfile.TarInfo("zeros.bin"), bytes(64 << 20))])
    assert len(body) < 200 << 10
    status, err, _ = request(srv, "POST", "/v1/jobs", body)
    assert status == 413, err
    m = re.search(r"after writing ([\d.]+) MiB", err["error"])
    assert m and float(m.group(1)) < 8, err  # stopped at the limit, not at 64 MiB
    no_leak(err["error"], srv)
    assert job_dirs(work) == []


def test_unpacked_limit_is_fixed_not_scaled_by_the_upload_limit(
    make_server: Callable[..., BenchServer],
) -> None:
    srv = make_server(max_upload_bytes=64 << 30)
    assert srv.max_unpacked_bytes == 4 << 30  # was 4 x the upload limit (256 GiB here)
    small = make_server(max_unpacked_bytes=1 << 20)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:  # uncompressed: the ratio is ~1
        info = tarfile.TarInfo("weights.bin")
        info.size = 2 << 20
        tar.addfile(info, io.BytesIO(bytes(range(256)) * (info.size // 256)))
    status, err, _ = request(small, "POST", "/v1/jobs", plain.getvalue())
    assert status == 413 and "--max-unpacked-mb" in err["error"], err


# --- defect 1: paths the manifest names ---------------------------------------------------


@pytest.mark.parametrize(
    "model", ["/etc/passwd", "/etc/robopt-no-such-file", "../../x", "../../../../etc/passwd"]
)
def test_manifest_paths_are_checked_on_their_own(
    model: str,
    ort_bundle: Path,
    make_server: Callable[..., BenchServer],
    bundle_copy: Callable[[Path], Path],
    rehash: Callable[[Path], None],
    tmp_path: Path,
) -> None:
    """engine.config.model '/etc/passwd' used to become 'engine//etc/passwd' and pass as
    inside the bundle; now it is 422 before any runtime is touched, and the answer is the
    same whether the file exists or not."""
    srv = make_server()
    b = bundle_copy(ort_bundle)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["engine"]["config"]["model"] = model
    (b / "manifest.json").write_text(json.dumps(manifest))
    rehash(b)
    pack_bundle(b, tmp_path / "m.tar.gz")
    status, err, _ = request(srv, "POST", "/v1/jobs", (tmp_path / "m.tar.gz").read_bytes())
    assert status == 422, err
    assert err["error"] == (
        f"manifest.json: engine.config.model {model!r} leads outside the bundle (absolute "
        "paths and '..' are refused)."
    )
    assert srv.runner.count == 0  # type: ignore[attr-defined]
    no_leak(err["error"], srv)


# --- defect 6: denial of service ----------------------------------------------------------


def _drip(socks: list[socket.socket], limit_s: float) -> dict[int, tuple[float, bytes]]:
    """Send one header byte per socket every 0.2 s (each read well within any per-read
    timeout) until the server closes them or ``limit_s`` passes; (close time, answer)."""
    t0 = time.monotonic()
    closed: dict[int, tuple[float, bytes]] = {}
    got: dict[int, bytes] = {i: b"" for i in range(len(socks))}
    while len(closed) < len(socks) and time.monotonic() - t0 < limit_s:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            with contextlib.suppress(OSError):
                s.send(b"X")
            while select.select([s], [], [], 0)[0]:
                try:
                    chunk = s.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    closed[i] = (time.monotonic() - t0, got[i])
                    break
                got[i] += chunk
        time.sleep(0.2)
    return closed


def test_slow_headers_are_cut_at_the_header_deadline(
    make_server: Callable[..., BenchServer],
) -> None:
    """Slowloris: headers dripped a byte at a time are cut when the whole header deadline
    passes (408), not kept alive by each byte resetting a per-read timeout."""
    srv = make_server(header_timeout_s=1.0)
    socks = [socket.create_connection(("127.0.0.1", port(srv)), timeout=5) for _ in range(5)]
    try:
        for s in socks:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nX-Drip: ")
        closed = _drip(socks, limit_s=6)
    finally:
        for s in socks:
            s.close()
    assert len(closed) == 5, closed
    for when, answer in closed.values():
        assert when < 3.5 and answer.startswith(b"HTTP/1.1 408"), (when, answer[:200])
    assert request(srv, "GET", "/v1/health")[0] == 200


def test_connection_cap_answers_503_at_once(make_server: Callable[..., BenchServer]) -> None:
    srv = make_server(max_connections=3, header_timeout_s=10.0)
    idle = [socket.create_connection(("127.0.0.1", port(srv)), timeout=5) for _ in range(3)]
    try:
        wait_for(lambda: srv.open_connections == 3, "three connections open")
        t0 = time.monotonic()
        status, err, _ = request(srv, "GET", "/v1/health", timeout=5)
        assert status == 503 and "connections" in err["error"], err
        assert time.monotonic() - t0 < 1.0
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: request(srv, "GET", "/v1/health")[0] == 200, "served after the cap")


def _slow_upload(srv: BenchServer, length: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port(srv)), timeout=10, source_address=(source, 0))
    s.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + b"\x1f\x8b"  # two bytes of a gzip header, then nothing
    )
    return s


def _other_ip_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind((OTHER_IP, 0))
        return True
    except OSError:
        return False


needs_other_ip = pytest.mark.skipif(not _other_ip_works(), reason=f"cannot bind {OTHER_IP}")


@needs_other_ip
def test_slow_uploads_cannot_hold_the_queue(
    packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    """Two authenticated uploads trickling from one address take that address's upload slots
    only: a third from it is 503, another client's upload is accepted, and the trickling
    ones are dropped (408) once they fall below the minimum rate after the grace period."""
    srv = make_server(upload_grace_s=1.5, min_upload_rate=64 << 10, max_uploads_per_ip=2)
    slow = [_slow_upload(srv, len(packed)) for _ in range(2)]
    try:
        t0 = time.monotonic()
        wait_for(lambda: srv.health()["queue"]["uploading"] == 2, "two uploads under way")
        status, err, _ = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 503 and "uploads" in err["error"], err
        status, job, _ = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed, source=OTHER_IP)
        assert status == 202, job
        answers = []
        for s in slow:
            s.settimeout(6)
            answers.append(s.makefile("rb").read())
        took = time.monotonic() - t0
    finally:
        for s in slow:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    assert all(b"slower than 64 KiB/s" in a for a in answers), answers
    assert took < 5, took
    assert srv.health()["queue"]["uploading"] == 0


def test_runs_warmup_and_paced_duration_are_bounded(
    packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    for query, word in (
        ("runs=1000000000", "runs"),
        ("runs=100001", "runs"),
        ("warmup=10001", "warmup"),
        ("threads=100000", "threads"),
        ("runs=1000&control_rate=1", "control_rate"),  # a 1000 s paced loop
    ):
        with pytest.raises(HTTPError, match=word) as info:
            parse_settings(query)
        assert info.value.status == 400
    srv = make_server()
    status, err, _ = request(srv, "POST", "/v1/jobs?runs=1000000000", packed)
    assert status == 400 and "at most 100000" in err["error"], err
    assert parse_settings("runs=100000&warmup=10000")[0]["runs"] == 100000


def test_delete_cancels_queued_and_running_jobs(
    packed: bytes, make_server: Callable[..., BenchServer], work: Path
) -> None:
    """DELETE stops a running job (the real harness, between chunks of timed runs) and
    takes a queued one off the queue; both end as failed jobs that say so."""
    srv = make_server(runner=harness_runner)
    status, job, _ = request(srv, "POST", "/v1/jobs?runs=100000&warmup=0&threads=1", packed)
    assert status == 202
    wait_for(lambda: srv.view(job["id"])["progress"]["done"] > 0, "timed runs started")
    status, view, _ = request(srv, "DELETE", f"/v1/jobs/{job['id']}?wait=10")
    assert status == 200 and view["state"] == "failed", view
    assert "cancelled" in view["error"] and view["exit_code"] == 3
    assert view["progress"]["done"] < 100000
    assert request(srv, "DELETE", f"/v1/jobs/{job['id']}")[0] == 409
    assert request(srv, "DELETE", "/v1/jobs/0123456789abcdef")[0] == 404
    assert request(srv, "DELETE", f"/v1/jobs/{job['id']}", token="wrong")[0] == 401

    held = Held()
    srv2 = make_server(runner=held)
    a = request(srv2, "POST", "/v1/jobs?runs=2&warmup=0", packed)[1]
    wait_state(srv2, a["id"], ("running",))
    b = request(srv2, "POST", "/v1/jobs?runs=2&warmup=0", packed)[1]
    status, view, _ = request(srv2, "DELETE", f"/v1/jobs/{b['id']}")
    assert status == 200 and view["state"] == "failed" and "cancelled" in view["error"]
    held.release.set()
    assert wait_state(srv2, a["id"], ("done",))["result"]["fidelity"]["passed"] is True
    assert held.count == 1 and job_dirs(work) == []


def test_a_job_is_stopped_at_its_wall_clock_limit(
    packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    srv = make_server(runner=endless, max_job_s=0.5)
    job = request(srv, "POST", "/v1/jobs?runs=100&warmup=0", packed)[1]
    t0 = time.monotonic()
    view = wait_state(srv, job["id"], ("failed",))
    assert "--max-job-s" in view["error"] and view["exit_code"] == 3, view
    assert time.monotonic() - t0 < 5


def test_the_client_cancels_what_it_stops_waiting_for(
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer]
) -> None:
    srv = make_server(runner=endless)
    with pytest.raises(BackendUnavailableError, match="was cancelled there"):
        remote_benchmark(ort_bundle, srv.url, TOKEN, runs=2, job_timeout=0.3, retries=0)
    (job,) = [srv.view(j) for j in list(srv._jobs)]
    assert job["state"] == "failed" and "cancelled" in job["error"]
    queued = make_server()  # Held: the first job runs, the second waits
    a = request(queued, "POST", "/v1/jobs?runs=2&warmup=0", packed)[1]
    b = request(queued, "POST", "/v1/jobs?runs=2&warmup=0", packed)[1]
    assert cancel_job(queued.url, TOKEN, b["id"])["state"] == "failed"
    with pytest.raises(InputError, match="409"):
        cancel_job(queued.url, TOKEN, b["id"])
    assert queued.view(a["id"])["state"] in ("queued", "running")


def test_failed_tokens_are_rate_limited_per_address(
    ort_bundle: Path, make_server: Callable[..., BenchServer]
) -> None:
    srv = make_server()
    for _ in range(10):
        assert request(srv, "GET", "/v1/health", token="wrong")[0] == 401
    status, err, resp = request(srv, "GET", "/v1/health", token="wrong")
    assert status == 429 and "too many" in err["error"], err
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert request(srv, "GET", "/v1/health")[0] == 429  # the token is not even compared
    with pytest.raises(InputError, match="refuses this address for now: too many wrong tokens"):
        remote_benchmark(ort_bundle, srv.url, TOKEN, retries=0)
    if _other_ip_works():
        assert request(srv, "GET", "/v1/health", source=OTHER_IP)[0] == 200


# --- clean shutdown -----------------------------------------------------------------------


def _start_cli(token_file: Path, work: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from robopt_compile.bench.cli import main; main()", "serve",
         "--token-file", str(token_file), "--port", "0", "--work-dir", str(work), *extra],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    while not lines or "listening on" not in lines[-1]:
        line = proc.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    return proc, int(re.search(r"127\.0\.0\.1:(\d+)", lines[-1]).group(1))  # type: ignore[union-attr]


def _post(port_: int, body: bytes, query: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port_, timeout=20)
    conn.request("POST", f"/v1/jobs?{query}", body=body,
                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status == 202, data
    return data


def _progress(port_: int, job_id: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port_, timeout=20)
    conn.request("GET", f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    return json.loads(conn.getresponse().read())


@pytest.mark.parametrize("phase", ["timed", "paced"])
def test_sigterm_during_a_job_exits_cleanly(phase: str, packed: bytes, tmp_path: Path) -> None:
    """SIGTERM while the real harness runs: the job is cancelled (timed loop) or, where the
    harness cannot be interrupted (a paced control loop), left after --stop-grace-s; either
    way the process exits 0 without C++ "terminate called", and its folder is gone."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    work = tmp_path / "w"
    proc, port_ = _start_cli(token_file, work, "--stop-grace-s", "1")
    try:
        query = (
            "runs=100000&warmup=0&threads=1"
            if phase == "timed"
            else "runs=300&warmup=0&threads=1&control_rate=10"  # a 30 s paced loop
        )
        job = _post(port_, packed, query)
        if phase == "timed":
            wait_for(lambda: _progress(port_, job["id"])["progress"]["done"] > 0, "timing")
        else:
            wait_for(lambda: _progress(port_, job["id"])["progress"]["done"] == 300, "paced")
            time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        took = time.monotonic() - t0
        assert proc.stderr is not None
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, rest
    assert "terminate called" not in rest and "Traceback" not in rest, rest
    assert "stopped" in rest and list(work.iterdir()) == []
    if phase == "timed":
        assert "cancelled" in rest and took < 5, (took, rest)
    else:
        assert "did not stop" in rest and took < 6, (took, rest)


@pytest.mark.parametrize("backend", ["tvm", "tensorrt"])
def test_native_code_bundles_need_allow_native_code(
    backend: str,
    ort_bundle: Path,
    make_server: Callable[..., BenchServer],
    bundle_copy: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    """A TVM library or a prebuilt TensorRT engine is code its author chose: refused unless
    the robot's owner started the server with --allow-native-code."""
    b = bundle_copy(ort_bundle)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["backend"] = manifest["engine"]["backend"] = backend  # manifest.json is not hashed
    (b / "manifest.json").write_text(json.dumps(manifest))
    pack_bundle(b, tmp_path / "n.tar.gz")
    body = (tmp_path / "n.tar.gz").read_bytes()
    strict = make_server()
    status, err, _ = request(strict, "POST", "/v1/jobs", body)
    assert status == 422 and "--allow-native-code" in err["error"], err
    assert strict.runner.count == 0  # type: ignore[attr-defined]
    trusting = make_server(allow_native_code=True)
    status, view, _ = request(trusting, "POST", "/v1/jobs", body)
    assert status == 202, view
