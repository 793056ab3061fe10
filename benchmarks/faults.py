"""``make bench`` section "faults": replay the attacks of issue 15 on a real ``robopt-bench serve``.

The server is the real CLI in its own process on 127.0.0.1 (port 0, a token file, a private
work dir), with the default limits, so its memory can be read honestly from
``/proc/PID/status`` (``VmHWM``, the peak resident set, reset through ``clear_refs`` before
each archive attack). A zoo model compiled for ``host`` (onnxruntime) is the legitimate bundle.

Each attack is replayed as the issue describes it and its outcome recorded: the answer (status
and its line, cut short), how long it took, and for the archive attacks the server's peak RSS
during the attack; the slow-client attacks also time a legitimate request while they run. A
second loopback address (127.0.0.2) plays "another client".

Standalone: ``python -m benchmarks.faults`` prints the markdown section.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import select
import shutil
import signal
import socket
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.remote import LoopbackServer
from robopt_compile.jsonutil import sha256_file

OTHER_IP = "127.0.0.2"  # another client
GUESS_IP = "127.0.0.3"  # the token guesser
MiB = 1 << 20


class _Server(LoopbackServer):
    """The loopback server, with its memory figures from ``/proc``."""

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` figure in bytes (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else 0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def stop(self) -> None:
        self.close()


def _request(
    port: int,
    method: str,
    path: str,
    token: str | None,
    body: bytes = b"",
    source: str = "127.0.0.1",
    timeout: float = 60,
) -> tuple[int, dict[str, Any], float]:
    """(status, the JSON answer, seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    finally:
        conn.close()
    return resp.status, data, time.perf_counter() - t0


def _line(data: dict[str, Any], n: int = 300) -> str:
    """The answer in a few words: its error line, else the job's state."""
    return str(data.get("error") or data.get("state") or data.get("status") or "")[:n]


def _gzip(parts: Iterator[bytes]) -> bytes:
    """Compress a stream of pieces (gigabytes of them) with a few MiB of memory."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(p) for p in parts]
    out.append(z.flush())
    return b"".join(out)


def _header(name: str, size: int, type_: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, type_
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _repeat(byte: bytes, n: int) -> Iterator[bytes]:
    chunk = byte * MiB
    while n > 0:
        yield chunk[: min(n, MiB)]
        n -= MiB


def _bomb(kind: str, size: int) -> bytes:
    """A tar.gz whose first header carries ``size`` bytes: a GNU long name ("L"), a PAX
    record ("x"), or the data of one regular file of zeros ("0")."""

    def parts() -> Iterator[bytes]:
        if kind == "L":
            yield _header("././@LongLink", size, b"L")
            yield from _repeat(b"a", size)
        elif kind == "x":
            record_head = b" comment="
            n = size - len(record_head) - 1
            digits = len(str(size))
            yield _header("././@PaxHeader", size, b"x")
            yield str(size).encode() + record_head
            yield from _repeat(b"a", n - digits)
            yield b"\n"
        else:
            yield _header("zeros.bin", size, tarfile.REGTYPE)
            yield from _repeat(b"\0", size)
        yield b"\0" * (-size % 512)
        yield _header("manifest.json", 2, tarfile.REGTYPE) + b"{}" + b"\0" * 510
        yield b"\0" * 1024

    return _gzip(parts())


def _outside_bundle(bundle: Path, work: Path, model: str, backend: str | None = None) -> bytes:
    """The bundle with engine.config.model pointing outside it (or, with ``backend``, claiming
    to be a native-code engine of that backend), re-hashed, packed."""
    from robopt_compile.bench.remote import pack_bundle

    b = work / f"outside-{len(model)}-{backend}"
    shutil.copytree(bundle, b)
    mpath = b / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["engine"]["config"]["model"] = model
    if backend is not None:
        manifest["backend"] = manifest["engine"]["backend"] = backend
    manifest["files"] = {
        p.relative_to(b).as_posix(): sha256_file(p)
        for p in sorted(b.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and "results" not in p.parts
    }
    mpath.write_text(json.dumps(manifest, indent=2))
    pack_bundle(b, b.with_suffix(".tar.gz"))
    return b.with_suffix(".tar.gz").read_bytes()


def _health_ms(port: int, token: str, n: int = 20, source: str = "127.0.0.1") -> dict[str, Any]:
    times, codes = [], []
    for _ in range(n):
        code, _, s = _request(port, "GET", "/v1/health", token, source=source, timeout=30)
        times.append(s * 1e3)
        codes.append(code)
    return {
        "p50_ms": statistics.median(times),
        "max_ms": max(times),
        "statuses": sorted(set(codes)),
    }


def _connect(n: int, port: int, first: bytes = b"") -> tuple[list[socket.socket], list[float]]:
    """``n`` connections, each sent ``first``; with the time each was established."""
    socks, opened = [], []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(time.monotonic())
        if first:
            s.sendall(first)
        socks.append(s)
    return socks, opened


def _drip(
    socks: list[socket.socket], opened: list[float], every_s: float, limit_s: float
) -> list[dict[str, Any]]:
    """Send one byte per socket every ``every_s`` until the server closes each (or
    ``limit_s``); per socket: how long after it connected it was closed, and the status."""
    t0 = time.monotonic()
    got = [b""] * len(socks)
    closed: dict[int, float] = {}
    next_send = t0
    while len(closed) < len(socks) and time.monotonic() - t0 < limit_s:
        live = [s for i, s in enumerate(socks) if i not in closed]
        if time.monotonic() >= next_send:
            for s in live:
                with contextlib.suppress(OSError):
                    s.send(b"X")
            next_send += every_s
        readable, _, _ = select.select(live, [], [], max(0.0, next_send - time.monotonic()))
        for s in readable:
            i = socks.index(s)
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            if chunk:
                got[i] += chunk
            else:
                closed[i] = time.monotonic() - opened[i]
    return [
        {"closed_s": closed.get(i), "status": got[i][9:12].decode() or "none"}
        for i in range(len(socks))
    ]


def _summary(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[float | None]] = {}
    for r in rows:
        by.setdefault(r["status"], []).append(r["closed_s"])
    parts = []
    for status, when in sorted(by.items()):
        done = [w for w in when if w is not None]
        span = f", closed after {min(done):.1f}-{max(done):.1f} s" if done else ", never closed"
        parts.append(f"{len(when)} x {status}{span}")
    return "; ".join(parts)


def bench_faults(
    work: Path, log: Callable[[str], None], model: str = "state-mlp"
) -> dict[str, Any]:
    """Replay each attack on a fresh ``robopt-bench serve``; the outcomes (see module doc)."""
    from robopt_compile.bench.machine import machine_summary
    from robopt_compile.bench.remote import pack_bundle
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    work.mkdir(parents=True, exist_ok=True)
    bundle = work / f"faults-{model}"
    log(f"[bench] faults: compiling zoo:{model} for host, onnxruntime, 1 thread")
    compile_model(f"zoo:{model}", bundle, CompileOptions(target="host", backend="onnxruntime",
                                                         threads=1), force=True)  # fmt: skip
    pack_bundle(bundle, work / "good.tar.gz")
    good = (work / "good.tar.gz").read_bytes()
    other_ip = True
    try:
        with socket.socket() as s:
            s.bind((OTHER_IP, 0))
    except OSError:
        other_ip = False

    srv = _Server(work)
    port, token = srv.port, srv.token
    rows: list[dict[str, Any]] = []

    def row(attack: str, sent: str, outcome: str, seconds: float | None, **extra: Any) -> None:
        rows.append({"attack": attack, "sent": sent, "outcome": outcome, "seconds": seconds,
                     **extra})  # fmt: skip
        log(f"[bench] faults: {attack}: {outcome}")

    def post(
        body: bytes, query: str = "runs=10&warmup=0&threads=1", source: str = "127.0.0.1"
    ) -> tuple[int, dict[str, Any], float]:
        return _request(port, "POST", f"/v1/jobs?{query}", token, body, source=source)

    def view(job_id: str) -> dict[str, Any]:
        return _request(port, "GET", f"/v1/jobs/{job_id}", token)[1]

    try:
        code, job, s = post(good, "runs=100&warmup=10&threads=1&wait=1")
        assert code == 200 and job["state"] == "done", (code, _line(job))
        baseline_rss = srv.status("VmRSS")
        row("legitimate upload (baseline)", f"{len(good) / MiB:.2f} MiB tar.gz, runs=100",
            f"{code} {job['state']}", s, rss_mib=baseline_rss / MiB)  # fmt: skip

        # -- archives and manifests (peak RSS of the server during each) --
        archive_attacks: list[tuple[str, str, bytes]] = [
            ("manifest path outside the bundle", "engine.config.model = '/etc/passwd'",
             _outside_bundle(bundle, work, "/etc/passwd")),
            ("manifest path outside the bundle", "engine.config.model = '../../x'",
             _outside_bundle(bundle, work, "../../x")),
            ("native code without --allow-native-code", "a bundle whose engine is a TVM library",
             _outside_bundle(bundle, work, "model.ort-opt.onnx", backend="tvm")),
        ]  # fmt: skip
        for kind, what in (("L", "GNU long-name header"), ("x", "PAX header")):
            body = _bomb(kind, 256 * MiB)
            archive_attacks.append(
                (f"{what} bomb", f"{len(body) / 1024:.0f} KB tar.gz, 256 MiB header", body)
            )
        body = _bomb("0", 512 * MiB)
        archive_attacks.append(
            ("gzip bomb", f"{len(body) / 1024:.0f} KB tar.gz of 512 MiB of zeros", body)
        )
        for attack, sent, body in archive_attacks:
            srv.reset_peak()
            code, answer, s = post(body)
            row(attack, sent, f"{code}: {_line(answer)}", s,
                peak_rss_mib=srv.status("VmHWM") / MiB)  # fmt: skip

        # -- limits on the job --
        code, answer, s = post(good, "runs=1000000000")
        row("huge runs", "runs=1000000000", f"{code}: {_line(answer)}", s)

        job_id = post(good, "runs=100000&warmup=0&threads=1")[1]["id"]
        _until(lambda: view(job_id)["progress"]["done"] > 0)
        code, ended, s = _request(port, "DELETE", f"/v1/jobs/{job_id}?wait=30", token)
        row("cancel a running job", "DELETE /v1/jobs/<id> during runs=100000",
            f"{code} {ended['state']}: {_line(ended)} (after {ended['progress']['done']} "
            "runs)", s)  # fmt: skip

        # -- slow clients --
        legit_ip = OTHER_IP if other_ip else "127.0.0.1"
        quiet = _health_ms(port, token, source=legit_ip)
        socks, opened = _connect(20, port, b"GET /v1/health HTTP/1.1\r\nX-Slow: ")
        busy: dict[str, Any] = {}
        t = threading.Thread(target=lambda: busy.update(_health_ms(port, token, source=legit_ip)))
        time.sleep(0.5)
        t.start()
        drip = _drip(socks, opened, every_s=1.0, limit_s=30)
        t.join()
        for s_ in socks:
            s_.close()
        row("slowloris x20", "request line, then 1 header byte per second each",
            _summary(drip), None, legit_quiet=quiet, legit_busy=busy)  # fmt: skip

        flood, opened = _connect(40, port)
        drip = _drip(flood, opened, every_s=0.5, limit_s=30)
        for s_ in flood:
            s_.close()
        row("connection flood x40", "40 connections that send 1 byte per 0.5 s",
            _summary(drip), None)  # fmt: skip

        head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {10 * MiB}\r\n\r\n").encode()  # fmt: skip
        slow, opened = _connect(8, port, head)
        legit: dict[str, Any] = {}

        def legit_uploads() -> None:
            time.sleep(0.5)  # while the slow ones hold their slots
            legit["other"] = post(good, source=OTHER_IP) if other_ip else None
            legit["same"] = post(good)

        t = threading.Thread(target=legit_uploads)
        t.start()
        drip = _drip(slow, opened, every_s=1.0, limit_s=40)
        t.join()
        for s_ in slow:
            s_.close()
        other, same = legit["other"], legit["same"]
        row("slow authenticated uploads x8", "1 body byte per second each, one address",
            _summary(drip), None,
            legit_other=None if other is None else f"{other[0]} in {other[2] * 1e3:.0f} ms",
            legit_same=f"{same[0]}: {_line(same[1]).rstrip('.')}")  # fmt: skip

        # -- auth brute force (from a third address: the lock-out lasts a minute) --
        guesser = GUESS_IP if other_ip else "127.0.0.1"
        codes = [_request(port, "GET", "/v1/health", f"guess-{i}", source=guesser)[0]
                 for i in range(30)]  # fmt: skip
        right, _, _ = _request(port, "GET", "/v1/health", token, source=guesser)
        elsewhere = (
            _request(port, "GET", "/v1/health", token, source=OTHER_IP)[0] if other_ip else None
        )
        row("token brute force", "30 wrong tokens in a row from one address",
            f"{codes.count(401)} x 401 then {codes.count(429)} x 429; the right token from "
            f"that address: {right}; from another address: {elsewhere}", None)  # fmt: skip
        if not other_ip:
            time.sleep(61)  # the lock-out of 127.0.0.1 ends

        # -- shutdown during a job --
        job_id = post(good, "runs=100000&warmup=0&threads=1")[1]["id"]
        _until(lambda: view(job_id)["progress"]["done"] > 0)
        t0 = time.perf_counter()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(60)
        took = time.perf_counter() - t0
        time.sleep(0.2)
        log_text = "\n".join(srv.lines)
        aborted = "terminate called" in log_text
        row("SIGTERM during a job", "runs=100000 running",
            f"exit {rc}{', C++ abort' if aborted else ', clean'}; job "
            f"{'cancelled' if 'was cancelled' in log_text else 'not cancelled'}", took)  # fmt: skip
    finally:
        srv.stop()
    return {
        "model": model,
        "machine": machine_summary("onnxruntime")["cpu_model"],
        "other_address": other_ip,
        "baseline_rss_mib": baseline_rss / MiB,
        "rows": rows,
    }


def _until(cond: Callable[[], Any], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("the server never got there")
        time.sleep(0.02)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report_lines(d: dict[str, Any]) -> list[str]:
    """Markdown lines for the bench report."""
    out = [
        "## Faults: `robopt-bench serve` under attack (issue 15)",
        "",
        f"A real `robopt-bench serve` subprocess on 127.0.0.1 with the default limits; "
        f"zoo:{d['model']} (onnxruntime) is the legitimate bundle ({d['machine']}). Peak RSS "
        "is the server's `VmHWM`, reset before each archive attack; the server used "
        f"{d['baseline_rss_mib']:.0f} MiB after a legitimate job. "
        + ("A second loopback address (127.0.0.2) plays another client." if d["other_address"]
           else "No second loopback address here: every request came from 127.0.0.1."),
        "",
        "| attack | sent | outcome | time (s) | server peak RSS (MiB) |",
        "|---|---|---|---:|---:|",
    ]  # fmt: skip
    for r in d["rows"]:
        peak = r.get("peak_rss_mib", r.get("rss_mib"))
        cell = "-" if peak is None else f"{peak:.0f}"
        outcome = r["outcome"].replace("|", "/")
        out.append(f"| {r['attack']} | {r['sent']} | {outcome} | {_s(r['seconds'])} | {cell} |")
    slow = next((r for r in d["rows"] if r["attack"] == "slowloris x20"), None)
    up = next((r for r in d["rows"] if r["attack"].startswith("slow authenticated")), None)
    out.append("")
    if slow:
        q, b = slow["legit_quiet"], slow["legit_busy"]
        out.append(
            f"A legitimate `GET /v1/health` (20 in a row): p50 {q['p50_ms']:.1f} ms (max "
            f"{q['max_ms']:.1f}) with no slow client, p50 {b['p50_ms']:.1f} ms (max "
            f"{b['max_ms']:.1f}) while the 20 slowloris connections were open; statuses "
            f"{q['statuses']} / {b['statuses']}."
        )
    if up:
        out.append(
            f"During the 8 slow uploads, a legitimate upload from another address got "
            f"{up['legit_other'] or 'not tried'}; one from the slow uploads' address got "
            f"{up['legit_same']}."
        )
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="state-mlp")
    ap.add_argument("--json", type=Path, help="Also write the section's figures here.")
    args = ap.parse_args()

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="robopt-bench-faults-") as work:
        section = bench_faults(Path(work), log, model=args.model)
    if args.json:
        args.json.write_text(json.dumps(section, indent=2))
    print("\n".join(report_lines(section)))


if __name__ == "__main__":
    main()
