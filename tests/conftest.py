"""Shared fixtures: tiny policies as a factory module, an ONNX file and a .pt2 program."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

TINY_POLICY = textwrap.dedent(
    """
    import torch


    class TinyPolicy(torch.nn.Module):
        output_names = ("action",)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 + 4, 16)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, image, state):
            x = torch.relu(self.bn(self.conv(image))).mean((2, 3))
            x = torch.relu(self.fc(torch.cat([x, state], dim=1)))
            return torch.tanh(self.head(x))


    def make_tiny():
        torch.manual_seed(0)
        m = TinyPolicy().eval()
        return m, {"image": torch.rand(1, 3, 16, 16), "state": torch.randn(1, 4)}


    def make_tuple_inputs():
        m, ins = make_tiny()
        return m, (ins["image"], ins["state"])


    def make_broken():
        raise RuntimeError("checkpoint weights.pt is missing")


    def make_wrong_type():
        return 42


    def make_bad_shapes():
        m, _ = make_tiny()
        return m, {"image": torch.rand(1, 5, 16, 16), "state": torch.randn(1, 4)}


    class StarArgs(torch.nn.Module):
        def forward(self, *xs):
            return xs[0] * 2


    def make_star_args():
        return StarArgs(), (torch.rand(1, 3),)


    def make_mlp():
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
            torch.nn.Linear(64, 3),
        ).eval()
        return m, {"input": torch.randn(1, 12)}


    def make_wrong_names():
        m, ins = make_tiny()
        return m, {"img": ins["image"], "state": ins["state"]}
    """
)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``tiny_policies.py``, importable as a factory module."""
    d = tmp_path_factory.mktemp("policies")
    (d / "tiny_policies.py").write_text(TINY_POLICY)
    (d / "raising_mod.py").write_text("raise ValueError('CUDA device 3 not found')\n")
    sys.path.insert(0, str(d))
    return d


@pytest.fixture(scope="session")
def tiny_onnx(policy_dir: Path) -> Path:
    import torch
    from tiny_policies import make_tiny

    m, ins = make_tiny()
    path = policy_dir / "tiny.onnx"
    torch.onnx.export(
        m,
        args=(),
        kwargs=ins,
        f=str(path),
        dynamo=True,
        verbose=False,
        input_names=list(ins),
        output_names=["action"],
    )
    return path


@pytest.fixture(scope="session")
def tiny_pt2(policy_dir: Path) -> Path:
    import torch
    from tiny_policies import make_tiny

    m, ins = make_tiny()
    ep = torch.export.export(m, args=(ins["image"], ins["state"]))
    path = policy_dir / "tiny.pt2"
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="session")
def calib_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 samples for the tiny policy: one .npz with a leading sample axis."""
    import numpy as np

    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(
        path,
        image=rng.random((24, 1, 3, 16, 16), dtype=np.float32),
        state=rng.standard_normal((24, 1, 4), dtype=np.float32),
    )
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under ROBOPT_FAIL_ON_SKIP=1 (set by .ci/run) a skip is a failure.

    CI installs every dependency, so a skip there means a broken install, not a missing
    optional tool. Tests that may legitimately skip in CI (a GPU, TensorRT) carry
    ``@pytest.mark.may_skip``.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("ROBOPT_FAIL_ON_SKIP") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("may_skip") is None
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped where everything should be installed: {report.longrepr}"


@pytest.fixture(autouse=True, scope="session")
def _private_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Planner sessions go to a store of the test run, never to ~/.cache/robopt/store."""
    if "ROBOPT_STORE" not in os.environ:
        os.environ["ROBOPT_STORE"] = str(tmp_path_factory.mktemp("store"))
