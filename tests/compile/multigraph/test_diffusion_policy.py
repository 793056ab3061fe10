"""The diffusion policy as a multi-graph bundle (robopt_compile/compile/multigraph/diffusion.py,
bench/driver.py): the DDIM schedule, the bundle reproducing the torch policy, OpenVINO's
missing Mish kernel, and the refusal of weight-only precisions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from robopt_compile.bench.manifest import load_manifest
from robopt_compile.errors import EXIT_BAD_INPUT, InputError

pytest.importorskip("torch", reason="the diffusion policy is built with torch")


@pytest.fixture(scope="module")
def ddim_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robopt_compile.cli import main

    out = tmp_path_factory.mktemp("ddim") / "fp32"
    try:
        main(["zoo:diffusion-policy", "--threads", "1", "-o", str(out), "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    return out


def test_ddim_schedule_and_the_unet_shapes() -> None:
    from robopt_compile.bench.driver import ddim_config
    from robopt_compile.zoo.diffusion import make_diffusion

    cfg = ddim_config(100, 10, 16, 7)
    assert cfg["timesteps"] == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    acp = cfg["alpha_cumprod"]
    assert all(a < b for a, b in itertools.pairwise(acp)) and acp[-1] < 1
    assert cfg["alpha_cumprod_prev"][-1] == 1.0  # the last step lands on the clean sample
    with pytest.raises(InputError, match="DDIM steps"):
        ddim_config(100, 0, 16, 7)
    m = make_diffusion()
    r = m.eager_driver().step(m.example_inputs(1))
    assert r.actions.shape == (16, 7) and np.all(np.abs(r.actions) <= 1.0)
    again = m.eager_driver().step(m.example_inputs(1))
    np.testing.assert_array_equal(r.actions, again.actions)  # fixed noise: deterministic


def test_diffusion_bundle_reproduces_the_torch_policy(
    ddim_bundle: Path, edited_copy: Callable[..., Path]
) -> None:
    from robopt_compile.bench.harness import run_benchmark

    m = load_manifest(ddim_bundle)
    assert [g["name"] for g in m["graphs"]] == ["encoder", "denoiser"]
    assert m["driver"]["kind"] == "ddim" and m["parity"]["actions"]["action_max_abs"] < 1e-3
    r = run_benchmark(ddim_bundle, runs=3, warmup=1, threads=1)
    assert r["fidelity"]["passed"] and r["fidelity"]["action_max_abs"] < 1e-3
    assert set(r["graph_ms_p50"]) == {"encoder", "denoiser"}
    bad = edited_copy(ddim_bundle, ddim_bundle.parent / "bad",
                lambda d: d["driver"]["config"]["timesteps"].pop())  # fmt: skip
    with pytest.raises(InputError, match="schedule's lists differ"):
        load_manifest(bad, verify=False)


def test_diffusion_refuses_weight_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["zoo:diffusion-policy", "--precision", "int4-weight", "-o",
                            str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == EXIT_BAD_INPUT and "convolutions" in err and not (tmp_path / "x").exists()


def test_diffusion_builds_with_openvino_despite_its_mish_gap(tmp_path: Path) -> None:
    """OpenVINO 2026.4's CPU code generator has no Mish kernel for the encoder's graph: the
    build retries without snippets, records it, and the runner uses the same setting."""
    from robopt_compile.cli import main

    out = tmp_path / "ov"
    try:
        main(["zoo:diffusion-policy", "-b", "openvino", "--threads", "1", "-o", str(out),
              "--json"])  # fmt: skip
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    m = load_manifest(out)
    assert m["parity"]["actions"]["action_max_abs"] < 1e-3
    enc = next(g for g in m["graphs"] if g["name"] == "encoder")["engine"]["config"]
    if "snippets_mode" in enc:  # only where the installed OpenVINO lacks the kernel
        assert enc["snippets_mode"] == "DISABLE" and "Mish" in enc["snippets_note"]


def test_runtime_api_runs_the_ddim_loop(ddim_bundle: Path) -> None:
    """``load_bundle`` on a diffusion bundle: one call is one DDIM loop; at the reference's
    fixed noise it reproduces the reference actions, without it the driver draws the noise."""
    from robopt_compile import load_bundle

    with np.load(ddim_bundle / "reference" / "inputs.npz") as z:
        obs = {k: z[k][0] for k in z.files}
    with np.load(ddim_bundle / "reference" / "outputs.npz") as z:
        want = z["actions"][0]
    with load_bundle(ddim_bundle) as policy:
        got = policy(obs)["actions"]
        np.testing.assert_allclose(got, want, atol=1e-3)
        drawn = policy({"obs": obs["obs"]})["actions"]
        assert drawn.shape == want.shape and not np.allclose(drawn, want)
