"""A real ``robopt-compile serve`` on 127.0.0.1 (its own store, a free port) and a webhook
receiver on 127.0.0.1 that records what it is sent: shared by tests/service and the ``platform``
section of ``make bench``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(store: Path, role: str, name: str) -> str:
    from robopt_compile.service.tokens import create_token
    from robopt_compile.store import open_store

    with open_store(str(store)) as st:
        return create_token(st, name, role)[1]


class Server:
    """``robopt-compile serve`` in a child process; ``restart`` after a ``kill``."""

    def __init__(self, store: Path, workers: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.store, self.workers, self.extra = store, workers, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"serve-{self.port}.log"

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**os.environ, "ROBOPT_STORE": str(self.store), "ROBOPT_WEBHOOK_RETRY_S": "0.1"}
        cmd = [
            sys.executable,
            "-m",
            "robopt_compile.cli",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--store",
            str(self.store),
            *self.extra,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not answer in {timeout_s} s: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str | None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


class Receiver:
    """A webhook receiver on 127.0.0.1: records (headers, body) of every POST; answers
    ``status`` (settable)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [json.loads(b)["kind"] for _, b in self.got]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(fn: Any, timeout_s: float, what: str) -> Any:
    """Poll ``fn`` until it returns something truthy (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
