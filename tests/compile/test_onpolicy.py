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


def test_a_time_budget_fits_every_rounds_steps(tmp_path, capsys) -> None:
    """``--distill ...,time=T``: the first distillation and every round's share what is left
    of T after the episodes; more steps asked than fit are cut, and the report says so."""
    import time

    out = tmp_path / "t"
    t0 = time.perf_counter()
    code, _, err = run_cli([ZOO, "--threads", "1", "--prune", "channels:0.5", "--distill",
                            "steps=1000000,onpolicy=2,episodes=2,time=6s", "--calibration",
                            "task:episodes=2", "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    took = time.perf_counter() - t0
    dist = json.loads((out / "report.json").read_text())["compression"]["steps"][0]
    budget = dist["distillation"]["time_budget"]
    assert budget["seconds"] == 6.0 and budget["steps_asked"] == 1_000_000
    assert len(budget["steps_per_call"]) == 3  # the first distillation and two rounds
    assert all(10 <= s < 1_000_000 for s in budget["steps_per_call"])
    assert budget["used"] < 12.0 and took < 120.0
    assert all(r["episode_seconds"] >= 0 for r in dist["distillation"]["onpolicy"]["rounds"])


def test_a_time_budget_that_is_no_duration_is_refused(tmp_path, capsys) -> None:
    base = [ZOO, "--threads", "1", "--prune", "channels:0.5", "-o", str(tmp_path / "x")]
    for bad in ("time=soon", "time=0", "time=-5m"):
        code, _, err = run_cli([*base, "--distill", f"steps=5,{bad}"], capsys)
        assert code == 2 and "--distill time" in err and "20m" in err, err
        assert_one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_the_search_budget_leaves_the_recovery_what_the_search_did_not_use() -> None:
    """``--search-budget`` with ``--search-arch`` covers the search and its recovery."""
    import time

    from robopt_compile.compile.compress import _recovery_in_budget

    notes: list[str] = []

    def note(msg: str, kind: str, frac: float) -> None:
        notes.append(msg)

    assert _recovery_in_budget(None, 100.0, time.perf_counter(), note) is None
    assert _recovery_in_budget({"steps": 5}, None, time.perf_counter(), note) == {"steps": 5}
    got = _recovery_in_budget({"steps": 5}, 100.0, time.perf_counter() - 40.0, note)
    assert 59.0 < got["seconds"] <= 60.0 and got["steps"] == 5 and not notes
    own = _recovery_in_budget({"steps": 5, "seconds": 20.0}, 100.0, time.perf_counter(), note)
    assert own["seconds"] == 20.0  # its own time=, being less
    late = _recovery_in_budget({"steps": 5}, 100.0, time.perf_counter() - 120.0, note)
    assert late["seconds"] == 0.0 and "minimum steps" in notes[-1]
