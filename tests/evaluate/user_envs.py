"""Factories a team would write for ``--task package.module:factory`` (tests/evaluate)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Reach1D(gym.Env):
    """A point on a line moves by the action toward a seeded goal; ``info["success"]`` when it
    is within 0.05 of it. Observation: (position, goal)."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    action_space = gym.spaces.Box(-0.2, 0.2, (1,), np.float32)

    def __init__(self) -> None:
        self.spec = gym.envs.registration.EnvSpec("Reach1D-v0", max_episode_steps=40)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.goal = 0.0, float(self.np_random.uniform(-1.0, 1.0))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.x, self.goal], np.float32)

    def step(self, action):
        self.x += float(np.clip(np.asarray(action).reshape(-1)[0], -0.2, 0.2))
        dist = abs(self.x - self.goal)
        return self._obs(), -dist, False, False, {"success": dist < 0.05}


def reach_two_inputs():
    """The env and its mapping to a model with inputs ``pos`` [1] and ``goal`` [1]."""
    return Reach1D(), lambda obs: {"pos": obs[:1], "goal": obs[1:]}


def reach_single():
    return Reach1D()
