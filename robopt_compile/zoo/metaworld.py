"""``metaworld-resnet18``: a ResNet-18 visuomotor policy trained here on four Meta-World tasks.

Its weights are trained, not random: ``python -m robopt_compile.zoo.train_metaworld`` clones
Meta-World's scripted experts by behaviour cloning from 168x168 camera frames plus hand state
(tasks ``metaworld-*``, ``robopt_compile/tasks/metaworld.py``) and writes
``weights/metaworld_resnet18.npz`` (the state_dict as float16 arrays, no pickle) and
``weights/metaworld_resnet18.json`` (settings, seeds, measured success). See docs/METAWORLD.md.

Inputs (the ONNX input names):

* ``image`` (B, 3, 168, 168) float32 in [0, 1]: the ``corner3`` camera frame.
* ``state`` (B, 8) float32: hand x, y, z (m), gripper opening, one-hot of the task in
  ``robopt_compile.tasks.metaworld.SUITE``.

Output ``action`` (B, 4) in [-1, 1]: end-effector displacement and gripper effort.

Architecture: torchvision's ResNet-18 layout written out (torchvision is not installed here):
a 7x7/2 stem, max pool, four stages of two basic blocks (64, 128, 256, 512 channels), global
average pool; about 1.02 GMAC at 168x168, the backbone of Diffusion Policy, ACT and many
behaviour-cloning baselines. The 512 image features and a 64-d embedding of the normalised
state feed a 2-layer MLP with a tanh on the action.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from robopt_compile.errors import ModelLoadError
from robopt_compile.zoo import seeded

IMAGE_SIZE = 168
STATE_DIM = 8
ACTION_DIM = 4
WIDTH = 64
HIDDEN = 256
_INPUT_SEED_OFFSET = 1_000_003
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "metaworld_resnet18.npz"
TRAIN_COMMAND = "python -m robopt_compile.zoo.train_metaworld"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (ResNet's basic block)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18_trunk(width: int = WIDTH) -> nn.Sequential:
    """ResNet-18 up to the global average pool: (B, 3, H, W) -> (B, 8 * width)."""
    w = width
    stages = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
    layers: list[nn.Module] = [
        nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]  # fmt: skip
    for cin, cout, stride in stages:
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class MetaWorldResNetPolicy(nn.Module):
    """ResNet-18 image features + embedded state -> MLP -> tanh action (B, 4)."""

    output_names: ClassVar[tuple[str, ...]] = ("action",)

    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN) -> None:
        super().__init__()
        # ImageNet statistics for the frame, the training data's for the state.
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1))
        self.register_buffer("state_mean", torch.zeros(STATE_DIM))
        self.register_buffer("state_std", torch.ones(STATE_DIM))
        self.trunk = resnet18_trunk(width)
        self.state_net = nn.Sequential(nn.Linear(STATE_DIM, 64), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(8 * width + 64, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, ACTION_DIM), nn.Tanh(),
        )  # fmt: skip

    def forward(self, image: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        f = self.trunk((image - self.image_mean) / self.image_std)
        s = self.state_net((state - self.state_mean) / self.state_std)
        return self.head(torch.cat([f, s], dim=1))


def save_weights(model: MetaWorldResNetPolicy, path: Path) -> None:
    """The state_dict as float16 numpy arrays (``np.savez_compressed``, no pickle); BatchNorm's
    step counter stays an integer."""
    arrays = {}
    for k, v in model.state_dict().items():
        a = v.detach().cpu().numpy()
        arrays[k] = a.astype(np.float16) if a.dtype.kind == "f" else a
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: savez must not append ".npz" to the name
        np.savez_compressed(f, **arrays)


def load_weights(model: MetaWorldResNetPolicy, path: Path = WEIGHTS_FILE) -> MetaWorldResNetPolicy:
    """Load ``path`` into ``model`` (float16 on disk, float32 in the model).

    Raises:
        ModelLoadError: the file is missing, unreadable or does not fit the architecture.
    """
    if not path.is_file():
        raise ModelLoadError(
            f"metaworld-resnet18 weights {path} are missing: train them with `{TRAIN_COMMAND}`."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {
                k: torch.from_numpy(
                    np.array(data[k], dtype=np.float32 if data[k].dtype.kind == "f" else None)
                )
                for k in data.files
            }
        model.load_state_dict(state, strict=True)
    # Broad: a corrupt .npz fails in numpy, zipfile, zlib, ast or tokenize with a dozen unrelated
    # types, a misfit in torch (RuntimeError); only numpy and torch run here.
    except Exception as exc:
        raise ModelLoadError(
            f"metaworld-resnet18 weights {path} are unreadable or do not fit the model ({exc}); "
            f"retrain them with `{TRAIN_COMMAND}`."
        ) from exc
    return model


def example_inputs(seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    """Inputs drawn from ``torch.Generator`` seeded with ``seed + 1_000_003``: frames of uniform
    noise around the table's mid-grey, hand positions in Meta-World's workspace and a random
    task one-hot (real frames need MuJoCo and an OpenGL context; the closed-loop evaluation
    and ``--calibration task`` use real ones)."""
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    image = (0.45 + 0.2 * torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)).clamp(0, 1)
    low = torch.tensor([-0.5, 0.40, 0.05, 0.0])
    high = torch.tensor([0.5, 0.90, 0.30, 1.0])
    proprio = low + (high - low) * torch.rand(batch, 4, generator=g)
    task = torch.randint(0, STATE_DIM - 4, (batch,), generator=g)
    onehot = torch.nn.functional.one_hot(task, STATE_DIM - 4).float()
    return {"image": image, "state": torch.cat([proprio, onehot], dim=1)}


def make_metaworld_resnet18(
    seed: int = 0, batch: int = 1
) -> tuple[MetaWorldResNetPolicy, dict[str, torch.Tensor]]:
    """The trained policy (eval mode) and example inputs."""
    with seeded(seed):
        model = MetaWorldResNetPolicy()
    load_weights(model)
    return model.eval(), example_inputs(seed, batch)
