"""``metaworld-vla``: an OpenVLA-form policy trained here on four Meta-World tasks.

The architecture is robopt's OpenVLA-style model (``zoo/vla.py``: DINOv2 + SigLIP patch
features, a 3-layer projector, a Llama, greedy decoding constrained to 256 action-token bins)
at a scale that trains on this 2-core machine in about half an hour
(``python -m robopt_compile.zoo.train_vla``); its weights are trained, not random.

What it reads (built from a Meta-World task's feeds by :func:`observation`):

* ``pixel_values`` (1, 3, 84, 84) in [-1, 1]: the task's 168x168 ``corner3`` frame, averaged
  over 2x2 pixels (exact, no interpolation).
* ``input_ids`` (1, 37): BOS, the instruction's UTF-8 bytes (ids 3..258, the byte tokenizer
  below) right-padded with PAD to 32, then the hand's x, y, z and gripper opening, each
  written as one of the 256 bin tokens (the state as text tokens, as pi0-FAST does; the
  policy gets the instruction, not the task's one-hot).

What it writes: 4 action tokens (end-effector x, y, z displacement and gripper effort),
de-tokenized by OpenVLA's rule onto [-1, 1] (q01 = -1, q99 = 1: Meta-World's action range).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopt_compile.errors import ModelLoadError
from robopt_compile.tasks import metaworld as mw
from robopt_compile.zoo.vla import N_BINS, OpenVlaStyle, VlaConfig

PAD, BOS, EOS, BYTE0 = 0, 1, 2, 3  # byte b is token BYTE0 + b
TEXT_TOKENS = 32  # instruction bytes, right-padded with PAD
PROPRIO_DIM = 4
IMAGE_SIZE = 84  # the task's 168x168 frame, 2x2 average
# Ranges of the hand's x, y, z (m) and gripper opening mapped onto the bins (the recorded
# demonstrations span x -0.11..0.11, y 0.40..0.89, z 0.05..0.43, gripper 0.26..1).
STATE_LOW = (-0.15, 0.35, 0.0, 0.0)
STATE_HIGH = (0.15, 0.95, 0.45, 1.0)
CONFIG = VlaConfig(
    "metaworld-vla", IMAGE_SIZE, 12, 192, 4, 3, 768, 256, 4, 4, 2, 768,
    BYTE0 + 256 + N_BINS, 1 + TEXT_TOKENS + PROPRIO_DIM,
    q01=(-1.0,) * 4, q99=(1.0,) * 4, normalized=(True,) * 4,
    extra={"tokenizer": "bytes (robopt_compile/zoo/vla_metaworld.py)", "trained": True},
)  # fmt: skip
WEIGHTS_FILE = Path(__file__).parent / "weights" / "metaworld_vla.npz"
TRAIN_COMMAND = "python -m robopt_compile.zoo.train_vla"
# The held-out observations of `robopt-compile zoo:metaworld-vla` (compile/multigraph/vla.py
# asks example_inputs(seed) for seeds 10,000..): the task state after a few expert steps.
OBS_STEPS = (0, 8, 16, 24, 32, 40)


def value_bins(values: np.ndarray, low: Any = -1.0, high: Any = 1.0) -> np.ndarray:
    """Continuous values -> bin index 0..255 of the action head (the nearest bin centre of
    OpenVLA's de-tokenization after mapping [low, high] onto [-1, 1])."""
    from robopt_compile.bench.driver import bin_centers

    centers = bin_centers(N_BINS)  # 255 centres; head bin b decodes to centre 255 - b
    v = 2.0 * (np.asarray(values, np.float64) - np.asarray(low)) / (
        np.asarray(high) - np.asarray(low)) - 1.0  # fmt: skip
    idx = np.abs(np.clip(v, -1, 1)[..., None] - centers).argmin(-1)
    return (N_BINS - 1 - idx).astype(np.int64)


def bin_token(bins: np.ndarray) -> np.ndarray:
    """Head bins -> vocabulary ids (the last 256 ids)."""
    return CONFIG.vocab_size - N_BINS + np.asarray(bins, np.int64)


def encode_prompt(instruction: str, proprio: np.ndarray) -> np.ndarray:
    """BOS, the instruction's bytes padded to TEXT_TOKENS, the hand state's 4 bin tokens:
    (1, 37) int64."""
    raw = instruction.encode("utf-8")[:TEXT_TOKENS]
    text = [BYTE0 + b for b in raw] + [PAD] * (TEXT_TOKENS - len(raw))
    state = bin_token(value_bins(np.asarray(proprio)[:PROPRIO_DIM], STATE_LOW, STATE_HIGH))
    return np.asarray([[BOS, *text, *state.tolist()]], np.int64)


def pixels(image: np.ndarray) -> np.ndarray:
    """(B, 3, 168, 168) in [0, 1] -> (B, 3, 84, 84) in [-1, 1], float32."""
    x = np.asarray(image, np.float32)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return (x * 2.0 - 1.0).astype(np.float32)


def observation(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Meta-World task's feeds (``image``, ``state``: hand state + task one-hot) -> the VLA's
    (``pixel_values``, ``input_ids``); the one-hot picks the instruction text."""
    state = np.asarray(feeds["state"], np.float32).reshape(-1)
    instruction = mw.INSTRUCTIONS[mw.SUITE[int(np.argmax(state[mw.PROPRIO_DIM :]))]]
    return {"pixel_values": pixels(feeds["image"]),
            "input_ids": encode_prompt(instruction, state[: mw.PROPRIO_DIM])}  # fmt: skip


# The task feeds the adapter reads (checked before an evaluation starts).
observation.task_feeds = dict(mw.MetaWorldTask.feed_shapes)  # type: ignore[attr-defined]


def task_policy(step: Any) -> Any:
    """A task ``Policy`` (feeds -> [action (1, 4)]) from ``step(obs) -> actions (4,)``, e.g.
    the torch model's ``act`` (the training script's evaluation)."""

    def act(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(step(observation(feeds)), np.float32).reshape(1, -1)]

    return act


@functools.lru_cache(maxsize=1)
def _suite() -> Any:
    """The suite the held-out observations come from: one per process, closed at exit."""
    from robopt_compile.tasks import get_task

    return get_task("metaworld-suite")


@functools.lru_cache(maxsize=1)
def _close_at_exit() -> None:
    """Registered once a renderer exists, so that it runs before MuJoCo's own exit handler
    terminates the EGL display (exit handlers run last-registered first)."""
    import atexit

    atexit.register(_suite().close)


def task_observation(seed: int) -> dict[str, torch.Tensor]:
    """A real observation: the suite's episode ``seed`` after a few scripted-expert steps."""
    task = _suite().task_for(seed)
    _close_at_exit()
    task.reset(seed)
    for _ in range(OBS_STEPS[(seed // 4) % len(OBS_STEPS)]):
        task.step(task.expert())
    return {k: torch.from_numpy(v) for k, v in observation(task.observe()).items()}


class MetaWorldVla(OpenVlaStyle):
    """The trained model; its example inputs are real Meta-World observations."""

    def example_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return task_observation(seed)


def save_weights(model: OpenVlaStyle, path: Path) -> None:
    """The state_dict as float16 arrays in a compressed .npz (no pickle)."""
    state = {k: v.detach().to(torch.float16).numpy() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **state)
    tmp.replace(path)


def load_weights(model: OpenVlaStyle, path: Path = WEIGHTS_FILE) -> OpenVlaStyle:
    """Weights written by :func:`save_weights` into ``model``; one-line errors otherwise."""
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: restore it from git or retrain "
                             f"({TRAIN_COMMAND}).")  # fmt: skip
    with np.load(path) as z:
        state = {k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path} does not fit {CONFIG.name} ({str(exc).splitlines()[0][:160]}); "
            f"retrain it ({TRAIN_COMMAND})."
        ) from exc
    return model


def make_metaworld_vla(name: str = CONFIG.name, seed: int = 0) -> MetaWorldVla:
    """The trained model in eval mode (``seed`` is unused: the weights are fixed)."""
    from robopt_compile.zoo import seeded

    del name, seed
    with seeded(0):  # the weights are overwritten; the caller's random stream is kept
        model = MetaWorldVla(CONFIG)
    return load_weights(model).eval()
