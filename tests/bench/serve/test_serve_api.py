"""``robopt-bench serve`` through its HTTP API, with real bundles: the good path, the
refusals (token, sizes, lengths, settings, unsafe archives, tampered bundles, manifest paths)
and the queue (503 when full, the client's retries until it has room).

Servers come from ``conftest.py``; a request here is raw ``http.client``, headers exactly as
given, so a test controls what the server sees.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from robopt_compile.bench.harness import run_benchmark
from robopt_compile.bench.remote import pack_bundle, remote_benchmark
from robopt_compile.bench.serve import BenchServer, HTTPError, parse_settings
from robopt_compile.errors import InputError

OWN = "<the server's own token>"


def request(
    srv: BenchServer,
    method: str,
    path: str,
    body: bytes = b"",
    token: str | None = OWN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """A raw request: headers exactly as given (Content-Length only when ``headers`` lack it
    and there is a body), with ``srv``'s own token unless ``token`` says another (None: no
    Authorization header); the answer's status and JSON."""
    if token == OWN:
        token = srv.token.decode()
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


def test_good_job_matches_the_local_harness(
    ort_bundle: Path, server: BenchServer, token: str
) -> None:
    remote = remote_benchmark(ort_bundle, server.url, token, runs=20, warmup=2, threads=1)
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
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer], token: str
) -> None:
    # More wrong tokens than the default 10 per minute (then 429: test_serve_faults.py).
    server = make_server(max_auth_failures=100)
    calls = server.runner
    for given in (None, "wrong", token + "x"):
        assert request(server, "GET", "/v1/health", token=given)[0] == 401
        assert request(server, "GET", "/v1/jobs/abc", token=given)[0] == 401
        assert request(server, "DELETE", "/v1/nope", token=given)[0] == 401
    # The body is not read: an answer comes although only 10 of 10**6 declared bytes arrive.
    status, err = request(
        server, "POST", "/v1/jobs", b"x" * 10, "wrong", {"Content-Length": str(10**6)}
    )
    assert status == 401 and "token" in err["error"]
    status, _ = request(server, "POST", "/v1/jobs", packed, token="Bearer-not")
    assert status == 401
    with pytest.raises(InputError, match=r"token rejected by .*: check --token-file"):
        remote_benchmark(ort_bundle, server.url, "wrong", runs=2)
    assert calls.count == 0  # type: ignore[attr-defined]
    assert job_dirs(server.root.parent) == [] and list(server.root.iterdir()) == []


def test_oversized_upload_is_413_before_reading(
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer], token: str
) -> None:
    srv = make_server(max_upload_bytes=1000)
    status, err = request(srv, "POST", "/v1/jobs", b"x" * 10, headers={"Content-Length": "5000"})
    assert status == 413 and "at most" in err["error"]
    status, err = request(srv, "POST", "/v1/jobs", packed, headers={"Expect": "100-continue"})
    assert status == 413
    with pytest.raises(InputError, match="takes at most"):
        remote_benchmark(ort_bundle, srv.url, token, runs=2)
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


def test_cut_and_short_uploads_are_400(packed: bytes, server: BenchServer, token: str) -> None:
    half = packed[: len(packed) // 2]  # declared length cuts the archive
    status, err = request(server, "POST", "/v1/jobs", half)
    assert status == 400 and "not a valid tar" in err["error"]
    port = server.httpd.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
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
    token: str,
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
        remote_benchmark(b, server.url, token, runs=2, verify=False)
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


# --- the queue -------------------------------------------------------------------------------


def test_queue_full_is_503(packed: bytes, make_server: Callable[..., BenchServer]) -> None:
    srv = make_server(max_queue=1, hold=True)
    held = srv.runner
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
    ort_bundle: Path, packed: bytes, make_server: Callable[..., BenchServer], token: str
) -> None:
    """503 (queue full) is transient: the client waits, doubling, and gets in once the
    queue drains; a non-transient answer (bad token) is never retried."""
    srv = make_server(max_queue=1, hold=True)
    held = srv.runner
    notes: list[str] = []

    def on_retry(msg: str) -> None:
        notes.append(msg)
        held.release.set()  # the robot finishes its work while the client waits

    try:
        status, a = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert wait_state(srv, a["id"], ("running",))["position"] is None
        status, b = request(srv, "POST", "/v1/jobs?runs=2&warmup=0", packed)
        assert status == 202 and b["position"] == 1  # the queue is full now
        r = remote_benchmark(ort_bundle, srv.url, token, runs=3, warmup=0, retries=8,
                             retry_base_s=0.05, on_retry=on_retry)  # fmt: skip
    finally:
        held.release.set()
    assert r["fidelity"]["passed"] and held.count == 3
    assert notes and all(n.startswith("upload:") and "is busy" in n for n in notes)
    with pytest.raises(InputError, match="token rejected"):
        remote_benchmark(ort_bundle, srv.url, "wrong-token", runs=2, retries=3,
                         retry_base_s=0.01, on_retry=notes.append)  # fmt: skip
    assert all("token" not in n for n in notes)
