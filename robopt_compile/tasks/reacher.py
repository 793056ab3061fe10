"""``Reacher-v5-pixels``: MuJoCo Reacher-v5 seen through a 64x64 top-down camera.

The gymnasium ``Reacher-v5`` environment runs unchanged (50 steps of 0.02 s, torques in
[-1, 1], target drawn uniformly in a disc of radius 0.2 m); only what the policy sees differs.
Each step the policy gets two feeds, batch 1:

* ``image`` (1, 3, 64, 64) float32 in [0, 1]: an RGB frame from a free camera looking straight
  down at the arena centre (x to the right, y up), covering about +-0.25 m, rendered with
  ``mujoco.Renderer``. The target (a red sphere of radius 9 mm, about 2-3 pixels across) is
  visible only here.
* ``state`` (1, 6) float32: the arm's joint state ``[cos q1, cos q2, sin q1, sin q2, dq1, dq2]``
  (joint angles in rad, velocities in rad/s), i.e. Reacher-v5's observation without the target
  position and the fingertip-to-target vector.

The policy's first output is the action (1, 2); it is clipped to [-1, 1] before the step.

This module is the ONE place where frames and joint state are built: the training script
(``robopt_compile.zoo.train_reacher``) collects its demonstrations through ``ReacherPixelsTask``
so that training and evaluation see identical pixels. It also holds the scripted expert
(``expert_policy``): analytic two-link inverse kinematics to the target plus a PD controller on
the joint angles; it reads the target from the simulator (privileged), not from the image.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError
from robopt_compile.tasks import Policy
from robopt_compile.tasks.rendered import RenderedTask

IMAGE_SIZE = 64
STATE_DIM = 6
# Top-down free camera: MuJoCo's default 45 degree field of view at 0.6 m shows about
# +-0.25 m, enough for the arm's 0.21 m reach and the 0.2 m target disc.
CAMERA_LOOKAT = (0.0, 0.0, 0.0)
CAMERA_DISTANCE = 0.6
CAMERA_ELEVATION = -90.0
CAMERA_AZIMUTH = 90.0
# Reacher's geometry: joint0 -> joint1 is 0.1 m, joint1 -> fingertip 0.11 m.
LINK1, LINK2 = 0.1, 0.11
SUCCESS_DISTANCE = 0.02  # metres, fingertip to target, at the final step
# Scripted expert gains (action units per rad and per rad/s; the motors have gear 200).
EXPERT_KP = 0.5
EXPERT_KD = 0.07


def _wrap(angle: np.ndarray | float) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def inverse_kinematics(target: np.ndarray) -> np.ndarray:
    """Joint angles (q1, q2) that put the fingertip on ``target`` (x, y), elbow q2 >= 0.

    Out-of-reach targets are projected onto the reachable annulus; q2 is kept inside the
    joint's +-3.0 rad limit.
    """
    tx, ty = float(target[0]), float(target[1])
    r = float(np.clip(np.hypot(tx, ty), abs(LINK2 - LINK1) + 1e-3, LINK1 + LINK2 - 1e-4))
    c2 = np.clip((r * r - LINK1 * LINK1 - LINK2 * LINK2) / (2.0 * LINK1 * LINK2), -1.0, 1.0)
    q2 = min(float(np.arccos(c2)), 2.95)
    q1 = np.arctan2(ty, tx) - np.arctan2(LINK2 * np.sin(q2), LINK1 + LINK2 * np.cos(q2))
    return np.array([q1, q2])


def expert_action(target: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """The scripted expert's action (2,) in [-1, 1]: PD control towards the IK joint angles."""
    q_des = inverse_kinematics(target)
    err = np.array([_wrap(q_des[0] - qpos[0]), q_des[1] - qpos[1]])
    return np.clip(EXPERT_KP * err - EXPERT_KD * np.asarray(qvel), -1.0, 1.0).astype(np.float32)


class ReacherPixelsTask(RenderedTask):
    """Reacher-v5 from pixels plus joint state; see the module docstring for the feeds."""

    name = "Reacher-v5-pixels"
    description = (
        "MuJoCo Reacher-v5 from 64x64 top-down camera frames plus joint state: "
        "touch the target; 50 steps."
    )
    success_rule = f"fingertip within {SUCCESS_DISTANCE} m of the target at the final (50th) step"
    metric = "success"
    max_steps = 50
    input_names = ("image", "state")
    action_dim = 2

    def __init__(self) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import gymnasium as gym
        import mujoco

        self._env: Any = gym.make("Reacher-v5", max_episode_steps=self.max_steps)
        self._sim: Any = self._env.unwrapped
        try:
            self._renderer: Any = mujoco.Renderer(self._sim.model, IMAGE_SIZE, IMAGE_SIZE)
        # No OpenGL context (EGL/OSMesa missing): ImportError, RuntimeError, mujoco.FatalError
        # or PyOpenGL's and GLFW's errors, which share no base; only mujoco runs here.
        except Exception as exc:
            self._env.close()
            raise BackendUnavailableError(
                f"cannot render MuJoCo frames offscreen with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')!r} ({exc}): install EGL (libegl1) or set "
                "MUJOCO_GL=osmesa with libosmesa6 installed."
            ) from exc
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = CAMERA_LOOKAT
        cam.distance = CAMERA_DISTANCE
        cam.elevation = CAMERA_ELEVATION
        cam.azimuth = CAMERA_AZIMUTH
        self._camera = cam

    # -- simulator access, shared by episodes, the expert and the training script --

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Reset the environment with ``seed`` and return the first feeds."""
        self._env.reset(seed=int(seed))
        return self.observe()

    def observe(self) -> dict[str, np.ndarray]:
        """The current feeds: ``image`` (1,3,64,64) in [0,1] and ``state`` (1,6), float32."""
        self._renderer.update_scene(self._sim.data, self._camera)
        frame = self._renderer.render()  # (64, 64, 3) uint8
        image = (frame.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        return {"image": np.ascontiguousarray(image), "state": self.joint_state()[None]}

    def joint_state(self) -> np.ndarray:
        """``[cos q1, cos q2, sin q1, sin q2, dq1, dq2]`` as float32 (6,)."""
        q = np.asarray(self._sim.data.qpos[:2], dtype=np.float64)
        dq = np.asarray(self._sim.data.qvel[:2], dtype=np.float64)
        return np.concatenate([np.cos(q), np.sin(q), dq]).astype(np.float32)

    def target_position(self) -> np.ndarray:
        """The target's (x, y) in metres (privileged: the policy sees it only in the image)."""
        return np.array(self._sim.get_body_com("target")[:2], dtype=np.float64)

    def fingertip_distance(self) -> float:
        """Distance in metres from the fingertip to the target, in the table plane."""
        tip = self._sim.get_body_com("fingertip")[:2]
        return float(np.linalg.norm(tip - self._sim.get_body_com("target")[:2]))

    def step(self, action: np.ndarray) -> float:
        """Clip ``action`` to [-1, 1], step the environment and return the reward."""
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(self.action_dim), -1.0, 1.0)
        _, reward, _, _, _ = self._env.step(a)
        return float(reward)

    def expert(self) -> np.ndarray:
        """The scripted expert's action (2,) for the current simulator state."""
        return expert_action(
            self.target_position(), self._sim.data.qpos[:2].copy(), self._sim.data.qvel[:2].copy()
        )

    # -- the Task interface --

    @property
    def succeeded(self) -> bool:
        """The success rule, read at the episode's end (the 50th step)."""
        return self.fingertip_distance() < SUCCESS_DISTANCE


def expert_policy(task: ReacherPixelsTask, noise: float = 0.0, seed: int = 0) -> Policy:
    """The scripted expert as a ``Policy`` for ``task``: it ignores the feeds and reads the
    target and joint state from ``task``'s simulator.

    ``noise`` adds Gaussian action noise of that standard deviation (from a generator seeded
    with ``seed``), as used for the training demonstrations.
    """
    rng = np.random.default_rng(seed)

    def policy(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        a = task.expert()
        if noise > 0.0:
            a = a + noise * rng.standard_normal(2).astype(np.float32)
        return [np.clip(a, -1.0, 1.0).astype(np.float32)[None]]

    return policy
