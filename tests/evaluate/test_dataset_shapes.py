"""``evaluate --dataset``: one shape convention with calibration files and reference inputs
(steps on axis 0, each step the input's shape with or without its batch axis of 1); a wrong
rank is bad input (one line, exit 2), not an internal error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robopt_compile.errors import EXIT_BAD_INPUT, InputError
from robopt_compile.evaluate.openloop import _outputs_over, load_dataset
from robopt_compile.evaluate.policies import TimedPolicy

SPECS = [{"name": "image", "shape": [1, 3, 8, 8], "dtype": "float32"},
         {"name": "proprio", "shape": ["batch", 9], "dtype": "float32"}]  # fmt: skip


def _save(path: Path, **arrays: tuple[int, ...]) -> Path:
    np.savez(path, **{k: np.zeros(v, np.float32) for k, v in arrays.items()})
    return path


def test_both_conventions_are_read_and_fed_with_the_batch_axis(tmp_path: Path) -> None:
    seen: list[dict] = []
    policy = TimedPolicy(lambda feeds: seen.append(feeds) or [np.zeros((1, 2))], ["a"])
    for arrays in ({"image": (4, 3, 8, 8), "proprio": (4, 9)},
                   {"image": (4, 1, 3, 8, 8), "proprio": (4, 1, 9)}):  # fmt: skip
        data = load_dataset(_save(tmp_path / "d.npz", **arrays), ["image", "proprio"], SPECS)
        seen.clear()
        out = _outputs_over(policy, data, ["image", "proprio"], {}, {"image": 4, "proprio": 2})
        assert out.shape == (4, 2)
        assert [f["image"].shape for f in seen] == [(1, 3, 8, 8)] * 4
        assert [f["proprio"].shape for f in seen] == [(1, 9)] * 4


def test_a_wrong_rank_is_one_line_of_bad_input(tmp_path: Path) -> None:
    path = _save(tmp_path / "bad.npz", image=(4, 8, 8), proprio=(4, 9))
    with pytest.raises(InputError) as e:
        load_dataset(path, ["image", "proprio"], SPECS)
    msg = str(e.value)
    assert "(steps, 3, 8, 8) or (steps, 1, 3, 8, 8)" in msg and len(msg.splitlines()) == 1
    assert e.value.exit_code == EXIT_BAD_INPUT


FACTORY = """
import os, torch

def make():
    torch.manual_seed(int(os.environ.get("ROBOPT_TEST_SEED", "0")))
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).eval(), {"input": torch.randn(1, 9)}
"""


def test_an_original_that_changed_since_the_build_is_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A factory with unseeded (here: re-seeded) random weights gives another "original" at
    evaluation time; every figure would compare against it, so evaluate says so."""
    from helpers import run_cli

    (tmp_path / "changing_pol.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "b"
    code, _, err = run_cli(["changing_pol:make", "--threads", "1", "-o", str(out)], capsys)
    assert code == 0, err
    np.savez(tmp_path / "ep.npz", input=np.random.default_rng(0).normal(size=(5, 9)).astype("f4"))
    code, _, err = run_cli(["evaluate", str(out), "--dataset", "ep.npz"], capsys)
    assert code == 0 and "now computes different" not in err, err
    monkeypatch.setenv("ROBOPT_TEST_SEED", "1")
    code, _, err = run_cli(["evaluate", str(out), "--dataset", "ep.npz"], capsys)
    assert code == 0 and "now computes different 'output' outputs" in err, err
