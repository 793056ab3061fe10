"""reacher-cnn and its task: trained weights load, export faithfully, and reach the target.

The policy was trained by ``python -m robopt_compile.zoo.train_reacher`` on demonstration seeds
10,000,000..10,000,299; the closed-loop checks here use seeds from 900_000 on, which neither
training nor the training script's own evaluation (0..199) touched.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from robopt_compile.errors import ModelLoadError
from robopt_compile.tasks import get_task
from robopt_compile.tasks.reacher import ReacherPixelsTask, expert_policy
from robopt_compile.zoo import reacher
from robopt_compile.zoo.train_reacher import torch_policy

HELD_OUT = list(range(900_000, 900_020))
MIN_SUCCESSES = 16  # of 20; measured 99.5% on 200 held-out seeds and 20/20 here; zeroed: 0
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def task() -> Iterator[ReacherPixelsTask]:
    t = get_task("Reacher-v5-pixels")
    assert isinstance(t, ReacherPixelsTask)
    yield t
    t.close()


@pytest.fixture(scope="module")
def model() -> reacher.ReacherCNNPolicy:
    torch.set_num_threads(2)
    m, _ = reacher.make_reacher_cnn()
    return m


def test_factory_contract_and_batch_shapes(model: reacher.ReacherCNNPolicy) -> None:
    assert not model.training
    assert model.output_names == ("action",)
    for batch in (1, 3):
        _, inputs = reacher.make_reacher_cnn(batch=batch)
        assert list(inputs) == list(inspect.signature(model.forward).parameters)
        assert inputs["image"].shape == (batch, 3, 64, 64)
        assert inputs["state"].shape == (batch, reacher.STATE_DIM)
        assert float(inputs["image"].min()) >= 0.0 and float(inputs["image"].max()) <= 1.0
        with torch.no_grad():
            out = model(**inputs)
        assert out.shape == (batch, 2)
        assert torch.isfinite(out).all()
    a, b = reacher.make_reacher_cnn(seed=0)[1], reacher.make_reacher_cnn(seed=1)[1]
    assert not torch.equal(a["image"], b["image"])


def test_weights_file_is_small_npz() -> None:
    assert reacher.WEIGHTS_FILE.stat().st_size < 250_000
    with np.load(reacher.WEIGHTS_FILE, allow_pickle=False) as data:
        assert all(data[k].dtype == np.float32 for k in data.files)


def test_missing_or_corrupt_weights_raise_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="train_reacher"):
        reacher.load_weights(reacher.ReacherCNNPolicy(), tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3, np.float32))
    with pytest.raises(ModelLoadError, match="retrain"):
        reacher.load_weights(reacher.ReacherCNNPolicy(), bad)


def test_onnx_export_matches_torch(model: reacher.ReacherCNNPolicy, tmp_path: Path) -> None:
    _, inputs = reacher.make_reacher_cnn(batch=2)
    path = tmp_path / "reacher.onnx"
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            args=(),
            kwargs=inputs,
            dynamo=True,
            input_names=list(inputs),
            output_names=list(model.output_names),
        )
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "state"]
    assert [o.name for o in sess.get_outputs()] == ["action"]
    _, fresh = reacher.make_reacher_cnn(seed=7, batch=2)
    (got,) = sess.run(None, {k: v.numpy() for k, v in fresh.items()})
    with torch.no_grad():
        want = model(**fresh).numpy()
    a, e = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
    assert float(a @ e / (np.linalg.norm(a) * np.linalg.norm(e))) > MIN_COSINE


def test_task_is_deterministic(task: ReacherPixelsTask, model: reacher.ReacherCNNPolicy) -> None:
    policy = torch_policy(model)
    for seed in HELD_OUT[:2]:
        first = task.episode(policy, seed, record=True)
        second = task.episode(policy, seed, record=True)
        assert first.ret == second.ret
        assert first.steps == second.steps == task.max_steps
        assert first.actions is not None and second.actions is not None
        assert first.actions.shape == (task.max_steps, 2)
        assert np.array_equal(first.actions, second.actions)
        assert first.feeds["image"].shape == (task.max_steps, 3, 64, 64)
        assert first.feeds["state"].shape == (task.max_steps, reacher.STATE_DIM)
        for k in task.input_names:
            assert first.feeds[k].dtype == np.float32
            assert np.array_equal(first.feeds[k], second.feeds[k]), k


def test_expert_solves_the_task(task: ReacherPixelsTask) -> None:
    wins = sum(task.episode(expert_policy(task), s).success for s in HELD_OUT[:10])
    assert wins == 10


def test_trained_policy_reaches_held_out_targets(
    task: ReacherPixelsTask, model: reacher.ReacherCNNPolicy
) -> None:
    policy = torch_policy(model)
    wins = [s for s in HELD_OUT if task.episode(policy, s).success]
    assert len(wins) >= MIN_SUCCESSES, f"{len(wins)}/{len(HELD_OUT)} successes"


def test_zeroed_policy_fails(task: ReacherPixelsTask) -> None:
    broken = reacher.ReacherCNNPolicy().eval()
    with torch.no_grad():
        for p in broken.parameters():
            p.zero_()
    policy = torch_policy(broken)
    wins = sum(task.episode(policy, s).success for s in HELD_OUT)
    assert wins <= 2, f"{wins}/{len(HELD_OUT)} successes for a policy that outputs zeros"
