"""Faults of the platform: ``kill -9`` of the server during a job (the job resumes in its
session after a restart, nothing lost or duplicated) and clients submitting at once."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

from tests.service.serving import Server, make_token, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kill_9_during_a_job_then_restart_resumes_it(tmp_path) -> None:
    store = tmp_path / "store"
    srv = Server(store)
    tok = make_token(store, "operator", "ci")
    srv.start()
    try:
        with srv.client(tok) as c:
            job = c.post(
                "/api/v1/jobs",
                json={
                    "source": "zoo:visuomotor-cnn",
                    "options": {"precision": "int8", "calibration": "random", "threads": 1},
                },
            ).json()

            def running_with_steps():
                j = c.get(f"/api/v1/jobs/{job['id']}").json()
                if j["state"] != "running" or not j["session_id"]:
                    return None
                s = c.get(f"/api/v1/sessions/{j['session_id']}").json()
                return j if sum(x["state"] == "finished" for x in s["steps"]) >= 2 else None

            j = wait_for(running_with_steps, 120, "two finished stages")
        from robopt_compile.store import open_store

        with open_store(str(store)) as st:
            child = st.query("SELECT worker_pid FROM jobs WHERE id=?", (job["id"],))[0][0]
        srv.kill()  # SIGKILL: no cleanup at all
        wait_for(lambda: not _alive(child), 10, "the job's process to die with the server")
        srv.start()
        with srv.client(tok) as c:
            end = wait_for(
                lambda: (
                    (x := c.get(f"/api/v1/jobs/{job['id']}").json())["state"]
                    in ("finished", "failed", "interrupted")
                    and x
                ),
                300,
                "the resumed job",
            )
            assert end["state"] == "finished", c.get(f"/api/v1/jobs/{job['id']}/log").text
            assert end["attempts"] == 2 and end["session_id"] == j["session_id"]
            sess = c.get(f"/api/v1/sessions/{end['session_id']}").json()
            types = [e["type"] for e in sess["events"]]
            assert "interrupted" in types and types.count("started") == 2
            assert sess["state"] == "finished"
            assert len(c.get("/api/v1/jobs").json()) == 1  # not duplicated
        assert (store / "jobs" / job["id"] / "bundle" / "manifest.json").is_file()
    finally:
        srv.stop()


def test_two_clients_submit_at_once(tmp_path) -> None:
    store = tmp_path / "store"
    srv = Server(store, workers=0)  # the API only: nothing runs, every job stays queued
    tok = make_token(store, "operator", "ci")
    srv.start()
    try:

        def submit(i: int) -> str:
            with srv.client(tok) as c:
                r = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "priority": i % 3})
                assert r.status_code == 201, r.text
                return r.json()["id"]

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(8) as ex:
            ids = list(ex.map(submit, range(40)))
        assert time.monotonic() - t0 < 60
        with srv.client(tok) as c:
            jobs = c.get("/api/v1/jobs").json()
        assert sorted(j["id"] for j in jobs) == sorted(ids) and len(set(ids)) == 40
        from robopt_compile.service import queue
        from robopt_compile.store import open_store

        with open_store(str(store)) as st:  # claim order: priority, then age
            first = queue.claim(st)
            assert first is not None and first.priority == 2
    finally:
        srv.stop()


def test_oversized_upload_413_and_rate_limit_429(tmp_path) -> None:
    store = tmp_path / "store"
    srv = Server(store, workers=0, extra=("--max-upload-mb", "0.001", "--rate-limit", "0.5"))
    tok = make_token(store, "operator", "ci")
    srv.start()
    try:
        with srv.client(tok) as c:
            r = c.post("/api/v1/models", files={"model": ("big.onnx", b"\0" * 5000)})
            assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]
            assert not [p for p in (store / "uploads").rglob("*") if p.is_file()]
            codes = [c.get("/api/v1/me").status_code for _ in range(4)]
            assert codes[-1] == 429 and codes.count(200) >= 1  # a burst of 2, then 0.5/s
            assert "slow down" in c.get("/api/v1/me").json()["error"]
    finally:
        srv.stop()
