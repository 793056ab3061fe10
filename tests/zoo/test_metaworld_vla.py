"""metaworld-vla, the trained OpenVLA-form policy: its weights load, its tokenizer and task
adapter build what it was trained on, a short seeded evaluation runs in the task, and its
bundles agree with the torch model on action tokens (fp32 exactly, int8-weight >= 95%).

Seeds: training demonstrations 20,000,000..; the training script's evaluation 0..19; the
compile's held-out observations 10,000..; closed-loop checks here 4,000,000.. (seed % 4
picks the task: 4,000,014 is button-press-topdown, 4,000,015 drawer-open).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from robopt_compile import evaluate as ev
from robopt_compile.bench.driver import tokens_to_actions
from robopt_compile.errors import InputError, ModelLoadError
from robopt_compile.tasks import get_task
from robopt_compile.zoo import ZOO, load_vla, task_adapter, vla_metaworld
from robopt_compile.zoo.vla_metaworld import CONFIG, encode_prompt, value_bins

HELD_OUT = 4_000_000


@pytest.fixture(scope="module")
def model() -> vla_metaworld.MetaWorldVla:
    torch.set_num_threads(2)
    return load_vla("metaworld-vla")


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``robopt-compile zoo:metaworld-vla`` at fp32 on ONNX Runtime, with a 2-episode --eval."""
    from robopt_compile.cli import main

    out = tmp_path_factory.mktemp("mwvla") / "fp32"
    try:
        main(["zoo:metaworld-vla", "-b", "onnxruntime", "--threads", "2", "-o", str(out),
              "--eval", f"task:episodes=2,seed={HELD_OUT + 14}"])  # fmt: skip
    except SystemExit as exc:
        assert exc.code in (0, None), exc
    yield {
        "out": out,
        "manifest": json.loads((out / "manifest.json").read_text()),
        "report": json.loads((out / "report.json").read_text()),
        "evaluation": json.loads((out / "results" / "eval-metaworld-suite.json").read_text()),
    }


def test_zoo_entry_weights_and_record(model: vla_metaworld.MetaWorldVla) -> None:
    entry = ZOO["metaworld-vla"]
    assert entry.trained and entry.kind == "vla" and entry.task == "metaworld-suite"
    assert task_adapter("zoo:metaworld-vla") is vla_metaworld.observation
    assert task_adapter("zoo:openvla-tiny") is None
    assert not model.training and model.config is CONFIG
    assert CONFIG.action_dims == 4 and CONFIG.driver_config()["action_dims"] == 4
    assert vla_metaworld.WEIGHTS_FILE.stat().st_size < 20_000_000
    with np.load(vla_metaworld.WEIGHTS_FILE, allow_pickle=False) as z:
        assert {z[k].dtype for k in z.files} == {np.dtype(np.float16)}
    record = json.loads(vla_metaworld.WEIGHTS_FILE.with_suffix(".json").read_text())
    assert record["model"] == "metaworld-vla" and set(record["success_trained"]) == {
        "reach-v3", "push-v3", "button-press-topdown-v3", "drawer-open-v3"}  # fmt: skip


def test_missing_weights_raise_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="train_vla"):
        vla_metaworld.load_weights(vla_metaworld.MetaWorldVla(CONFIG), tmp_path / "none.npz")


def test_tokenizer_prompt_and_bins() -> None:
    ids = encode_prompt("open the drawer", np.array([0.0, 0.65, 0.2, 1.0]))
    assert ids.shape == (1, CONFIG.prompt_tokens) and ids.dtype == np.int64
    assert ids[0, 0] == vla_metaworld.BOS
    text = bytes(int(t) - vla_metaworld.BYTE0 for t in ids[0, 1:16])
    assert text == b"open the drawer" and (ids[0, 16:33] == vla_metaworld.PAD).all()
    state = ids[0, 33:]
    assert ((state >= CONFIG.vocab_size - 256) & (state < CONFIG.vocab_size)).all()
    # Action bins decode back to within half a bin (1/255) of the value.
    a = np.array([[-1.0, -0.31, 0.0, 0.77], [1.0, 0.5, -0.5, 0.123]])
    back = tokens_to_actions(vla_metaworld.bin_token(value_bins(a)), CONFIG.driver_config())
    assert np.abs(back - a).max() <= 1.0 / 255 + 1e-9


def test_adapter_builds_the_observation_from_task_feeds() -> None:
    with get_task("metaworld-suite") as suite:
        feeds = suite.task_for(HELD_OUT + 3).reset(HELD_OUT + 3)
        obs = vla_metaworld.observation(feeds)
        ev.check_policy_fits(suite, [], "zoo:metaworld-vla", vla_metaworld.observation)
    assert obs["pixel_values"].shape == (1, 3, 84, 84)
    assert obs["pixel_values"].min() >= -1.0 and obs["pixel_values"].max() <= 1.0
    want = feeds["image"][0, :, :2, :2].mean(axis=(1, 2)) * 2 - 1
    np.testing.assert_allclose(obs["pixel_values"][0, :, 0, 0], want, atol=1e-6)
    assert bytes(int(t) - 3 for t in obs["input_ids"][0, 1:16]) == b"open the drawer"
    with get_task("Reacher-v5-pixels") as reacher, pytest.raises(InputError, match="--task"):
        ev.check_policy_fits(reacher, [], "zoo:metaworld-vla", vla_metaworld.observation)


def test_short_seeded_evaluation_of_the_torch_policy(
    model: vla_metaworld.MetaWorldVla, fp32_bundle: dict
) -> None:
    """One drawer-open episode, here, is the one the compile's --eval ran in its own process
    (deterministic: the same steps and outcome). (Whether it succeeds is measured, not
    asserted: at 20-40% success per task, one episode says little; make bench runs 100 per
    engine.)"""
    pol = ev.vla_eager_policy(model, vla_metaworld.observation)
    with get_task("metaworld-suite") as suite:
        a = suite.episode(pol, HELD_OUT + 15, record=True)
    ref = fp32_bundle["evaluation"]["engines"][0]["per_seed"]
    assert (a.steps, a.success) == (ref["steps"][1], ref["success"][1])
    assert np.abs(a.actions).max() <= 1.0
    assert a.feeds["image"].shape == (a.steps, 3, 168, 168)


def test_fp32_bundle_reproduces_the_tokens_and_runs_in_the_task(fp32_bundle: dict) -> None:
    fid = fp32_bundle["report"]["fidelity"]
    assert fid["token_agreement"] == 1.0 and fid["observations"] == 8
    assert fp32_bundle["manifest"]["outputs"][0]["shape"] == [4]
    r = fp32_bundle["evaluation"]
    assert r["task"]["name"] == "metaworld-suite" and r["metric"] == "success"
    ref, cand = r["engines"]
    assert ref["per_seed"]["seed"] == [HELD_OUT + 14, HELD_OUT + 15]
    # fp32 graphs reproduce torch's tokens: the same episodes, step for step
    assert ref["per_seed"]["success"] == cand["per_seed"]["success"]


def test_evaluate_command_runs_the_bundle_against_the_torch_model(
    fp32_bundle: dict, capsys
) -> None:
    from helpers import run_cli

    code, stdout, err = run_cli(["evaluate", str(fp32_bundle["out"]), "--episodes", "2",
                                 "--seed", str(HELD_OUT + 14), "--json"], capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    assert [e["label"].split(" ")[0] for e in r["engines"]] == ["original", "optimized"]


def test_int8_weight_bundle_agrees_on_action_tokens(tmp_path: Path, capsys) -> None:
    """The token-agreement check: int8 weights keep >= 95% of the torch model's action tokens
    on the compile's held-out Meta-World observations (the compile fails otherwise)."""
    from helpers import run_cli

    code, stdout, err = run_cli(
        ["zoo:metaworld-vla", "-b", "onnxruntime", "--precision", "int8-weight", "--threads",
         "2", "--json", "-o", str(tmp_path / "w8")], capsys)  # fmt: skip
    assert code == 0, err
    fid = json.loads(stdout)["report"]["fidelity"]
    assert fid["token_agreement"] >= 0.95 and fid["passed"], fid


def test_vision_int8_calibrates_on_task_recordings(tmp_path: Path, capsys) -> None:
    from helpers import run_cli

    code, stdout, err = run_cli(
        ["zoo:metaworld-vla", "-b", "onnxruntime", "--precision", "int8", "--threads", "2",
         "--calibration", "task:episodes=2", "--max-accuracy-drop", "0.2", "--json",
         "-o", str(tmp_path / "i8")], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)["report"]
    assert report["calibration"]["task"] == "metaworld-suite"
    assert report["calibration"]["samples"] > 10
    assert not (tmp_path / "i8" / "calibration-task.npz").exists()


def test_eval_of_a_vla_without_a_task_adapter_is_one_line(tmp_path: Path, capsys) -> None:
    from helpers import assert_one_error_line, run_cli

    code, _, err = run_cli(["zoo:openvla-tiny", "--eval", "task:name=metaworld-suite,episodes=2",
                            "-o", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code != 0 and "task adapter" in err and "zoo:metaworld-vla" in err
    assert_one_error_line(err)
    assert not (tmp_path / "x").exists()
