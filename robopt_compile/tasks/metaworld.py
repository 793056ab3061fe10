"""Meta-World manipulation tasks (Sawyer arm, MuJoCo), seen through a camera.

Each task is one Meta-World v3 environment (``metaworld`` 3.1, goal-observable variant) run
unchanged: 4-d actions in [-1, 1] (end-effector x, y, z displacement and gripper effort), five
MuJoCo substeps per step. Only what the policy sees is robopt's choice. Each step it gets two
feeds, batch 1:

* ``image`` (1, 3, 168, 168) float32 in [0, 1]: an RGB frame from Meta-World's fixed
  ``corner3`` camera, rendered with ``mujoco.Renderer`` without shadows, reflections, skybox
  or multisampling (a software OpenGL renders it in about 11 ms here). Objects and goals are
  visible only here.
* ``state`` (1, 4 + len(SUITE)) float32: the hand position (x, y, z in metres), the gripper's
  opening, and a one-hot of the task within ``SUITE`` (one policy serves every task of the
  suite; the VLA policies get the instruction text instead).

The first output of the policy is the action (1, 4); it is clipped to [-1, 1] before the step.

Episodes are seeded and deterministic: the seed draws the object and goal positions through
Meta-World's own ``seed()`` (``seeded_rand_vec``). An episode succeeds when the environment
reports ``success`` (its own per-task rule, e.g. the puck within 5 cm of the goal) within
``MAX_STEPS`` steps, and ends there. Meta-World's scripted experts (``metaworld.policies``)
read the full state (privileged) and succeed on 10 of 10 seeds of every task of ``SUITE``
here, in 45-90 steps.

This module is the one place where frames and states are built: the training script
(``robopt_compile.zoo.train_metaworld``) records its demonstrations through it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.tasks import Episode, Policy, Task
from robopt_compile.tasks.rendered import RenderedTask

# The tasks the trained Meta-World policies know, in the order of the state's one-hot.
SUITE = ("reach-v3", "push-v3", "button-press-topdown-v3", "drawer-open-v3")
INSTRUCTIONS = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the green goal",
    "button-press-topdown-v3": "press the button from the top",
    "drawer-open-v3": "open the drawer",
}
IMAGE_SIZE = 168
CAMERA = "corner3"
PROPRIO_DIM = 4  # hand x, y, z and gripper opening: Meta-World's observation[0:4]
STATE_DIM = PROPRIO_DIM + len(SUITE)
ACTION_DIM = 4
MAX_STEPS = 150  # the experts need at most about 110 steps


def suite_index(env_name: str) -> int:
    """The task's position in ``SUITE`` (its one-hot in the state feed)."""
    try:
        return SUITE.index(env_name)
    except ValueError:
        raise InputError(f"Meta-World task {env_name!r} is not one of {list(SUITE)}.") from None


def _expert_class(env_name: str) -> str:
    """``push-v3`` -> ``SawyerPushV3Policy`` (metaworld.policies' naming)."""
    words = env_name.removesuffix("-v3").split("-")
    return "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"


class MetaWorldTask(RenderedTask):
    """One Meta-World environment from pixels plus hand state; see the module docstring."""

    env_name = ""
    max_steps = MAX_STEPS
    input_names = ("image", "state")
    action_dim = ACTION_DIM
    feed_shapes = {"image": (3, IMAGE_SIZE, IMAGE_SIZE), "state": (STATE_DIM,)}  # noqa: RUF012

    def __init__(self) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE as ENVS

        self.index = suite_index(self.env_name)
        self._env: Any = ENVS[f"{self.env_name}-goal-observable"]()
        self._env._freeze_rand_vec = False  # a new object/goal layout per seed ...
        self._env.seeded_rand_vec = True  # ... drawn from the env's seeded generator
        model = self._env.model
        model.vis.quality.offsamples = 0  # no multisampling: 10x faster in software GL
        try:
            self._renderer: Any = mujoco.Renderer(model, IMAGE_SIZE, IMAGE_SIZE)
        # No OpenGL context (EGL/OSMesa missing): ImportError, RuntimeError, mujoco.FatalError
        # or PyOpenGL's errors, which share no base; only mujoco runs here.
        except Exception as exc:
            self._env.close()
            raise BackendUnavailableError(
                f"cannot render MuJoCo frames offscreen with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')!r} ({exc}): install EGL (libegl1) or set "
                "MUJOCO_GL=osmesa with libosmesa6 installed."
            ) from exc
        flags = mujoco.mjtRndFlag
        for flag in (flags.mjRND_SHADOW, flags.mjRND_REFLECTION, flags.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = False
        import metaworld.policies as experts

        self._expert: Any = getattr(experts, _expert_class(self.env_name))()
        self._obs: np.ndarray | None = None
        self._success = False

    @property
    def instruction(self) -> str:
        """The task in words, for language-conditioned policies."""
        return INSTRUCTIONS[self.env_name]

    # -- simulator access, shared by episodes, the expert and the training script --

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Reset with the object and goal layout of ``seed``; the first feeds."""
        self._env.seed(int(seed))
        self._obs, _ = self._env.reset()
        self._success = False
        return self.observe()

    def observe(self) -> dict[str, np.ndarray]:
        """The current feeds: ``image`` (1,3,168,168) in [0,1] and ``state`` (1,8), float32."""
        return {"image": self.frame()[None], "state": self.state()[None]}

    def frame(self) -> np.ndarray:
        """The camera frame (3, 168, 168) float32 in [0, 1]."""
        self._renderer.update_scene(self._env.data, camera=CAMERA)
        rgb = self._renderer.render()  # (168, 168, 3) uint8
        return np.ascontiguousarray((rgb.astype(np.float32) / 255.0).transpose(2, 0, 1))

    def state(self) -> np.ndarray:
        """Hand position, gripper opening and the task's one-hot, float32 (8,)."""
        assert self._obs is not None, "reset() first"
        onehot = np.zeros(len(SUITE), np.float32)
        onehot[self.index] = 1.0
        return np.concatenate([self._obs[:PROPRIO_DIM].astype(np.float32), onehot])

    def step(self, action: np.ndarray) -> float:
        """Clip ``action`` to [-1, 1] and step; the reward. ``succeeded`` says if it is done."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        self._obs, reward, _, _, info = self._env.step(a)
        self._success = self._success or bool(info.get("success"))
        return float(reward)

    @property
    def succeeded(self) -> bool:
        return self._success

    def expert(self) -> np.ndarray:
        """The scripted expert's action (4,) in [-1, 1] for the current state (privileged)."""
        assert self._obs is not None, "reset() first"
        return np.clip(self._expert.get_action(self._obs), -1.0, 1.0).astype(np.float32)

    # -- the Task interface --

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"metaworld-{self.env_name}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return (f"Meta-World {self.env_name} (Sawyer arm, MuJoCo) from {IMAGE_SIZE}x{IMAGE_SIZE} "
                f"{CAMERA} camera frames plus hand state: {self.instruction}; "
                f"{MAX_STEPS} steps at most.")  # fmt: skip

    success_rule = "the environment's own success flag (info['success']) within 150 steps"
    metric = "success"
    ends_on_success = True


class ReachTask(MetaWorldTask):
    env_name = "reach-v3"


class PushTask(MetaWorldTask):
    env_name = "push-v3"


class ButtonPressTopdownTask(MetaWorldTask):
    env_name = "button-press-topdown-v3"


class DrawerOpenTask(MetaWorldTask):
    env_name = "drawer-open-v3"


class MetaWorldSuiteTask(Task):
    """Every task of ``SUITE`` in turn: seed ``s`` runs ``SUITE[s % 4]`` with seed ``s``.

    One policy serves the whole suite (the state's one-hot names the task), so one
    ``--eval task:metaworld-suite,episodes=N`` covers all four tasks evenly, paired by seed.
    Each environment is created when its first episode runs.
    """

    name = "metaworld-suite"
    description = (
        f"Meta-World {', '.join(SUITE)} in turn (seed % {len(SUITE)} picks the task), "
        f"{IMAGE_SIZE}x{IMAGE_SIZE} camera frames plus hand state and task one-hot."
    )
    success_rule = MetaWorldTask.success_rule
    metric = "success"
    max_steps = MAX_STEPS
    input_names = MetaWorldTask.input_names
    action_dim = ACTION_DIM
    feed_shapes = MetaWorldTask.feed_shapes

    def __init__(self) -> None:
        self._tasks: dict[str, MetaWorldTask] = {}

    def task_for(self, seed: int) -> MetaWorldTask:
        """The environment that episode ``seed`` runs in (created on first use)."""
        env = SUITE[int(seed) % len(SUITE)]
        if env not in self._tasks:
            cls = next(c for c in MetaWorldTask.__subclasses__() if c.env_name == env)
            self._tasks[env] = cls()
        return self._tasks[env]

    def episode(self, policy: Policy, seed: int, record: bool = False) -> Episode:
        return self.task_for(seed).episode(policy, seed, record)

    def close(self) -> None:
        for t in self._tasks.values():
            t.close()
        self._tasks.clear()


def expert_policy(task: MetaWorldTask, noise: float = 0.0, seed: int = 0) -> Policy:
    """The scripted expert as a ``Policy`` for ``task`` (it reads ``task``'s simulator, not the
    feeds); ``noise``: Gaussian action noise of that standard deviation, seeded."""
    rng = np.random.default_rng(seed)

    def act(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        a = task.expert()
        if noise:
            a = np.clip(a + rng.normal(0.0, noise, a.shape), -1.0, 1.0).astype(np.float32)
        return [a[None]]

    return act
