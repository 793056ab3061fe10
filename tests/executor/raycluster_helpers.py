"""A real Ray cluster on 127.0.0.1 for the executor tests, started with Ray's own CLI.

``ray start --head`` with 2 CPUs, its own temporary folder and free ports; stopped by killing
the processes that belong to that folder only (``ray stop`` would stop every cluster of the
machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, cpus: int = 2) -> None:
        self.cpus = cpus
        # Short: Ray's unix sockets live under it (107-byte path limit).
        self.temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
        self.port = free_port()
        self.client_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client = f"ray://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
               f"--num-cpus={self.cpus}", "--include-dashboard=false",
               "--disable-usage-stats", f"--temp-dir={self.temp}"]  # fmt: skip
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed: {r.stderr[-2000:]}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the client server starts a moment later
            try:
                socket.create_connection(("127.0.0.1", self.client_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the Ray client server did not open its port")

    def pids(self) -> list[int]:
        """Processes of this cluster: their command line names its temporary folder, or they
        hold a file open in it (every Ray process writes its logs there; the client server
        and the agents retitle themselves)."""
        out = []
        root = str(self.temp)
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                mine = root in cmd or any(
                    os.readlink(fd).startswith(root) for fd in (p / "fd").iterdir()
                )
            except OSError:
                continue
            if mine:
                out.append(int(p.name))
        return out

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


def worker_pids(title: str) -> list[int]:
    """Ray workers running a task: Ray titles the process ``ray::<function name>``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(f"ray::{title}"):
            out.append(int(p.name))
    return out
