"""Closed- and open-loop evaluation: paired verdicts, specs, the pybullet zoo, tasks, CLI end to
end (the statistics themselves: test_eval_stats.py).

The end-to-end tests use InvertedPendulumSwingup (1000-step episodes in ~0.05 s) so real
closed-loop runs fit the suite's budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_cli
from onnx import numpy_helper

from robopt_compile import evaluate as ev
from robopt_compile.cli import main
from robopt_compile.errors import InputError, UnknownNameError
from robopt_compile.tasks import TASKS, Episode, get_task

SWINGUP = "InvertedPendulumSwingupBulletEnv-v0"


def _eps(rets: list[float], succ: list[bool]) -> list[Episode]:
    return [
        Episode(seed=i, ret=r, success=s, steps=10)
        for i, (r, s) in enumerate(zip(rets, succ, strict=True))
    ]


def test_paired_verdicts() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(100, 20, 40)
    ref = ev.summarize("ref", "reference", _eps(list(base), [True] * 40))
    same = ev.summarize("same", "candidate", _eps(list(base + rng.normal(0, 0.5, 40)), [True] * 40))
    worse = ev.summarize("worse", "candidate", _eps(list(base - 10), [True] * 20 + [False] * 20))
    assert ev.paired(ref, same, "return")["verdict"] == "no detectable change"
    p = ev.paired(ref, worse, "return")
    assert p["verdict"] == "worse" and p["return_diff"]["mean"] == pytest.approx(-10)
    s = ev.paired(ref, worse, "success")
    assert s["verdict"] == "worse" and s["success_diff"]["lost"] == 20
    assert ev.task_drop(ref, worse, "success") == pytest.approx(0.5)
    assert ev.task_drop(ref, worse, "return") == pytest.approx(10 / base.mean())
    crit = ev.Criteria(max_return_drop=0.05).check(ref, worse)
    assert crit is not None and not crit["passed"] and "return dropped" in crit["failures"][0]
    assert ev.Criteria(max_return_drop=0.5).check(ref, worse)["passed"]
    assert ev.Criteria().check(ref, worse) is None


def test_parse_eval_spec() -> None:
    s = ev.parse_eval_spec("task:episodes=20,seed=3,name=Reacher-v5-pixels,metric=success")
    assert (s.episodes, s.seed, s.task, s.metric) == (20, 3, "Reacher-v5-pixels", "success")
    assert ev.parse_eval_spec("task").episodes == ev.DEFAULT_EPISODES
    for bad in ("dataset:x", "task:episodes=x", "task:foo=1", "task:episodes=1", "task:metric=x"):
        with pytest.raises(InputError):
            ev.parse_eval_spec(bad)
    assert ev.parse_eval_spec("task:samples=2048", option="--calibration").samples == 2048
    for bad, option in (("task:samples=2048", "--eval"), ("task:samples=4", "--calibration")):
        with pytest.raises(InputError, match="cannot read"):
            ev.parse_eval_spec(bad, option=option)


def test_action_error_chunks_and_gripper() -> None:
    ref = np.zeros((4, 3, 2))
    ref[..., 1] = 1.0  # gripper open
    cand = ref.copy()
    cand[:, 2, 0] += 0.5  # error grows at the end of each chunk
    cand[0, 1, 1] = -1.0  # one flip, mid-chunk
    e = ev.action_error(ref, cand, gripper_dim=1)
    assert e["gripper_flips"] == 1
    assert e["chunk_divergence"]["last"] > e["chunk_divergence"]["first"]
    assert e["per_dim"]["max_abs"][0] == pytest.approx(0.5)


# --- the pybullet zoo and tasks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "example", "obs"),
    [
        ("hopper-mlp", "enjoy_TF_HopperBulletEnv_v0_2017may.py", 15),
        ("double-pendulum-mlp", "enjoy_TF_InvertedDoublePendulumBulletEnv_v0_2017may.py", 9),
        ("pendulum-swingup-mlp", "enjoy_TF_InvertedPendulumSwingupBulletEnv_v0_2017may.py", 5),
    ],
)
def test_bullet_policies_carry_the_wheel_weights(name: str, example: str, obs: int) -> None:
    import torch

    from robopt_compile.zoo import ZOO, load_zoo
    from robopt_compile.zoo.pybullet import examples_dir, read_weights

    model, inputs = load_zoo(name)
    assert inputs["obs"].shape == (1, obs) and ZOO[name].trained and ZOO[name].task in TASKS
    w = read_weights(examples_dir() / example)
    x = inputs["obs"].numpy()
    h = np.maximum(x @ w["weights_dense1_w"] + w["weights_dense1_b"], 0)
    h = np.maximum(h @ w["weights_dense2_w"] + w["weights_dense2_b"], 0)
    want = h @ w["weights_final_w"] + w["weights_final_b"]
    with torch.no_grad():
        np.testing.assert_allclose(model(**inputs).numpy(), want, rtol=1e-5, atol=1e-5)


def test_read_weights_refuses_a_file_without_them(tmp_path: Path) -> None:
    from robopt_compile.errors import ModelLoadError
    from robopt_compile.zoo.pybullet import read_weights

    p = tmp_path / "x.py"
    p.write_text("import numpy as np\nweights_dense1_w = np.array([[1.0]])\n")
    with pytest.raises(ModelLoadError, match="lacks the weights"):
        read_weights(p)


def _torch_policy(name: str):
    import torch

    from robopt_compile.zoo import load_zoo

    model, _ = load_zoo(name)

    def pol(feeds):
        with torch.no_grad():
            return [model(torch.from_numpy(feeds["obs"])).numpy()]

    return pol


def test_closed_loop_is_deterministic_and_the_policy_is_good() -> None:
    pol = _torch_policy("pendulum-swingup-mlp")
    with get_task(SWINGUP) as task:
        a = ev.run_episodes(task, pol, [0, 1, 2, 3])
        b = ev.run_episodes(task, pol, [0, 1, 2, 3])
    assert [e.ret for e in a] == [e.ret for e in b]
    assert min(e.ret for e in a) > 700  # the pretrained swing-up policy scores ~840-890
    assert sum(e.success for e in a) >= 3


def test_zeroed_policy_is_a_task_failure() -> None:
    pol = _torch_policy("pendulum-swingup-mlp")
    with get_task(SWINGUP) as task:
        good = ev.summarize("fp32", "reference", ev.run_episodes(task, pol, range(6)))
        broken = ev.summarize(
            "zeroed",
            "candidate",
            ev.run_episodes(task, lambda f: [np.zeros((1, 1), np.float32)], range(6)),
        )
    p = ev.paired(good, broken, "return")
    assert broken["success"]["rate"] == 0.0 and p["verdict"] == "worse"


def test_unknown_task_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Hopper"):
        get_task("HopperBullet-v0")


def test_task_wrong_inputs_is_one_line_error() -> None:
    with get_task(SWINGUP) as task, pytest.raises(InputError, match="pick the task"):
        ev.check_policy_fits(task, [{"name": "image"}], "bundle")


# --- CLI end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swingup_bundles(tmp_path_factory) -> dict[str, Path]:
    """An fp32 bundle, an int8 bundle calibrated on task recordings, and a broken one."""
    root = tmp_path_factory.mktemp("swingup")
    out = {"fp32": root / "fp32", "int8": root / "int8", "broken": root / "broken"}
    main_args = ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "--json"]
    for key, extra in (
        ("fp32", ["--eval", "task:episodes=6"]),
        (
            "int8",
            [
                "--precision",
                "int8",
                "--calibration",
                "task:episodes=2",
                "--max-accuracy-drop",
                "0.05",
            ],
        ),
    ):
        try:
            main([*main_args, *extra, "-o", str(out[key])])
        except SystemExit as exc:
            assert exc.code in (0, None)
    # A deliberately broken engine: the same model with every weight zeroed.
    m = onnx.load(out["fp32"] / "model.onnx")
    for init in m.graph.initializer:
        init.CopyFrom(
            numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name)
        )
    onnx.save(m, root / "zeroed.onnx")
    try:
        main(
            [
                str(root / "zeroed.onnx"),
                "--target",
                "host",
                "--threads",
                "1",
                "--json",
                "-o",
                str(out["broken"]),
            ]
        )
    except SystemExit as exc:
        assert exc.code in (0, None)
    return out


def test_compile_eval_writes_results(swingup_bundles, capsys) -> None:
    res = json.loads((swingup_bundles["fp32"] / "results" / f"eval-{SWINGUP}.json").read_text())
    assert res["kind"] == "closed_loop" and res["episodes"] == 6
    ref, cand = res["engines"]
    # fp32 ONNX Runtime engine vs the exported fp32 model: the same episodes.
    assert cand["per_seed"]["return"] == pytest.approx(ref["per_seed"]["return"], rel=1e-3)
    assert res["paired"][0]["verdict"] == "no detectable change"


def test_evaluate_int8_and_record_open_loop(swingup_bundles, capsys, tmp_path) -> None:
    code, out, err = run_cli(
        ["evaluate", str(swingup_bundles["int8"]), "--episodes", "6", "--json"], capsys
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["engines"][1]["precision"] == "int8"
    assert r["engines"][0]["success"]["rate"] - r["engines"][1]["success"]["rate"] <= 0.34
    data = tmp_path / "episodes.npz"
    code, out, err = run_cli(
        ["evaluate", str(swingup_bundles["int8"]), "--episodes", "2", "--record", str(data)],
        capsys,
    )
    assert code == 0, err
    with np.load(data) as z:
        assert z["obs"].shape == (2000, 5) and z["actions"].shape == (2000, 1)
    code, out, err = run_cli(
        ["evaluate", str(swingup_bundles["int8"]), "--dataset", str(data), "--json"], capsys
    )
    assert code == 0, err
    o = json.loads(out)
    assert o["kind"] == "open_loop" and o["samples"] == 2000
    recorded, int8 = o["engines"]
    assert recorded["l2"]["max"] < 1e-4  # the reference replays its own recorded actions
    assert 0 < int8["l2"]["mean"] < 0.2


def test_broken_engine_fails_the_criteria(swingup_bundles, capsys) -> None:
    args = [
        "evaluate", str(swingup_bundles["broken"]), "--reference", "zoo:pendulum-swingup-mlp",
        "--episodes", "4", "--max-success-drop", "0.1",
    ]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "FAIL" in out  # reported, but only --fail-on-criteria makes it fatal
    code, out, err = run_cli([*args, "--fail-on-criteria"], capsys)
    assert code == 4
    assert "success dropped" in err and "results were saved" in err
    assert "Traceback" not in err


def test_evaluate_errors_are_one_line(swingup_bundles, capsys, tmp_path) -> None:
    code, _, err = run_cli(["evaluate", str(tmp_path / "nope")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        ["evaluate", str(swingup_bundles["fp32"]), "--task", "HopperBulletEnv-v0"], capsys
    )
    assert code == 2 and "pick the task" in err
    code, _, err = run_cli(
        ["evaluate", str(swingup_bundles["fp32"]), "--dataset", str(tmp_path / "x.npz")], capsys
    )
    assert code == 2 and "no such dataset" in err
    code, _, err = run_cli(["zoo:state-mlp", "--eval", "task", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "no known task" in err and not (tmp_path / "o").exists()


def test_compile_eval_guard_uses_the_task(tmp_path, capsys) -> None:
    """--eval with --max-accuracy-drop: the quantizer's drop is the task's return drop."""
    code, out, err = run_cli(
        [
            "zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "--precision",
            "int8", "--calibration", "task:episodes=2", "--eval", "task:episodes=4",
            "--max-accuracy-drop", "0.05", "--json", "-o", str(tmp_path / "b"),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    q = json.loads(out)["report"]["quantization"]
    assert q["metric"] == "task:return"
    cl = q["full_quantization"]["closed_loop"]
    assert cl["episodes"] == 4 and math.isfinite(cl["drop"])


def test_compile_eval_guard_judges_pruning_by_the_task(tmp_path, capsys) -> None:
    """--eval with --max-accuracy-drop and --prune: each compression step's drop is the task's,
    against the uncompressed model; the output error is kept beside it. A pruning that ruins
    the task (90% of the channels, no recovery) is rolled back by the task, not by L2."""
    code, out, err = run_cli(
        [
            "zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "--prune",
            "channels:0.9", "--calibration", "task:episodes=2", "--eval", "task:episodes=4",
            "--max-accuracy-drop", "0.05", "--json", "-o", str(tmp_path / "b"),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    c = json.loads(out)["report"]["compression"]
    assert c["metric"] == "task:return"
    (step,) = c["steps"]
    fig = step["figures"]
    assert fig["metric"] == "task:return" and fig["closed_loop"]["episodes"] == 4
    assert math.isfinite(fig["output_drop"]) and fig["drop"] != fig["output_drop"]
    assert step["rolled_back"] == (fig["drop"] > 0.05)


def test_compile_fail_on_criteria(tmp_path, capsys) -> None:
    """A bound that did not hold: reported, and exit 4 only with --fail-on-criteria."""
    args = [
        "zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "--precision", "int8",
        "--calibration", "task:episodes=2", "--max-accuracy-drop", "0",
    ]  # fmt: skip
    code, _, err = run_cli([*args, "-o", str(tmp_path / "a")], capsys)
    assert code == 0 and "criteria: accuracy guard rolled back" in err
    code, _, err = run_cli([*args, "--fail-on-criteria", "-o", str(tmp_path / "b")], capsys)
    assert code == 4 and "the bundle was written" in err
    assert (tmp_path / "b" / "manifest.json").is_file()
    code, _, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--max-return-drop", "0.1", "-o", str(tmp_path / "c")], capsys
    )
    assert code == 2 and "need --eval" in err


def test_missing_simulator_fails_before_the_build(tmp_path, capsys, monkeypatch) -> None:
    """--eval with the simulator missing: one line, exit 3, nothing built or written."""
    import sys

    monkeypatch.setitem(sys.modules, "pybullet_envs_gymnasium", None)  # import fails
    code, _, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--eval", "task", "-o", str(tmp_path / "o")], capsys
    )
    assert code == 3 and "robopt's [sim] extra" in err
    assert len(err.strip().splitlines()) == 1 and "export" not in err
    assert not (tmp_path / "o").exists()


def test_compile_eval_on_a_task_the_model_does_not_fit_stops_before_building(
    policy_dir, capsys, tmp_path
) -> None:
    """The tiny policy's state is 4 wide, the swing-up task feeds 5: refused after the export,
    before any build, naming the source and the option; no output folder is left."""
    out = tmp_path / "o"
    code, _, err = run_cli(["tiny_policies:make_tiny", "--target", "host", "-o", str(out),
                            "--eval", f"task:task={SWINGUP},episodes=2"], capsys)  # fmt: skip
    assert code == 2 and "tiny_policies:make_tiny takes" in err and "--eval task:task=" in err
    assert "build " not in err and not out.exists()
    assert not list(tmp_path.glob(".o.tmp-*"))
