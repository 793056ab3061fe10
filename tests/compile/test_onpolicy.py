"""--distill ...,onpolicy=R: the pruned student drives the task between distillation rounds and
the original labels what it saw (compile/onpolicy.py)."""

from __future__ import annotations

import json

from helpers import assert_one_error_line, run_cli

ZOO = "zoo:pendulum-swingup-mlp"


def test_onpolicy_rounds_add_the_students_states(tmp_path, capsys) -> None:
    out = tmp_path / "b"
    code, _, err = run_cli([ZOO, "--threads", "1", "--prune", "channels:0.5", "--distill",
                            "steps=20,onpolicy=2,episodes=2", "--calibration", "task:episodes=2",
                            "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    step = json.loads((out / "report.json").read_text())["compression"]["steps"][0]
    on = step["distillation"]["onpolicy"]
    assert on["task"] == "InvertedPendulumSwingupBulletEnv-v0" and on["episodes_per_round"] == 2
    rounds = on["rounds"]
    assert [r["seeds"][0] for r in rounds] == [1_500_000, 1_501_000]  # seeds of their own
    first = on["initial_samples"]
    assert rounds[0]["samples"] == first + rounds[0]["samples_added"] > first
    assert rounds[1]["samples"] == rounds[0]["samples"] + rounds[1]["samples_added"]
    assert all(0.0 <= r["student_success"] <= 1.0 for r in rounds)
    # A pruned bundle's reference outputs are the pruned model's: evaluate must not take
    # them for a changed source (it warned "now computes different outputs" here).
    code, _, err = run_cli(["evaluate", str(out), "--episodes", "2"], capsys)
    assert code == 0, err
    assert "now computes different" not in err


def test_onpolicy_needs_a_task(tmp_path, capsys) -> None:
    base = [ZOO, "--threads", "1", "--prune", "channels:0.5", "-o", str(tmp_path / "x")]
    code, _, err = run_cli([*base, "--distill", "steps=5,onpolicy=1"], capsys)
    assert code == 2 and "--calibration task" in err
    assert_one_error_line(err)
    code, _, err = run_cli([*base, "--distill", "steps=5,onpolicy=-1"], capsys)
    assert code == 2 and "onpolicy" in err
    assert not (tmp_path / "x").exists()
