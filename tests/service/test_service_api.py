"""The HTTP API against a real server on 127.0.0.1: tokens and roles, uploads and their checks,
a compile job end to end (events, report, bundle download with its hashes), cancel, bad
input, and webhooks with signatures, retries and the dead letter."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from tests.service.serving import wait_for


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A 2-layer MLP (8 -> 16 -> 4) as ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (16, 4)).astype(np.float32), "w2")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["action"])],
        "mlp", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 4])], [w1, w2],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_health_needs_no_token_and_everything_else_does(server) -> None:
    with server.client(None) as c:
        assert c.get("/api/v1/health").json()["ok"] is True
        r = c.get("/api/v1/jobs")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
    with server.client("rbt_000000000000_" + "x" * 43) as c:
        r = c.get("/api/v1/jobs")
        assert r.status_code == 401 and "unknown or revoked" in r.json()["error"]
    with server.client(server.tokens["viewer"]) as c:
        assert c.get("/api/v1/me").json()["role"] == "viewer"
        assert c.get("/api/v1/jobs").status_code == 200


def test_roles(server, tmp_path) -> None:
    body = {"source": "zoo:state-mlp", "target": "host"}
    with server.client(server.tokens["viewer"]) as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 403 and "operator" in r.json()["error"]
        assert c.get("/api/v1/tokens").status_code == 403
    before = len(server.client(server.tokens["admin"]).get("/api/v1/jobs").json())
    assert before == 0  # nothing was queued by the viewer
    with server.client(server.tokens["admin"]) as c:
        made = c.post("/api/v1/tokens", json={"name": "tmp", "role": "viewer"}).json()
        assert made["token"].startswith("rbt_")
        with server.client(made["token"]) as v:
            assert v.get("/api/v1/me").status_code == 200
            c.delete(f"/api/v1/tokens/{made['id']}")
            assert v.get("/api/v1/me").status_code == 401  # revoked: stops at once
        listed = c.get("/api/v1/tokens").json()
        assert all("hash" not in t and "token" not in t for t in listed)


def test_bad_uploads_store_nothing(server, tmp_path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01this is not a protobuf of a model" * 10)
    with server.client(server.tokens["operator"]) as c:
        before = c.get("/api/v1/models").json()
        r = c.post("/api/v1/models", files={"model": ("junk.onnx", junk.read_bytes())})
        assert r.status_code == 422 and "ONNX" in r.json()["error"]
        r = c.post("/api/v1/models", files={"model": ("x.txt", b"hello")})
        assert r.status_code == 422 and ".onnx" in r.json()["error"]
        assert c.get("/api/v1/models").json() == before
    leftovers = (
        list((server.store / "uploads").rglob("*")) if (server.store / "uploads").is_dir() else []
    )
    assert [p for p in leftovers if p.is_file()] == []


def _npz(**arrays: tuple[int, ...] | np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.random.default_rng(0).normal(size=v).astype(np.float32)
                     if isinstance(v, tuple) else v for k, v in arrays.items()})  # fmt: skip
    return buf.getvalue()


def test_bad_calibration_uploads_store_nothing(server, tmp_path) -> None:
    folder = server.store / "uploads" / "calibration"
    before = sorted(folder.glob("*")) if folder.is_dir() else []
    nan = np.zeros((4, 8), np.float32)
    nan[1, 2] = np.nan
    with server.client(server.tokens["operator"]) as c:
        for name, data, status, says in [
            ("obs.txt", b"1 2 3", 422, ".npz"),
            ("obs.npz", b"PK\x03\x04 not a zip", 422, "not a readable .npz"),
            ("obs.npz", _npz(obs=np.array([{"a": 1}, None], dtype=object)), 422, "pickle"),
            ("obs.npz", _npz(obs=nan), 422, "NaN"),
            ("obs.npz", _npz(obs=(4, 8), goal=(3, 2)), 422, "same number"),
            ("obs.npz", _npz(obs=(1, 8)), 422, ">= 2"),
        ]:
            r = c.post("/api/v1/calibrations", files={"data": (name, data)})
            assert r.status_code == status and says in r.json()["error"], (name, r.text)
        model = c.post("/api/v1/models", files={"model": ("p.onnx", tiny_onnx(
            tmp_path / "p.onnx").read_bytes())}).json()  # fmt: skip
        wrong = c.post("/api/v1/calibrations", files={"data": ("x.npz", _npz(x=(4, 8)))}).json()
        for spec, says in [(f"upload:{wrong['id']}", "inputs are ['obs']"),
                           ("upload:../../../etc/passwd", "unknown calibration upload"),
                           ("upload:" + "0" * 32, "unknown calibration upload")]:  # fmt: skip
            r = c.post("/api/v1/jobs", json={"model": model["id"], "options": {
                "precision": "int8", "calibration": spec}})  # fmt: skip
            assert r.status_code == 422 and says in r.json()["error"], (spec, r.text)
        assert c.delete(f"/api/v1/calibrations/{wrong['id']}").status_code == 200
        assert c.delete("/api/v1/calibrations/" + "0" * 32).status_code == 422
    with server.client(server.tokens["viewer"]) as c:
        r = c.post("/api/v1/calibrations", files={"data": ("obs.npz", _npz(obs=(4, 8)))})
        assert r.status_code == 403
        assert c.get("/api/v1/calibrations").status_code == 200
    assert (sorted(folder.glob("*")) if folder.is_dir() else []) == before
    assert list((server.store / "uploads" / "tmp").iterdir()) == []


def test_bad_job_requests_are_422_with_the_cli_message(server) -> None:
    with server.client(server.tokens["operator"]) as c:
        r = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "target": "no-such-board"})
        assert r.status_code == 422 and "no-such-board" in r.json()["error"]
        r = c.post(
            "/api/v1/jobs", json={"source": "zoo:state-mlp", "options": {"precision": "int3"}}
        )
        assert r.status_code == 422 and "int3" in r.json()["error"]
        r = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "options": {"frobnicate": 1}})
        assert r.status_code == 422 and "frobnicate" in r.json()["error"]
        r = c.post("/api/v1/jobs", json={"source": "/etc/passwd"})
        assert r.status_code == 422
        for opt in (
            {"out": "/tmp/x"},
            {"calibration": "/etc"},
            {"metric": "os:system"},
            {"reference_inputs": "/etc/passwd"},
            {"eval": {"dataset": "/x"}},
        ):
            r = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "options": opt})
            assert r.status_code == 422, opt
        assert c.get("/api/v1/jobs/ffffffffffff").status_code == 404
        assert c.get("/api/v1/jobs", params={"state": "bogus"}).status_code == 422
        assert [j for j in c.get("/api/v1/jobs").json() if j["state"] == "queued"] == []


def _verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, headers["x-robopt-signature"])


def test_upload_compile_watch_download(server, tmp_path, receiver) -> None:
    onnx_path = tiny_onnx(tmp_path / "policy.onnx")
    with server.client(server.tokens["operator"]) as c:
        hook = c.post("/api/v1/webhooks", json={"url": receiver.url}).json()
        m = c.post("/api/v1/models", files={"model": ("policy.onnx", onnx_path.read_bytes())},
                   data={"tags": "arm,test"})  # fmt: skip
        assert m.status_code == 201, m.text
        model = m.json()
        assert model["tags"] == ["arm", "test"] and model["inputs"][0]["name"] == "obs"
        cal = c.post("/api/v1/calibrations", files={"data": ("obs.npz", _npz(obs=(24, 8)))})
        assert cal.status_code == 201 and cal.json()["samples"] == 24, cal.text
        r = c.post("/api/v1/jobs", json={
            "model": model["id"], "target": "host",
            "options": {"backend": "onnxruntime", "precision": "int8", "max_drop": 0.5,
                        "calibration": f"upload:{cal.json()['id']}", "threads": 1}})  # fmt: skip
        assert r.status_code == 201, r.text
        job = r.json()
        kinds = []
        with c.stream("GET", f"/api/v1/jobs/{job['id']}/events", timeout=300) as s:
            for line in s.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
        assert kinds[0] == "job" and kinds[-1] == "end" and "session" in kinds
        done = c.get(f"/api/v1/jobs/{job['id']}").json()
        assert done["state"] == "finished", c.get(f"/api/v1/jobs/{job['id']}/log").text
        assert done["progress"] == 1.0 and done["result"]["precision"] == "int8"
        assert c.delete(f"/api/v1/calibrations/{cal.json()['id']}").status_code == 200
        sess = c.get(f"/api/v1/sessions/{done['session_id']}").json()
        assert sess["state"] == "finished" and any(s["name"] == "build" for s in sess["steps"])
        engine = next(m for m in c.get("/api/v1/models").json() if m["source_kind"] == "derived"
                      and m["session_id"] == done["session_id"])  # fmt: skip
        chain = c.get(f"/api/v1/models/{engine['id']}").json()["lineage"]
        assert chain[0]["model"]["id"] == model["id"] and len(chain) == 3  # upload -> src -> engine
        html = c.get(f"/api/v1/jobs/{job['id']}/report.html")
        assert html.status_code == 200 and "<html" in html.text.lower()
        tgz = c.get(f"/api/v1/jobs/{job['id']}/bundle.tar.gz")
        assert tgz.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tgz.content)) as tar:
            tar.extractall(tmp_path / "dl", filter="data")
        from robopt_compile.bench.manifest import load_manifest

        load_manifest(tmp_path / "dl" / "bundle", verify=True)  # every file's sha256 matches
        data = json.loads((tmp_path / "dl" / "bundle" / "report.json").read_text())
        data = data["quantization"]["data"]  # calibrated on the 24 uploaded samples
        assert not data["random"] and data["calibration_count"] + data["holdout_count"] == 24
        wait_for(lambda: "job_finished" in receiver.kinds(), 15, "the job_finished webhook")
        for headers, body in receiver.got:
            assert _verify_signature(hook["secret"], headers, body)
        assert receiver.kinds()[0] == "job_queued" and "stage_finished" in receiver.kinds()
        c.delete(f"/api/v1/webhooks/{hook['id']}")
        feed = c.get("/api/v1/notifications").json()
        assert any(n["kind"] == "job_finished" and n["deliveries"][0]["state"] == "delivered"
                   for n in feed if n["job_id"] == job["id"])  # fmt: skip


def test_webhook_down_retries_then_dead_letter_job_unaffected(server, receiver) -> None:
    receiver.status = 500
    with server.client(server.tokens["operator"]) as c:
        hook = c.post("/api/v1/webhooks", json={"url": receiver.url,
                                                "events": ["job_queued"]}).json()  # fmt: skip
        job = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "priority": -5}).json()
        c.post(f"/api/v1/jobs/{job['id']}/cancel")

        def dead():
            feed = c.get("/api/v1/notifications").json()
            return [d for n in feed if n["job_id"] == job["id"] for d in n["deliveries"]
                    if d["state"] == "dead"]  # fmt: skip

        d = wait_for(dead, 40, "the dead letter")[0]
        assert d["attempts"] == 5 and d["last_status"] == 500 and len(receiver.got) == 5
        assert c.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "cancelled"
        c.delete(f"/api/v1/webhooks/{hook['id']}")


def _slow_job(c, **extra) -> dict:
    """A compile that runs for several seconds (build cache off): time to cancel it."""
    body = {
        "source": "zoo:visuomotor-cnn",
        **extra,
        "options": {"precision": "int8", "cache": False, "calibration": "random"},
    }
    return c.post("/api/v1/jobs", json=body).json()


def test_cancel_a_queued_and_a_running_job(server) -> None:
    with server.client(server.tokens["operator"]) as c:
        slow = _slow_job(c)
        queued = c.post("/api/v1/jobs", json={"source": "zoo:state-mlp", "priority": -1}).json()
        # Running, with its store session open (a job cancelled before that has none).
        wait_for(lambda: (j := c.get(f"/api/v1/jobs/{slow['id']}").json())["state"] == "running"
                 and j["session_id"], 60, "the first job to start")  # fmt: skip
        r = c.post(f"/api/v1/jobs/{queued['id']}/cancel").json()
        assert r["state"] == "cancelled"
        c.post(f"/api/v1/jobs/{slow['id']}/cancel")
        end = wait_for(lambda: (j := c.get(f"/api/v1/jobs/{slow['id']}").json())["state"]
                       in ("cancelled", "finished") and j, 60, "the cancel")  # fmt: skip
        assert end["state"] == "cancelled"
        sess = c.get(f"/api/v1/sessions/{end['session_id']}").json()
        assert sess["state"] == "cancelled"
        r = c.post(f"/api/v1/jobs/{slow['id']}/cancel")
        assert r.status_code == 409
        assert not (server.store / "jobs" / slow["id"] / "bundle").exists()


def test_analysis_and_plan_only_jobs(server) -> None:
    with server.client(server.tokens["operator"]) as c:
        a = c.post("/api/v1/jobs", json={"kind": "analyze", "source": "zoo:state-mlp"}).json()
        p = c.post("/api/v1/jobs", json={"kind": "plan", "source": "zoo:state-mlp",
                                          "plan_only": True,
                                          "criteria": {"max_latency_ms": 5}}).json()  # fmt: skip
        for j in (a, p):
            wait_for(lambda j=j: c.get(f"/api/v1/jobs/{j['id']}").json()["state"]
                     not in ("queued", "running"), 120, f"the {j['kind']} job")  # fmt: skip
        a = c.get(f"/api/v1/jobs/{a['id']}").json()
        assert a["state"] == "finished", c.get(f"/api/v1/jobs/{a['id']}/log").text
        assert a["result"]["analysis"]["facts"]["summary"] and "MAC" in a["result"]["table"]
        p = c.get(f"/api/v1/jobs/{p['id']}").json()
        assert p["state"] == "finished", c.get(f"/api/v1/jobs/{p['id']}/log").text
        assert p["result"]["bundle"] is None and p["result"]["decisions"]
        r = c.post("/api/v1/jobs", json={"kind": "plan", "source": "zoo:state-mlp",
                                          "criteria": {"max_latency_ms": "soon"}})  # fmt: skip
        assert r.status_code == 422


def test_a_job_over_its_timeout_fails_and_its_session_stops(server) -> None:
    with server.client(server.tokens["operator"]) as c:
        job = _slow_job(c, timeout_s=2)
        end = wait_for(lambda: (j := c.get(f"/api/v1/jobs/{job['id']}").json())["state"]
                       not in ("queued", "running") and j, 90, "the timeout")  # fmt: skip
        assert end["state"] == "failed" and "timed out after 2 s" in end["error"]
        if end["session_id"]:
            s = c.get(f"/api/v1/sessions/{end['session_id']}").json()
            assert s["state"] == "cancelled"
        feed = c.get("/api/v1/notifications").json()
        assert any(n["kind"] == "job_failed" and n["job_id"] == job["id"] for n in feed)


def test_zip_with_external_data_and_unsafe_zips(server, tmp_path) -> None:
    import zipfile

    import onnx

    m = onnx.load(tiny_onnx(tmp_path / "p.onnx"))
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(m, d / "policy.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="policy.weights", size_threshold=0)  # fmt: skip
    assert (d / "policy.weights").stat().st_size > 0
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.write(d / "policy.onnx", "policy.onnx")
        z.write(d / "policy.weights", "policy.weights")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.write(d / "policy.onnx", "policy.onnx")
        z.writestr("../../outside.weights", b"x")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.write(d / "policy.onnx", "a.onnx")
        z.write(d / "policy.onnx", "b.onnx")
    nodata = tmp_path / "nodata.zip"  # the external data is missing: the check must say so
    with zipfile.ZipFile(nodata, "w") as z:
        z.write(d / "policy.onnx", "policy.onnx")
    with server.client(server.tokens["operator"]) as c:
        before = len(c.get("/api/v1/models").json())
        for bad, why in ((evil, "relative path"), (two, "exactly one"), (nodata, "")):
            r = c.post("/api/v1/models", files={"model": (bad.name, bad.read_bytes())})
            assert r.status_code == 422 and why in r.json()["error"], r.text
        assert len(c.get("/api/v1/models").json()) == before
        r = c.post("/api/v1/models", files={"model": ("good.zip", good.read_bytes())})
        assert r.status_code == 201, r.text
        assert r.json()["inputs"][0]["name"] == "obs" and r.json()["parameters"] == 8 * 16 + 16 * 4
    assert not (server.store.parent / "outside.weights").exists()
    tmp = server.store / "uploads" / "tmp"
    assert not tmp.is_dir() or not any(tmp.iterdir())


def test_closed_loop_evaluate_job_on_a_compiled_trained_policy(server) -> None:
    with server.client(server.tokens["operator"]) as c:
        job = c.post("/api/v1/jobs", json={"source": "zoo:pendulum-swingup-mlp",
                                            "options": {"threads": 1}}).json()  # fmt: skip
        done = wait_for(lambda: (j := c.get(f"/api/v1/jobs/{job['id']}").json())["state"]
                        not in ("queued", "running") and j, 300, "the compile")  # fmt: skip
        assert done["state"] == "finished", c.get(f"/api/v1/jobs/{job['id']}/log").text
        r = c.post("/api/v1/jobs", json={"kind": "evaluate", "episodes": 3})
        assert r.status_code == 422 and "bundle_job" in r.json()["error"]
        ev = c.post("/api/v1/jobs", json={"kind": "evaluate", "bundle_job": job["id"],
                                           "episodes": 3}).json()  # fmt: skip
        end = wait_for(lambda: (j := c.get(f"/api/v1/jobs/{ev['id']}").json())["state"]
                       not in ("queued", "running") and j, 300, "the evaluation")  # fmt: skip
        assert end["state"] == "finished", c.get(f"/api/v1/jobs/{ev['id']}/log").text
        result = end["result"]["evaluation"]
        assert result["kind"] == "closed_loop" and len(result["engines"]) == 2
        assert [len(e["per_seed"]["seed"]) for e in result["engines"]] == [3, 3]
