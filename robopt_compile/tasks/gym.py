"""A team's own simulator as a robopt task: any gymnasium environment id, or ``module:factory``.

``--task ID`` (an id in gymnasium's registry, with pybullet's ``*BulletEnv-v0`` ids registered
when ``pybullet-envs-gymnasium`` is installed and MuJoCo's when ``mujoco`` is) or
``--task package.module:factory`` (a function of no arguments returning a
``gymnasium.Env``, or ``(env, to_feeds)``) runs the policy in that environment:

- **observation -> the model's inputs**: by default the observation is the model's one input
  (float32, batch axis added; a model with several inputs needs ``to_feeds``). A factory's
  ``to_feeds(obs) -> {input name: array without the batch axis}`` maps it to named inputs.
- **the model's first output -> the action**: reshaped to the action space's shape; for a
  ``Discrete`` space the index of its largest value.
- **seeds**: every episode starts from ``env.reset(seed=seed)``.
- **success**: ``info["success"]`` or ``info["is_success"]`` true at some step, when the
  environment reports either; else, with ``--success-return R``, a return >= R; else lasting
  to the time limit without terminating (falling, leaving the arena...).

The task's name carries its options (``ID[success-return=R]``), so a worker that runs a batch
of episodes (``--executor ray``) builds the same task from the name alone; a factory's module
must be importable there too.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.tasks import Episode, Policy, Task, quiet_stdout

DEFAULT_MAX_STEPS = 1000
_OPTIONS = re.compile(r"^(?P<id>.+?)\[success-return=(?P<ret>[-+0-9.eE]+)\]$")
SUCCESS_KEYS = ("success", "is_success")


def split_name(name: str) -> tuple[str, float | None]:
    """``ID[success-return=R]`` -> (ID, R); a name without options -> (name, None)."""
    m = _OPTIONS.match(name)
    if m is None:
        return name, None
    try:
        return m["id"], float(m["ret"])
    except ValueError:
        raise InputError(f"task {name!r}: success-return must be a number.") from None


def task_name(env: str, success_return: float | None) -> str:
    """The name a user task is known by (results, workers): its options included."""
    return env if success_return is None else f"{env}[success-return={success_return:g}]"


def registered_ids() -> set[str] | None:
    """gymnasium's registry with pybullet's ids added when installed; None: no gymnasium."""
    try:
        import gymnasium as gym
    except ImportError:
        return None
    _register_pybullet()
    return set(gym.registry)


def _register_pybullet() -> None:
    """Register pybullet's ``*BulletEnv-v0`` ids, when pybullet-envs-gymnasium is installed."""
    try:
        with quiet_stdout((1, 2)):  # pybullet prints its build time on import
            import pybullet_envs_gymnasium  # noqa: F401 - registers the ids on import
    except ImportError:
        pass


def _make(env_id: str) -> tuple[Any, Any]:
    """(env, to_feeds or None) for a gymnasium id or a ``module:factory``."""
    if ":" not in env_id:
        import gymnasium as gym

        _register_pybullet()
        try:
            with quiet_stdout():
                return gym.make(env_id), None
        except gym.error.DependencyNotInstalled as exc:
            raise BackendUnavailableError(f"task {env_id!r}: {str(exc).splitlines()[0]}") from exc
        except gym.error.Error as exc:  # gymnasium's own refusal of this id: one line
            raise InputError(f"task {env_id!r}: gymnasium cannot make it ({exc}).") from exc
    module_name, _, attr = env_id.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(
            f"task {env_id!r}: cannot import {attr!r} from {module_name!r} ({exc}); give "
            "package.module:factory, importable here (and on every worker with --executor)."
        ) from None
    try:
        made = factory()
    except Exception as exc:  # the user's code may raise anything: one line naming it
        raise InputError(
            f"task {env_id!r}: the factory raised {type(exc).__name__}: {str(exc)[:160]}."
        ) from exc
    if isinstance(made, tuple):
        if len(made) != 2 or not callable(made[1]):
            raise InputError(
                f"task {env_id!r}: the factory returned a tuple of {len(made)}; return an env "
                "or (env, to_feeds) with to_feeds(obs) -> {input name: array}."
            )
        return made
    return made, None


class GymTask(Task):
    """A gymnasium environment as a task (module doc)."""

    extra = "sim"
    metric = "return"

    def __init__(self, name: str) -> None:
        env_id, self.success_return = split_name(name)
        self.env_id = env_id
        self._name = name
        self._env, self._to_feeds = _make(env_id)
        env = self._env
        spec = getattr(env, "spec", None)
        self.max_steps = int(getattr(spec, "max_episode_steps", None) or DEFAULT_MAX_STEPS)
        self.description = f"user task {env_id} (gymnasium), up to {self.max_steps} steps."
        if self.success_return is not None:
            self.success_rule = (f"info['success'] when the environment reports it, else "
                                 f"return >= {self.success_return:g}")  # fmt: skip
        else:
            self.success_rule = ("info['success'] when the environment reports it, else "
                                 "reaching the time limit without terminating")  # fmt: skip
        space = env.action_space
        self._discrete = hasattr(space, "n") and not getattr(space, "shape", None)
        self._action_shape = tuple(getattr(space, "shape", ()) or ())
        self.action_dim = int(space.n) if self._discrete else int(np.prod(self._action_shape))
        if self._to_feeds is None:
            # one input, whatever the model calls it (the policy says; "obs" when it does not)
            self.single_input = True
            self.input_names = ("obs",)
            self.feed_shapes = {"obs": tuple(env.observation_space.shape or ())}
        else:
            self.single_input = False
            with quiet_stdout():
                obs, _ = env.reset(seed=0)
            feeds = self._to_feeds(obs)
            self.input_names = tuple(feeds)
            self.feed_shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    def _feeds(self, obs: Any, policy: Policy) -> dict[str, np.ndarray]:
        if self._to_feeds is not None:
            return {k: np.asarray(v, np.float32)[None] for k, v in self._to_feeds(obs).items()}
        names = getattr(policy, "input_names", None) or ["obs"]
        return {names[0]: np.asarray(obs, np.float32)[None]}

    def _action(self, out: np.ndarray) -> Any:
        a = np.asarray(out)
        if self._discrete:
            return int(np.argmax(a.reshape(-1)))
        return a.astype(np.float32).reshape(self._action_shape)

    def episode(self, policy: Policy, seed: int, record: bool = False) -> Episode:
        env = self._env
        with quiet_stdout():
            obs, _ = env.reset(seed=int(seed))
        total, steps, terminated, truncated = 0.0, 0, False, False
        reported: bool | None = None  # what the environment's info said about success
        logs: dict[str, list[np.ndarray]] = {}
        acts: list[np.ndarray] = []
        while steps < self.max_steps:
            feeds = self._feeds(obs, policy)
            out = np.asarray(policy(feeds)[0])
            if record:
                for k, v in feeds.items():
                    logs.setdefault(k, []).append(v[0])
                acts.append(out.reshape(-1).astype(np.float32))
            obs, reward, terminated, truncated, info = env.step(self._action(out))
            total += float(reward)
            steps += 1
            for key in SUCCESS_KEYS:
                if key in info:
                    reported = bool(reported) or bool(info[key])
            if terminated or truncated:
                break
        if reported is not None:
            success = reported
        elif self.success_return is not None:
            success = total >= self.success_return
        else:
            success = not terminated
        ep = Episode(seed=int(seed), ret=total, success=bool(success), steps=steps)
        if record:
            ep.feeds = {k: np.stack(v) for k, v in logs.items()}
            ep.actions = np.stack(acts)
        return ep

    def close(self) -> None:
        with quiet_stdout():
            self._env.close()
