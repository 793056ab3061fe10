"""metaworld-resnet18 and the Meta-World tasks: the trained weights load and export faithfully,
episodes are seeded and deterministic, and a short seeded evaluation succeeds.

The policy was trained by ``python -m robopt_compile.zoo.train_metaworld`` on demonstration
seeds from 20,000,000 on; the training script evaluated seeds 0..19. The closed-loop checks here
use seeds from 4,000,000 on, which neither training, calibration (1,000,000..), the accuracy
guard (500,000..) nor ``make bench`` (3,000,000..) touch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from robopt_compile.errors import ModelLoadError
from robopt_compile.tasks import get_task
from robopt_compile.tasks.metaworld import SUITE, MetaWorldSuiteTask, MetaWorldTask, expert_policy
from robopt_compile.zoo import ZOO, metaworld
from robopt_compile.zoo.train_metaworld import demo_seeds, torch_policy

HELD_OUT = 4_000_000  # seed s runs SUITE[s % 4]: 4_000_000.. starts with reach-v3


@pytest.fixture(scope="module")
def suite() -> Iterator[MetaWorldSuiteTask]:
    t = get_task("metaworld-suite")
    assert isinstance(t, MetaWorldSuiteTask)
    yield t
    t.close()


@pytest.fixture(scope="module")
def model() -> metaworld.MetaWorldResNetPolicy:
    torch.set_num_threads(2)
    m, _ = metaworld.make_metaworld_resnet18()
    return m


def test_zoo_entry_and_factory_contract(model: metaworld.MetaWorldResNetPolicy) -> None:
    entry = ZOO["metaworld-resnet18"]
    assert entry.trained and entry.task == "metaworld-suite"
    assert not model.training and model.output_names == ("action",)
    _, inputs = metaworld.make_metaworld_resnet18(batch=2)
    assert list(inputs) == list(inspect.signature(model.forward).parameters)
    assert inputs["image"].shape == (2, 3, 168, 168)
    assert inputs["state"].shape == (2, 8)
    with torch.no_grad():
        out = model(**inputs)
    assert out.shape == (2, 4) and bool(((out >= -1) & (out <= 1)).all())


def test_weights_are_compact_fp16_with_their_training_record() -> None:
    assert metaworld.WEIGHTS_FILE.stat().st_size < 25_000_000
    with np.load(metaworld.WEIGHTS_FILE, allow_pickle=False) as data:
        assert {data[k].dtype for k in data.files} <= {np.dtype(np.float16), np.dtype(np.int64)}
    rec = json.loads(metaworld.WEIGHTS_FILE.with_suffix(".json").read_text())
    assert rec["suite"] == list(SUITE)
    # Every task learned: the record's own held-out figures (seeds 0..19 per task).
    assert min(rec["success_trained"].values()) >= 0.5, rec["success_trained"]


def test_missing_or_corrupt_weights_raise_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="train_metaworld"):
        metaworld.load_weights(metaworld.MetaWorldResNetPolicy(), tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3, np.float16))
    with pytest.raises(ModelLoadError):
        metaworld.load_weights(metaworld.MetaWorldResNetPolicy(), bad)


def test_demonstration_seeds_never_meet_evaluation_seeds() -> None:
    seeds = {s for i in range(len(SUITE)) for s in demo_seeds(i, 100)}
    assert min(seeds) >= 20_000_000 and len(seeds) == 100 * len(SUITE)


def test_suite_picks_the_task_by_seed_and_episodes_are_deterministic(
    suite: MetaWorldSuiteTask, model: metaworld.MetaWorldResNetPolicy
) -> None:
    assert [suite.task_for(HELD_OUT + i).env_name for i in range(4)] == list(SUITE)
    policy = torch_policy(model)
    first = suite.episode(policy, HELD_OUT, record=True)  # reach-v3: short
    second = suite.episode(policy, HELD_OUT, record=True)
    assert (first.ret, first.steps, first.success) == (second.ret, second.steps, second.success)
    assert first.actions is not None and second.actions is not None
    assert np.array_equal(first.actions, second.actions)
    assert first.feeds["image"].shape == (first.steps, 3, 168, 168)
    assert first.feeds["image"].dtype == np.float32
    assert first.feeds["state"].shape == (first.steps, 8)


def test_experts_solve_every_task_of_the_suite(suite: MetaWorldSuiteTask) -> None:
    for i in range(len(SUITE)):
        task = suite.task_for(HELD_OUT + i)
        assert task.episode(expert_policy(task), HELD_OUT + i).success, task.env_name


def test_a_wrong_policy_fails_in_one_line() -> None:
    with get_task("metaworld-reach-v3") as task:
        assert isinstance(task, MetaWorldTask)
        with pytest.raises(Exception, match="4 values per sample"):
            task.episode(lambda feeds: [np.zeros((1, 2), np.float32)], 0)


def test_compile_with_task_calibration_and_a_short_seeded_evaluation(
    tmp_path: Path, capsys
) -> None:
    """The zoo model compiles to OpenVINO int8 calibrated on task recordings (--calibration
    task) and drives its task in closed loop (--eval task: seeds 0..3, one per task) as the
    fp32 export does; both succeed on most of the four."""
    from helpers import run_cli

    out = tmp_path / "mw"
    code, stdout, err = run_cli(
        ["zoo:metaworld-resnet18", "--target", "host", "-b", "openvino", "--precision", "int8",
         "--threads", "2", "--calibration", "task:episodes=2", "--eval", "task:episodes=4",
         "--max-accuracy-drop", "0.2", "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    q = r["report"]["quantization"]
    assert q["data"]["source"].endswith("task.npz")
    # The engine evaluated is int8 (a bound of 0.2 relative L2 keeps it; the default 0.01 would
    # send the guard into a minute of mixed-precision search and roll back to fp32).
    assert not q["rolled_back"] and r["manifest"]["precision"] == "int8"
    ev = r["evaluation"]
    assert ev["task"]["name"] == "metaworld-suite" and ev["metric"] == "success"
    ref, cand = ev["engines"][0], ev["engines"][1]
    assert ref["per_seed"]["seed"] == [0, 1, 2, 3]
    assert ref["success"]["count"] >= 3, ref["success"]
    assert cand["success"]["count"] >= ref["success"]["count"] - 1, cand["success"]
