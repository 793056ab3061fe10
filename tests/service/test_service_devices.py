"""Robots as devices: a real ``robopt-bench serve`` on loopback registered with the platform,
its health, a benchmark job dispatched to it, and a robot that does not answer."""

from __future__ import annotations

from benchmarks.remote import LoopbackServer
from tests.service.serving import free_port, wait_for
from tests.service.test_service_api import tiny_onnx


def _ended(c, job_id: str) -> dict:
    return wait_for(lambda: (j := c.get(f"/api/v1/jobs/{job_id}").json())["state"]
                    not in ("queued", "running") and j, 180, f"job {job_id[:8]}")  # fmt: skip


def test_benchmark_job_on_a_registered_robot(server, tmp_path) -> None:
    robot = LoopbackServer(tmp_path)
    try:
        with server.client(server.tokens["operator"]) as c:
            m = c.post(
                "/api/v1/models",
                files={"model": ("p.onnx", tiny_onnx(tmp_path / "p.onnx").read_bytes())},
            )
            job = c.post("/api/v1/jobs", json={"model": m.json()["id"], "target": "host"}).json()
            assert _ended(c, job["id"])["state"] == "finished"
            with server.client(server.tokens["viewer"]) as v:
                r = v.post(
                    "/api/v1/devices",
                    json={"name": "arm", "url": robot.url, "token": robot.token, "board": "host"},
                )
                assert r.status_code == 403
            r = c.post(
                "/api/v1/devices",
                json={
                    "name": "arm-1",
                    "url": robot.url,
                    "token": robot.token,
                    "board": "no-such-board",
                },
            )
            assert r.status_code == 422 and "no-such-board" in r.json()["error"]
            dev = c.post(
                "/api/v1/devices",
                json={"name": "arm-1", "url": robot.url, "token": robot.token, "board": "host"},
            ).json()
            assert "token" not in dev and all(
                "token" not in d for d in c.get("/api/v1/devices").json()
            )
            h = c.get(f"/api/v1/devices/{dev['id']}/health").json()
            assert h["reachable"] and h["health"]
            b = c.post(
                "/api/v1/jobs",
                json={"kind": "bench", "bundle_job": job["id"], "device": dev["id"], "runs": 20},
            ).json()
            done = _ended(c, b["id"])
            assert done["state"] == "finished", c.get(f"/api/v1/jobs/{b['id']}/log").text
            bm = done["result"]["benchmark"]
            assert bm["fidelity"]["passed"] and bm["latency"]["p50_ms"] > 0
            assert bm["remote"]["url"] == robot.url

            dead = c.post(
                "/api/v1/devices",
                json={
                    "name": "gone",
                    "url": f"http://127.0.0.1:{free_port()}",
                    "token": "x",
                    "board": "host",
                },
            ).json()
            h = c.get(f"/api/v1/devices/{dead['id']}/health").json()
            assert not h["reachable"] and h["error"]
            b = c.post(
                "/api/v1/jobs",
                json={"kind": "bench", "bundle_job": job["id"], "device": dead["id"]},
            ).json()
            failed = _ended(c, b["id"])
            assert failed["state"] == "failed" and "does not answer" in failed["error"]
            feed = c.get("/api/v1/notifications").json()
            assert any(n["kind"] == "device_unreachable" and n["job_id"] == b["id"] for n in feed)
            assert c.get("/api/v1/devices/ffff/health").status_code == 404
    finally:
        robot.close()
