""".pt2 (torch.export) uploads: refused by default (loading one unpickles), accepted by a
server started with ``--trust-pt2-uploads``, checked in a child process, and compiled by a job
from the .pt2 itself as ``robopt-compile policy.pt2`` would."""

from __future__ import annotations

import pytest
import torch

from tests.service.serving import Server, make_token, wait_for


class _Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 2))  # fmt: skip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("serve-pt2") / "store"
    srv = Server(store, extra=("--trust-pt2-uploads",))
    srv.token = make_token(store, "operator", "pt2")
    srv.start()
    yield srv
    srv.stop()


def test_refused_by_default(server, tmp_path) -> None:
    with server.client(server.tokens["operator"]) as c:
        r = c.post("/api/v1/models", files={"model": ("p.pt2", b"PK anything")})
        assert r.status_code == 422 and "--trust-pt2-uploads" in r.json()["error"]


def test_trusted_server_checks_stores_and_compiles_a_pt2(trusted, tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "arm.pt2"
    torch.export.save(torch.export.export(_Policy().eval(), (torch.zeros(1, 6),)), path)
    with trusted.client(trusted.token) as c:
        # Checked in a child process that imports torch: over the client's 30 s default once
        # beside a suite sharing 2 cores with a training run, as the upload below.
        r = c.post("/api/v1/models", files={"model": ("broken.pt2", b"PK\x03\x04 junk" * 20)},
                   timeout=120)  # fmt: skip
        assert r.status_code == 422 and len(r.json()["error"].splitlines()) == 1, r.text
        assert c.get("/api/v1/models").json() == []
        # The server loads and checks the program before it answers: seconds alone, over the
        # client's 30 s once beside a suite sharing 2 cores with a training run.
        r = c.post("/api/v1/models", files={"model": ("arm.pt2", path.read_bytes())},
                   timeout=120)  # fmt: skip
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["source_kind"] == "pt2" and model["framework"] == "pytorch"
        assert model["inputs"][0]["shape"] == [1, 6] and model["parameters"] == 6 * 32 + 32 + 66
        job = c.post("/api/v1/jobs", json={"model": model["id"], "target": "host",
                                           "options": {"threads": 1}}).json()  # fmt: skip
        done = wait_for(lambda: (j := c.get(f"/api/v1/jobs/{job['id']}").json())["state"]
                        not in ("queued", "running") and j, 120, "the .pt2 compile")  # fmt: skip
        assert done["state"] == "finished", c.get(f"/api/v1/jobs/{job['id']}/log").text
    assert [p.name for p in (trusted.store / "uploads" / "tmp").iterdir()] == []
