"""The compile's own episodes on the build machine's cores (evaluate/pooled.py,
executor/processes.py): the same episodes, seed by seed, as one after another here."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from robopt_compile import evaluate as ev
from robopt_compile.errors import InputError, RoboptError
from robopt_compile.evaluate import pooled
from robopt_compile.executor import processes
from robopt_compile.tasks import get_task

SWINGUP = "InvertedPendulumSwingupBulletEnv-v0"


@pytest.fixture(scope="module")
def policy():
    from robopt_compile.compile.frontend import load_source

    return load_source("zoo:pendulum-swingup-mlp").model


@pytest.fixture
def spawned(monkeypatch):
    """The worker counts of every pool started (the real pool runs)."""
    made: list[int] = []
    real = processes.ProcessExecutor.__init__

    def init(self, workers: int) -> None:
        made.append(workers)
        real(self, workers)

    monkeypatch.setattr(processes.ProcessExecutor, "__init__", init)
    return made


def _same(a: list, b: list) -> None:
    assert [(e.seed, e.ret, e.success, e.steps) for e in a] == [
        (e.seed, e.ret, e.success, e.steps) for e in b
    ]
    for x, y in zip(a, b, strict=True):
        assert x.feeds.keys() == y.feeds.keys()
        assert all(np.array_equal(x.feeds[k], y.feeds[k]) for k in x.feeds)
        assert np.array_equal(x.actions, y.actions)


def test_pooled_episodes_equal_the_ones_run_here(policy, spawned, monkeypatch) -> None:
    seeds = list(range(40, 47))
    with get_task(SWINGUP) as task, ev.onnx_policy(policy, 1) as pol:
        here = ev.run_episodes(task, pol, seeds, record=True)
    monkeypatch.setattr(pooled, "POOL_AFTER_S", 0.0)  # these episodes take ~0.05 s
    monkeypatch.setenv("ROBOPT_EPISODE_WORKERS", "2")
    ticks: list[int] = []
    got = pooled.pooled_episodes(SWINGUP, policy, seeds, 1, ticks.append, record=True)
    assert spawned == [2]  # the first seed here, six in two worker processes
    assert sum(ticks) == len(seeds) and len(ticks) > 2  # per episode here, then per unit
    _same(here, got)
    assert len({e.ret for e in got}) > 1  # the seeds give different episodes


def test_short_runs_and_foreign_tasks_stay_here(policy, spawned, monkeypatch) -> None:
    monkeypatch.setenv("ROBOPT_EPISODE_WORKERS", "2")
    got = pooled.pooled_episodes(SWINGUP, policy, [1, 2, 3], 1)  # ~0.15 s: not worth a pool
    assert spawned == [] and [e.seed for e in got] == [1, 2, 3]
    assert pooled._workers(False, 60.0, 10, 1) == 1  # a gymnasium id may be unknown there
    assert pooled._workers(True, 60.0, 1, 1) == 1
    assert pooled._workers(True, 60.0, 10, 1) == 2


def test_worker_count(monkeypatch) -> None:
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("ROBOPT_EPISODE_WORKERS", raising=False)
    assert processes.cores_for(100, 1) == 16
    assert processes.cores_for(100, 4) == 4
    assert processes.cores_for(3, 1) == 3  # never more workers than units
    assert processes.cores_for(100, None) == 1  # ONNX Runtime on every core already
    monkeypatch.setenv("ROBOPT_EPISODE_WORKERS", "1")
    assert processes.cores_for(100, 1) == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("ROBOPT_EPISODE_WORKERS", bad)
        with pytest.raises(InputError, match="ROBOPT_EPISODE_WORKERS"):
            processes.cores_for(100, 1)


def _fails(x: int) -> int:
    if x == 2:
        raise ValueError("unit 2 failed")
    return x * 10


def test_process_executor_order_progress_and_errors() -> None:
    ex = processes.ProcessExecutor(2)
    try:
        seen: list[int] = []
        assert ex.map(_fails, [(0,), (1,), (3,)], progress=lambda i, r: seen.append(i)) == [
            0,
            10,
            30,
        ]
        assert sorted(seen) == [0, 1, 2]
        with pytest.raises(ValueError, match="unit 2 failed"):  # the unit's own error
            ex.map(_fails, [(1,), (2,)])
    finally:
        ex.close()


def test_a_dead_worker_is_one_line_and_worker_stderr_is_discarded(capfd) -> None:
    ex = processes.ProcessExecutor(1)
    try:
        assert ex.map(os.write, [(2, b"worker noise\n")]) == [13]  # written, to nowhere
        assert "worker noise" not in capfd.readouterr().err
        with pytest.raises(RoboptError, match=r"worker process running _exit died.*=1"):
            ex.map(os._exit, [(3,)])
    finally:
        ex.close()


def test_workers_start_unasked_only_under_robopt_commands(monkeypatch) -> None:
    """A spawned worker re-runs the main script's top level: only robopt's own commands and
    interactive sessions (no __file__) are known to be safe."""
    monkeypatch.setattr(pooled.sys, "modules", {**pooled.sys.modules})
    monkeypatch.setitem(pooled.sys.modules, "__main__", types.SimpleNamespace())
    assert pooled._spawn_safe()  # python -c / a notebook / the REPL
    main = types.SimpleNamespace(__file__="/home/u/run_policy.py")
    monkeypatch.setitem(pooled.sys.modules, "__main__", main)
    monkeypatch.setattr(pooled.sys, "argv", ["/home/u/run_policy.py"])
    assert not pooled._spawn_safe()
    monkeypatch.delenv("ROBOPT_EPISODE_WORKERS", raising=False)
    assert pooled._workers(True, 60.0, 10, 1) == 1  # a user's script: here, unless it opts in
    monkeypatch.setenv("ROBOPT_EPISODE_WORKERS", "2")
    assert pooled._workers(True, 60.0, 10, 1) == 2
    monkeypatch.setattr(pooled.sys, "argv", ["/venv/bin/robopt-compile", "zoo:x"])
    assert pooled._spawn_safe()


def test_an_open_task_is_used_and_left_open(policy, monkeypatch) -> None:
    from robopt_compile import tasks

    with get_task(SWINGUP) as task:
        with monkeypatch.context() as mp:
            mp.setattr(tasks, "get_task", lambda name: pytest.fail("opened again"))
            got = pooled.pooled_episodes(SWINGUP, policy, [1, 2], 1, task=task)
        with ev.onnx_policy(policy, 1) as pol:
            again = ev.run_episodes(task, pol, [1])  # still open
    assert [e.seed for e in got] == [1, 2] and again[0].ret == got[0].ret
