"""The device farm (robopt_compile/farm): the registry through ``robopt-bench devices``, the
queue per board and its leases, and three real ``robopt-bench serve`` processes on loopback
serving a queue of ``robopt-bench BUNDLE --device any:host`` jobs while one is killed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.remote import LoopbackServer
from robopt_compile.cli.bench import main as bench_main
from robopt_compile.farm import add_device, leases, waiting
from robopt_compile.farm.queue import BoardQueue, NoFreeRobotError
from robopt_compile.store import open_store
from tests.service.serving import free_port, wait_for

ROBOPT_BENCH = str(Path(sys.executable).parent / "robopt-bench")


def _robot(where: Path) -> LoopbackServer:
    where.mkdir(parents=True)
    return LoopbackServer(where)


def _cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(bench_main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_registry_commands_and_bad_input(host_bundle: Path, store_path: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    robot = _robot(tmp_path / "r1")
    try:
        tok = tmp_path / "tok"
        tok.write_text(robot.token + "\n")
        tok.chmod(0o600)
        s = ("--store", str(store_path))
        code, out, err = _cli("devices", "add", "r1", robot.url, "--board", "host",
                              "--token-file", str(tok), *s)  # fmt: skip
        assert code == 0 and out.startswith(f"added r1 (host, {robot.url}): up"), err
        code, _, err = _cli("devices", "add", "r1", robot.url, "--board", "host",
                            "--token-file", str(tok), *s)  # fmt: skip
        assert code == 2 and "a device named 'r1' exists" in err and err.count("\n") == 1
        code, _, err = _cli("devices", "add", "r2", robot.url, "--board", "no-such-board",
                            "--token-file", str(tok), *s)  # fmt: skip
        assert code == 2 and "--board no-such-board" in err and err.count("\n") == 1
        dead = f"http://127.0.0.1:{free_port()}"
        code, _, err = _cli("devices", "add", "gone", dead, "--board", "x86-64-avx2",
                            "--token-file", str(tok), *s)  # fmt: skip
        assert code == 0 and "was added but does not answer" in err
        code, out, err = _cli("devices", "ls", *s)
        assert code == 3 and robot.token not in out + err  # a robot is down: exit 3
        assert out.splitlines()[1].split()[:3] == ["r1", "host", "up"]
        assert "gone: cannot reach" in out
        code, out, _ = _cli("devices", "ls", "--board", "host", "--json", *s)
        doc = json.loads(out)
        assert code == 0 and [d["name"] for d in doc["devices"]] == ["r1"]
        assert robot.token not in out and doc["devices"][0]["health"]["reachable"]

        # Bad --device values: one line, exit 2, nothing run.
        b = str(shutil.copytree(host_bundle, tmp_path / "b"))
        code, _, err = _cli(b, "--device", "any:rk3588", *s)
        assert code == 2 and "built for host, not rk3588" in err and err.count("\n") == 1
        code, _, err = _cli(b, "--device", "any:no-board", *s)
        assert code == 2 and "--device any:no-board" in err
        code, _, err = _cli(b, "--device", "nobody", *s)
        assert code == 2 and "no device 'nobody'" in err
        code, _, err = _cli(b, "--device", "robot:8470", *s)
        assert code == 2 and "needs --token-file" in err

        # A registered robot by name: no token file; the result says which robot.
        code, out, err = _cli(b, "--device", "r1", "--runs", "5", "--json", *s)
        assert code == 0, err
        r = json.loads(out)
        assert r["remote"]["farm"]["device"]["name"] == "r1" and r["fidelity"]["passed"]
        code, out, err = _cli(b, "--device", "r1", "--runs", "5", *s)
        assert code == 0 and "\nfarm        robot r1 (host), queued " in out, err
        with open_store(str(store_path)) as st:
            assert not leases(st) and not waiting(st)  # the lease and the place ended

        assert _cli("devices", "rm", "gone", *s)[0] == 0
        code, _, err = _cli("devices", "rm", "gone", *s)
        assert code == 2 and "no device 'gone'" in err
    finally:
        robot.close()


_HOLD = """
import sys, time
from robopt_compile.store import open_store
from robopt_compile.farm.queue import BoardQueue
st = open_store(sys.argv[1])
with BoardQueue(st, "x86-64-avx2", "holder") as q:
    q.acquire(set(), 30)
    print("held", flush=True)
    time.sleep(300)
"""


def test_queue_is_first_come_first_served_and_dead_holders_are_reaped(store_path: Path) -> None:
    with open_store(str(store_path)) as st:
        dev = add_device(st, "a1", "http://127.0.0.1:9", "t" * 32, "x86-64-avx2")
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store_path)],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with BoardQueue(st, "x86-64-avx2", "first") as q1, \
                    BoardQueue(st, "x86-64-avx2", "second") as q2:  # fmt: skip
                t0 = time.monotonic()
                with pytest.raises(NoFreeRobotError, match=r"came free within 0\.5 s"):
                    q1.acquire(set(), 0.5)
                assert time.monotonic() - t0 < 5
                assert waiting(st) == {"x86-64-avx2": 2}
                holder.send_signal(signal.SIGKILL)  # dies holding the robot: reaped by pid
                holder.wait(30)
                assert q2._try_take(set())[0] is None  # q1 came first
                assert q1.acquire(set(), 10)["id"] == dev["id"]
                assert leases(st)[dev["id"]]["label"] == "first"
                with pytest.raises(NoFreeRobotError, match="no x86-64-avx2 robot is left"):
                    q2.acquire({dev["id"]}, 10)  # the only robot already failed this job
            assert not leases(st) and not waiting(st)
        finally:
            holder.kill()
            holder.wait()


def test_every_job_finishes_once_when_a_robot_is_killed(host_bundle: Path, store_path: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    robots = [_robot(tmp_path / f"r{i}") for i in range(3)]
    procs: list[subprocess.Popen[str]] = []
    try:
        with open_store(str(store_path)) as st:
            ids = [add_device(st, f"r{i}", r.url, r.token, "host")["id"]
                   for i, r in enumerate(robots)]  # fmt: skip
        jobs = []
        for j in range(5):
            b = tmp_path / f"job{j}"
            shutil.copytree(host_bundle, b)
            jobs.append(b)
            # A paced 10 Hz control loop of 30 steps: every job holds its robot ~3 s.
            procs.append(subprocess.Popen(
                [ROBOPT_BENCH, str(b), "--device", "any:host", "--runs", "30", "--warmup", "2",
                 "--control-rate", "10", "--json", "--store", str(store_path)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        with open_store(str(store_path)) as st:
            wait_for(lambda: ids[1] in leases(st), 120, "a job on robot r1")
        robots[1].proc.send_signal(signal.SIGKILL)  # r1 dies mid-job
        outs = [p.communicate(timeout=240) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        results = [json.loads(out) for out, _ in outs]
        for b in jobs:  # every job finished exactly once
            assert len(list((b / "results").glob("remote-*.json"))) == 1
        moved = [r for r in results if "r1" in r["remote"]["farm"]["tried"]]
        assert len(moved) == 1 and moved[0]["remote"]["farm"]["device"]["name"] != "r1"
        assert "moving it to another host robot" in outs[results.index(moved[0])][1]
        assert all(r["fidelity"]["passed"] for r in results)
        with open_store(str(store_path)) as st:
            assert not leases(st) and not waiting(st)
            assert [d["name"] for d in st.query("SELECT name FROM devices WHERE "
                                                "down_until IS NOT NULL")] == ["r1"]  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for r in robots:
            r.close()
