"""Simulated tasks that a policy engine can be evaluated on, in closed loop.

A task owns a simulator (gymnasium + pybullet or MuJoCo, imported only when an episode runs),
turns each observation into the engine's feeds (``{input name: array}``, batch 1), applies the
engine's first output as the action and says whether the episode succeeded. Closed-loop
evaluation (``robopt_compile.evaluate.closedloop``) runs the same seeds through the original
and the optimized engine, so a per-seed paired comparison is possible.

Importing this package must stay free of gymnasium, pybullet, MuJoCo and torch (the CLI lists
task names at start-up): ``TASKS`` names each task class as a ``"module:Class"`` string.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, UnknownNameError, install_hint

# feeds -> outputs, in the model's output order; the first output is the action.
Policy = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Episode:
    """What one seeded episode gave."""

    seed: int
    ret: float  # undiscounted return
    success: bool
    steps: int
    # Filled only when ``record=True``: per-step feeds (stacked along axis 0) and actions.
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    actions: np.ndarray | None = None


class Task(abc.ABC):
    """One simulated task. Subclasses set the class attributes and implement the hooks."""

    name: str  # the name users pass (``--task``), e.g. "HopperBulletEnv-v0"
    description: str
    success_rule: str  # one line a report can print: what counts as success
    max_steps: int
    # What the policy must look like: input names and the action's size.
    input_names: tuple[str, ...]
    action_dim: int
    # Per-sample feed shapes (without the batch axis), when known: checked against a bundle.
    feed_shapes: dict[str, tuple[int, ...]] | None = None
    # The pip extra that installs the simulator.
    extra: str = "sim"
    # What a paired comparison judges by default: "return" or "success" (tasks whose return
    # is a shaping signal, e.g. distances, and whose goal is reaching a state).
    metric: str = "return"

    @abc.abstractmethod
    def episode(self, policy: Policy, seed: int, record: bool = False) -> Episode:
        """Run one episode from ``reset(seed=seed)`` with ``policy`` choosing every action.

        The same seed must give the same episode for the same policy (deterministic).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the simulator."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "success_rule": self.success_rule,
            "max_steps": self.max_steps,
            "inputs": list(self.input_names),
            "action_dim": self.action_dim,
        }


@dataclass(frozen=True, slots=True)
class TaskEntry:
    name: str
    cls: str  # "module:Class", imported only by get_task
    description: str


TASKS: dict[str, TaskEntry] = {
    e.name: e
    for e in (
        TaskEntry(
            "HopperBulletEnv-v0",
            "robopt_compile.tasks.pybullet:HopperTask",
            "pybullet Hopper: hop forward without falling; 1000 steps.",
        ),
        TaskEntry(
            "InvertedDoublePendulumBulletEnv-v0",
            "robopt_compile.tasks.pybullet:InvertedDoublePendulumTask",
            "pybullet double pendulum on a cart: keep it upright; 1000 steps.",
        ),
        TaskEntry(
            "InvertedPendulumSwingupBulletEnv-v0",
            "robopt_compile.tasks.pybullet:InvertedPendulumSwingupTask",
            "pybullet pendulum on a cart: swing up from hanging and balance; 1000 steps.",
        ),
        TaskEntry(
            "Reacher-v5-pixels",
            "robopt_compile.tasks.reacher:ReacherPixelsTask",
            "MuJoCo Reacher-v5 from 64x64 top-down camera frames plus joint state: "
            "touch the target; 50 steps.",
        ),
        *(
            TaskEntry(
                f"metaworld-{env}",
                f"robopt_compile.tasks.metaworld:{cls}",
                f"Meta-World {env} (Sawyer arm) from 168x168 camera frames plus hand state; "
                "the environment's success within 150 steps.",
            )
            for env, cls in (
                ("reach-v3", "ReachTask"),
                ("push-v3", "PushTask"),
                ("button-press-topdown-v3", "ButtonPressTopdownTask"),
                ("drawer-open-v3", "DrawerOpenTask"),
            )
        ),
        TaskEntry(
            "metaworld-suite",
            "robopt_compile.tasks.metaworld:MetaWorldSuiteTask",
            "Meta-World reach, push, button-press-topdown and drawer-open in turn (seed % 4 "
            "picks the task), 168x168 frames plus hand state and task one-hot; 150 steps.",
        ),
    )
}


def task_names() -> list[str]:
    return list(TASKS)


def file_stem(name: str) -> str:
    """A task name as a plain file name (``eval-<stem>.json``): a user task's ``:``, ``[``,
    ``=`` and ``]`` become ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def get_task(name: str) -> Task:
    """Instantiate a task by name.

    Raises:
        UnknownNameError: no such task (suggests close names).
        BackendUnavailableError: the simulator is not installed (names the pip extra).
    """
    entry = TASKS.get(name)
    if entry is None:
        return _user_task(name)
    module_name, _, cls_name = entry.cls.partition(":")
    try:  # the simulator is imported by the module or when the task starts
        return getattr(importlib.import_module(module_name), cls_name)()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"task {name!r} needs a simulator that is not installed ({exc.name or exc}): "
            f"{install_hint('sim')}."
        ) from exc


def _user_task(name: str) -> Task:
    """A gymnasium id or ``module:factory`` (``tasks/gym.py``), or the one-line error."""
    from robopt_compile.tasks.gym import GymTask, registered_ids, split_name

    env_id, _ = split_name(name)
    if ":" not in env_id:
        ids = registered_ids()
        if ids is None:
            raise BackendUnavailableError(
                f"task {name!r} is not one of robopt's ({', '.join(TASKS)}) and gymnasium, "
                f"which would know it, is not installed: {install_hint('sim')}."
            )
        if env_id not in ids:
            err = UnknownNameError("task", env_id, [*TASKS, *sorted(ids)])
            hint = f" Did you mean {', '.join(map(repr, err.suggestions))}?" * bool(err.suggestions)
            err.args = (
                f"unknown task {env_id!r}.{hint} robopt's tasks: {', '.join(TASKS)}; or any "
                f"gymnasium id ({len(ids)} registered here) or package.module:factory.",
            )
            raise err
    try:
        return GymTask(name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"task {name!r} needs a package that is not installed ({exc.name or exc}): "
            f"install it, or {install_hint('sim')}."
        ) from exc


@contextlib.contextmanager
def quiet_stdout(fds: tuple[int, ...] = (1,)) -> Iterator[None]:
    """Silence C-level writes to stdout (pybullet prints ``argv[0]=`` on every connect).

    robopt's ``--json`` output goes to stdout, so a simulator must not write there. Pass
    ``fds=(1, 2)`` to silence stderr too (pybullet's build-time banner on import).
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "wb") as devnull:
            for fd in fds:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # C stdio buffers too, before the fds come back; broad, as nothing may stop the restore
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).fflush(None)
        for fd, s in zip(fds, saved, strict=True):
            os.dup2(s, fd)
            os.close(s)
