"""What the MuJoCo pixel tasks (Reacher, Meta-World) share: the closed-loop episode (feeds in,
the first output as the action, optional recording) and the cleanup of the environment and
its offscreen renderer. A task supplies ``reset``, ``observe``, ``step``, ``succeeded`` and,
when an episode may end early, ``ends_on_success``."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from robopt_compile.errors import InputError
from robopt_compile.tasks import Episode, Policy, Task


class RenderedTask(Task):
    """A simulated task seen through a camera; subclasses set ``_env`` and ``_renderer``."""

    ends_on_success = False  # True: an episode stops at its first success
    _env: Any = None
    _renderer: Any = None

    @abc.abstractmethod
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """The first feeds of the episode of ``seed``."""

    @abc.abstractmethod
    def observe(self) -> dict[str, np.ndarray]:
        """The current feeds."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> float:
        """Apply one action; the reward."""

    @property
    @abc.abstractmethod
    def succeeded(self) -> bool:
        """Whether the episode has met the task's success rule (read after each step)."""

    def episode(self, policy: Policy, seed: int, record: bool = False) -> Episode:
        feeds = self.reset(seed)
        total, steps = 0.0, 0
        feed_log: dict[str, list[np.ndarray]] = {k: [] for k in self.input_names}
        act_log: list[np.ndarray] = []
        for t in range(self.max_steps):
            if t:
                feeds = self.observe()
            out = policy(feeds)
            action = np.asarray(out[0], dtype=np.float32).reshape(-1)
            if action.shape != (self.action_dim,):
                raise InputError(
                    f"{self.name} needs a policy whose first output has {self.action_dim} "
                    f"values per sample (batch 1); it gave shape {np.shape(out[0])}."
                )
            if record:
                for k in self.input_names:
                    feed_log[k].append(feeds[k][0])
                act_log.append(action.copy())
            total += self.step(action)
            steps += 1
            if self.ends_on_success and self.succeeded:
                break
        ep = Episode(seed=int(seed), ret=total, success=bool(self.succeeded), steps=steps)
        if record:
            ep.feeds = {k: np.stack(v) for k, v in feed_log.items()}
            ep.actions = np.stack(act_log)
        return ep

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None
