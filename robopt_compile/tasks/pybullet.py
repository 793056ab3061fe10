"""The pybullet tasks of the pretrained zoo policies (``zoo/pybullet.py``).

The environments are the gymnasium ports from ``pybullet-envs-gymnasium``. The observation goes
to the engine unchanged (input ``obs``, batch 1) and the action goes to the environment
unchanged, as in pybullet's own example scripts: the robot clips the torques, while the energy
penalty sees the raw action (clipping it first raises Hopper's return by about 15%). Hopper and
InvertedDoublePendulum end early when the robot falls, so success means lasting all 1000 steps;
the swing-up never ends early, so success is a return threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robopt_compile.tasks import Episode, Policy, Task, quiet_stdout


class _BulletTask(Task):
    env_id: str
    input_names = ("obs",)
    max_steps = 1000
    success_return: float | None = None  # None: success = survived max_steps

    def __init__(self) -> None:
        with quiet_stdout((1, 2)):  # pybullet prints its build time on import
            import gymnasium as gym
            import pybullet_envs_gymnasium  # noqa: F401 - registers the *BulletEnv-v0 ids

            self._env: Any = gym.make(self.env_id)
        self.feed_shapes = {"obs": tuple(self._env.observation_space.shape)}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.env_id

    def episode(self, policy: Policy, seed: int, record: bool = False) -> Episode:
        env = self._env
        with quiet_stdout():
            obs, _ = env.reset(seed=int(seed))
        total, steps, terminated = 0.0, 0, False
        obs_log: list[np.ndarray] = []
        act_log: list[np.ndarray] = []
        while steps < self.max_steps:
            x = np.asarray(obs, dtype=np.float32)[None]
            out = policy({"obs": x})
            action = np.asarray(out[0], dtype=np.float32).reshape(-1)
            if record:
                obs_log.append(x[0])
                act_log.append(action.copy())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        if self.success_return is None:
            success = steps >= self.max_steps and not terminated
        else:
            success = total >= self.success_return
        ep = Episode(seed=int(seed), ret=total, success=bool(success), steps=steps)
        if record:
            ep.feeds = {"obs": np.stack(obs_log)}
            ep.actions = np.stack(act_log)
        return ep

    def close(self) -> None:
        with quiet_stdout():
            self._env.close()


class HopperTask(_BulletTask):
    env_id = "HopperBulletEnv-v0"
    description = "pybullet Hopper: hop forward without falling; 1000 steps."
    success_rule = "the hopper does not fall (all 1000 steps)"
    action_dim = 3


class InvertedDoublePendulumTask(_BulletTask):
    env_id = "InvertedDoublePendulumBulletEnv-v0"
    description = "pybullet double pendulum on a cart: keep it upright; 1000 steps."
    success_rule = "the pendulum stays up for all 1000 steps"
    action_dim = 1


class InvertedPendulumSwingupTask(_BulletTask):
    env_id = "InvertedPendulumSwingupBulletEnv-v0"
    description = "pybullet pendulum on a cart: swing up from hanging and balance; 1000 steps."
    success_return = 800.0
    success_rule = "return >= 800 (swung up and balanced most of the episode)"
    action_dim = 1
