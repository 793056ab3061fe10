"""``make bench`` section ``platform``: what the HTTP API and the job queue cost (issue 18).

Everything runs against a real ``robopt-compile serve`` on 127.0.0.1 with its own store:

- **API overhead**: the same compile (``zoo:visuomotor-cnn``, host, int8, random
  calibration, ``--no-cache`` so both sides do all the work) started from the CLI (a
  ``robopt-compile`` process) and submitted as a job over HTTP (POST, then poll until it ends);
  rounds alternate which goes first. Goal: the job's wall time <= 5% over the CLI's.
- **Under load**: 50 clients (one token each) poll the job's status twice a second while the
  same compile runs, once per round; p50/p99 of all their request latencies, and the median
  loaded wall time against the median unloaded job's. Goals: p99 < 100 ms; within 10%.
- **Restart**: jobs are queued, then the server is killed with SIGKILL at 10 random moments
  and restarted each time; at the end every job must have finished exactly once (one
  ``job_finished`` notification, one finished session, one bundle). Goal: 0 lost, 0 duplicated.

The clients (aiohttp, one session per client) run in this process at nice 0 on the same 2
cores as the server (nice 0) and the job (nice 10): their own CPU is part of what they measure.
With httpx clients (about 7 s of CPU per compile) the nice-10 job ran +19% to +31% slower
under load; with the clients moved to nice 19 it ran +1.4% but their own scheduling delays
pushed their p99 to 133 ms: both measured the benchmark's clients more than the server.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SOURCE = "zoo:visuomotor-cnn"
OPTIONS = {"precision": "int8", "calibration": "random", "threads": 1, "cache": False}
CLI = ["--target", "host", "--precision", "int8", "--calibration", "random", "--threads", "1",
       "--no-cache", "--force"]  # fmt: skip
CLIENTS = 50
POLL_HZ = 2.0


def _server(work: Path, workers: int = 1) -> Any:
    from tests.service.serving import Server, make_token

    store = work / "store"
    srv = Server(store, workers=workers, extra=("--rate-limit", "50"))
    srv.token = make_token(store, "operator", "bench")
    return srv


def _job_wall(srv: Any, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    with srv.client(srv.token) as c:
        t0 = time.perf_counter()
        job = c.post("/api/v1/jobs", json=body).json()
        while True:
            j = c.get(f"/api/v1/jobs/{job['id']}").json()
            if j["state"] not in ("queued", "running"):
                return time.perf_counter() - t0, j
            time.sleep(0.05)


def _cli_wall(work: Path, i: int) -> float:
    env = {**os.environ, "ROBOPT_STORE": str(work / "cli-store")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robopt_compile.cli", SOURCE, "-o",
                    str(work / f"cli-{i}"), *CLI], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


async def _poll(url: str, tokens: list[str], job_id: str) -> list[float]:
    """Each client polls the job until it ends; every request's latency in ms. aiohttp: it
    takes about a quarter of httpx's CPU per request (0.3 vs 1.1 ms measured here), and these
    clients share the 2 cores with the server and the compile they measure."""
    import aiohttp

    lat: list[float] = []
    stop = asyncio.Event()
    clients = [aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {tok}"},
                                     timeout=aiohttp.ClientTimeout(total=10))
               for tok in tokens]  # fmt: skip

    async def client(c: Any, delay: float) -> None:
        await asyncio.sleep(delay)
        while not stop.is_set():
            t0 = time.perf_counter()
            async with c.get(f"/api/v1/jobs/{job_id}") as r:
                state = (await r.json())["state"] if r.status == 200 else None
            lat.append((time.perf_counter() - t0) * 1e3)
            if state not in ("queued", "running"):
                stop.set()
            await asyncio.sleep(1 / POLL_HZ)

    try:
        await asyncio.gather(*(client(c, i / CLIENTS / POLL_HZ) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    return lat


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loaded(srv: Any, body: dict[str, Any]) -> dict[str, Any]:
    from tests.service.serving import make_token

    tokens = [make_token(srv.store, "viewer", f"client-{i}") for i in range(CLIENTS)]
    server0, clients0 = _cpu_s(srv.proc.pid), time.process_time()
    with srv.client(srv.token) as c:
        t0 = time.perf_counter()
        job = c.post("/api/v1/jobs", json=body).json()
    lat = asyncio.run(_poll(srv.url, tokens, job["id"]))
    wall = time.perf_counter() - t0
    lat.sort()
    return {"latencies": lat, "p99_ms": lat[int(0.99 * (len(lat) - 1))], "wall_s": wall,
            "server_cpu_s": _cpu_s(srv.proc.pid) - server0,
            "clients_cpu_s": time.process_time() - clients0}  # fmt: skip


def _restarts(work: Path, log: Any, kills: int, jobs: int, seed: int = 0) -> dict[str, Any]:
    from robopt_compile.store import open_store
    from tests.service.serving import Server, make_token

    rng = random.Random(seed)
    store = work / "restart-store"
    srv = Server(store)
    tok = make_token(store, "operator", "bench")
    srv.start()
    with srv.client(tok) as c:
        ids = [c.post("/api/v1/jobs", json={"source": "zoo:state-mlp",
                                            "options": {"threads": 1}}).json()["id"]
               for _ in range(jobs)]  # fmt: skip
    for k in range(kills):
        time.sleep(rng.uniform(0.5, 4.0))
        srv.kill()
        srv.start()
        log(f"[bench] platform: kill -9 {k + 1}/{kills}")
    t0 = time.monotonic()
    with srv.client(tok) as c:
        while time.monotonic() - t0 < 600:
            states = [c.get(f"/api/v1/jobs/{i}").json()["state"] for i in ids]
            if all(s not in ("queued", "running") for s in states):
                break
            time.sleep(0.5)
    srv.stop()
    with open_store(str(store)) as st:
        rows = {r["id"]: r for r in st.query("SELECT * FROM jobs")}
        finished_notes = {i: st.query("SELECT COUNT(*) FROM notifications WHERE job_id=? AND "
                                      "kind='job_finished'", (i,))[0][0] for i in ids}  # fmt: skip
        sessions = {i: st.query("SELECT COUNT(*) FROM sessions WHERE state='finished' AND "
                                "criteria LIKE ?", (f'%"{i}"%',))[0][0] for i in ids}  # fmt: skip
    lost = [i for i in ids if rows[i]["state"] != "finished"
            or not (store / "jobs" / i / "bundle" / "manifest.json").is_file()]  # fmt: skip
    dup = [i for i in ids if finished_notes[i] > 1 or sessions[i] > 1]
    return {"kills": kills, "jobs": jobs, "lost": len(lost), "duplicated": len(dup),
            "attempts": sorted(rows[i]["attempts"] for i in ids),
            "states": sorted(rows[i]["state"] for i in ids)}  # fmt: skip


def bench_platform(work: Path, log: Any, rounds: int = 3, kills: int = 10) -> dict[str, Any]:
    work = Path(work) / "platform"
    work.mkdir(parents=True, exist_ok=True)
    srv = _server(work)
    srv.start()
    body = {"source": SOURCE, "target": "host", "options": OPTIONS}
    try:
        _job_wall(srv, body)  # warm: the first job imports and loads what the others reuse
        cli, api, loads = [], [], []
        for r in range(rounds):  # each round: the CLI, the job alone, the job under load
            order = ("cli", "api", "load") if r % 2 == 0 else ("load", "api", "cli")
            for side in order:
                if side == "cli":
                    cli.append(_cli_wall(work, r))
                elif side == "api":
                    wall, j = _job_wall(srv, body)
                    assert j["state"] == "finished", j
                    api.append(wall)
                else:
                    loads.append(_loaded(srv, body))
            log(f"[bench] platform: round {r + 1}/{rounds}: CLI {cli[-1]:.2f} s, API "
                f"{api[-1]:.2f} s, under load {loads[-1]['wall_s']:.2f} s "
                f"(p99 {loads[-1]['p99_ms']:.1f} ms)")  # fmt: skip
    finally:
        srv.stop()
    restart = _restarts(work, log, kills, jobs=8)
    cli_s, api_s = statistics.median(cli), statistics.median(api)
    loaded = _pooled(loads)
    return {"rounds": rounds, "cli_s": cli, "api_s": api, "cli_median_s": cli_s,
            "api_median_s": api_s, "overhead_pct": (api_s / cli_s - 1) * 100,
            "loaded": loaded, "loaded_vs_alone_pct": (loaded["wall_s"] / api_s - 1) * 100,
            "restart": restart, "clients": CLIENTS, "poll_hz": POLL_HZ}  # fmt: skip


def _pooled(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """The loaded rounds together: every request's latency pooled, medians of the rest."""
    lat = sorted(x for ld in loads for x in ld["latencies"])
    med = {k: statistics.median(ld[k] for ld in loads)
           for k in ("wall_s", "server_cpu_s", "clients_cpu_s")}  # fmt: skip
    return {"requests": len(lat), "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(0.99 * (len(lat) - 1))], "max_ms": lat[-1],
            "walls_s": [ld["wall_s"] for ld in loads], **med}  # fmt: skip


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _cpu_row(ld: dict[str, Any]) -> list[str]:
    if "server_cpu_s" not in ld:
        return []
    return [
        f"| CPU used meanwhile by the API server / the 50 clients (s, of {ld['wall_s']:.1f} s "
        f"wall on 2 cores) | {ld['server_cpu_s']:.1f} / {ld['clients_cpu_s']:.1f} | | |"
    ]


def _walls(ld: dict[str, Any]) -> str:
    return ", ".join(f"{w:.1f}" for w in ld.get("walls_s", [ld["wall_s"]]))


def report_lines(m: dict[str, Any]) -> list[str]:
    ld, rs = m["loaded"], m["restart"]
    return [
        "## The platform: API overhead, load and restarts (`robopt-compile serve`)",
        "",
        f"A real server on 127.0.0.1 (1 worker), the same compile ({SOURCE}, host, int8, random "
        "calibration, build cache off) from the CLI and as an HTTP job, "
        f"{m['rounds']} rounds (the CLI, the job alone, the job under load; the order reversed "
        "every other round), medians. The 50 clients (aiohttp, this process, nice 0) run on "
        "the same 2 cores.",
        "",
        "| measure | value | goal | verdict |",
        "|---|---|---|---|",
        f"| compile from the CLI (wall s) | {m['cli_median_s']:.2f} | | |",
        f"| same compile as an HTTP job (wall s, submit to ended) | {m['api_median_s']:.2f} | | |",
        f"| API overhead | {m['overhead_pct']:+.1f}% | <= 5% | {_met(m['overhead_pct'] <= 5)} |",
        f"| {m['clients']} clients polling at {m['poll_hz']:g} Hz: requests (all rounds) | "
        f"{ld['requests']} | | |",
        f"| their latency p50 / p99 / max (ms) | {ld['p50_ms']:.1f} / {ld['p99_ms']:.1f} / "
        f"{ld['max_ms']:.1f} | p99 < 100 | {_met(ld['p99_ms'] < 100)} |",
        f"| the compile under that load vs alone (walls {_walls(ld)} s) | "
        f"{m['loaded_vs_alone_pct']:+.1f}% | within 10% "
        f"| {_met(abs(m['loaded_vs_alone_pct']) <= 10)} |",
        *_cpu_row(ld),
        f"| kill -9 of the server at random moments | {rs['kills']} kills, {rs['jobs']} jobs | | |",
        f"| jobs lost / duplicated | {rs['lost']} / {rs['duplicated']} | 0 / 0 | "
        f"{_met(rs['lost'] == 0 and rs['duplicated'] == 0)} |",
        f"| runs per job (attempts) | {', '.join(map(str, rs['attempts']))} | | |",
        "",
    ]
