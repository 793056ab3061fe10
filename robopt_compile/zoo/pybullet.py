"""Pretrained pybullet locomotion and balance policies, loaded with their real weights.

The ``pybullet`` wheel ships the MLP policies its authors trained in 2017 as numpy literals in
``pybullet_envs/examples/enjoy_TF_<Env>_2017may.py`` (two ReLU layers and a linear action
head). Those example scripts import the long-gone ``gym`` package, so robopt never imports
them: it parses each file with :mod:`ast` and reads only the ``np.array([...])`` literals. The
policies are deterministic; the tasks live in ``robopt_compile.tasks.pybullet``.

Measured returns of the fp32 policies are in the README and ``docs/BENCHMARKS.md``; the
policies for Walker2D, HalfCheetah and the humanoids are poor and are left out, and plain
InvertedPendulum saturates at 1000 whatever is done to it, so it cannot show a loss.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from robopt_compile.errors import ModelLoadError, install_hint
from robopt_compile.zoo import seeded

_INPUT_SEED_OFFSET = 1_000_003
_WEIGHT_NAMES = (
    "weights_dense1_w",
    "weights_dense1_b",
    "weights_dense2_w",
    "weights_dense2_b",
    "weights_final_w",
    "weights_final_b",
)
# zoo name -> (example file, typical observation scale for the example inputs)
POLICIES: dict[str, str] = {
    "hopper-mlp": "enjoy_TF_HopperBulletEnv_v0_2017may.py",
    "double-pendulum-mlp": "enjoy_TF_InvertedDoublePendulumBulletEnv_v0_2017may.py",
    "pendulum-swingup-mlp": "enjoy_TF_InvertedPendulumSwingupBulletEnv_v0_2017may.py",
}


def examples_dir() -> Path:
    """Where the installed pybullet wheel keeps its example policies (never imported)."""
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the pretrained pybullet policies come with the pybullet wheel, which is not "
            f"installed: {install_hint('sim')}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "examples"


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The ``name = np.array([...])`` literals of an example file, as float32 arrays."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError) as exc:
        raise ModelLoadError(f"cannot read pybullet example {path}: {exc}") from exc
    found: dict[str, np.ndarray] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        if (
            isinstance(target, ast.Name)
            and target.id in _WEIGHT_NAMES
            and isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "array"
            and value.args
        ):
            found[target.id] = np.asarray(ast.literal_eval(value.args[0]), dtype=np.float32)
    missing = [n for n in _WEIGHT_NAMES if n not in found]
    if missing:
        raise ModelLoadError(
            f"pybullet example {path.name} lacks the weights {missing}; the installed pybullet "
            "is not the expected 3.2.7: pip install 'pybullet==3.2.7'."
        )
    return found


class BulletMLPPolicy(nn.Module):
    """obs -> ReLU(128|64) -> ReLU(64|32) -> linear action: the 2017 pybullet policy shape."""

    output_names: ClassVar[tuple[str, ...]] = ("action",)

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        layers = []
        for i, (w, b) in enumerate(
            (
                ("weights_dense1_w", "weights_dense1_b"),
                ("weights_dense2_w", "weights_dense2_b"),
                ("weights_final_w", "weights_final_b"),
            )
        ):
            lin = nn.Linear(*weights[w].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(weights[w].T.copy()))
                lin.bias.copy_(torch.from_numpy(weights[b]))
            layers.append(lin)
            if i < 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def _make(name: str, seed: int, batch: int) -> tuple[BulletMLPPolicy, dict[str, torch.Tensor]]:
    weights = read_weights(examples_dir() / POLICIES[name])
    with seeded(seed):  # nn.Linear's init draws from the global RNG before the copy
        model = BulletMLPPolicy(weights).eval()
    obs_dim = model.net[0].in_features
    # pybullet observations are normalised to roughly unit scale (clipped to +-5).
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    obs = torch.randn(batch, obs_dim, generator=g).clamp(-5.0, 5.0)
    return model, {"obs": obs}


def make_hopper_mlp(seed: int = 0, batch: int = 1) -> tuple[BulletMLPPolicy, dict]:
    """pybullet Hopper policy (obs 15 -> action 3), pretrained weights from the wheel."""
    return _make("hopper-mlp", seed, batch)


def make_double_pendulum_mlp(seed: int = 0, batch: int = 1) -> tuple[BulletMLPPolicy, dict]:
    """pybullet InvertedDoublePendulum policy (obs 9 -> action 1)."""
    return _make("double-pendulum-mlp", seed, batch)


def make_pendulum_swingup_mlp(seed: int = 0, batch: int = 1) -> tuple[BulletMLPPolicy, dict]:
    """pybullet InvertedPendulumSwingup policy (obs 5 -> action 1)."""
    return _make("pendulum-swingup-mlp", seed, batch)
