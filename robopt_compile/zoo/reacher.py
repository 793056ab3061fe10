"""``reacher-cnn``: a small visuomotor CNN trained here by behaviour cloning on Reacher-v5.

Unlike the other zoo models its weights are trained, not random: ``python -m
robopt_compile.zoo.train_reacher`` clones a scripted expert from 64x64 top-down frames plus joint
state (task ``Reacher-v5-pixels``, ``robopt_compile/tasks/reacher.py``) and writes
``weights/reacher_cnn.npz`` (the state_dict as float32 arrays, no pickle) and
``weights/reacher_cnn.json`` (settings and measured success). See ``docs/REACHER.md``.

Inputs (the ONNX input names):

* ``image`` (B, 3, 64, 64) float32 in [0, 1]: RGB top-down frame of the arena.
* ``state`` (B, 6) float32: ``[cos q1, cos q2, sin q1, sin q2, dq1, dq2]`` (rad, rad/s).

Output ``action`` (B, 2): joint torques in units of the motors' range; the task clips to
[-1, 1].

Architecture: three 3x3/5x5 ReLU convolutions (the first with stride 2, so 32x32 feature maps),
a 1x1 convolution to 16 keypoint heat maps, a spatial softmax that turns each map into the
expected (x, y) image coordinate (softmax over the flattened 32x32 map, then a matmul with a
fixed coordinate buffer: plain ops only, so ONNX export is clean), and a 2x128 ReLU MLP on the
32 keypoint coordinates and the normalised joint state. A linear head from the keypoints to the
target's (x, y) is trained as an auxiliary loss and is not part of ``forward`` (the deployed
graph outputs only the action). Measured figures are in ``docs/REACHER.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from robopt_compile.errors import ModelLoadError
from robopt_compile.zoo import seeded

IMAGE_SIZE = 64
STATE_DIM = 6
ACTION_DIM = 2
KEYPOINTS = 16
HIDDEN = 128
FEATURE_SIZE = 32  # side of the keypoint heat maps
# Target position is predicted in units of this (the targets lie in a disc of radius 0.2 m).
TARGET_SCALE = 0.2
# Offset so the example inputs do not share a random stream with anything else.
_INPUT_SEED_OFFSET = 1_000_003
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "reacher_cnn.npz"
TRAIN_COMMAND = "python -m robopt_compile.zoo.train_reacher"


class ReacherCNNPolicy(nn.Module):
    """Conv trunk -> spatial-softmax keypoints -> MLP with joint state -> action (B, 2)."""

    output_names: ClassVar[tuple[str, ...]] = ("action",)

    def __init__(self, keypoints: int = KEYPOINTS, hidden: int = HIDDEN) -> None:
        super().__init__()
        # Input normalisation, fitted on the training data.
        self.register_buffer("image_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("image_std", torch.full((1, 3, 1, 1), 0.25))
        self.register_buffer("state_mean", torch.zeros(STATE_DIM))
        self.register_buffer("state_std", torch.ones(STATE_DIM))
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, keypoints, 1),
        )
        # Pixel-centre coordinates in [-1, 1] of the flattened heat map, x to the right and
        # y up (as in the world frame of the top-down camera); (HW, 2).
        lin = (torch.arange(FEATURE_SIZE, dtype=torch.float32) + 0.5) / FEATURE_SIZE * 2.0 - 1.0
        ys, xs = torch.meshgrid(-lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))
        self.keypoints = keypoints
        self.mlp = nn.Sequential(
            nn.Linear(2 * keypoints + STATE_DIM, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, ACTION_DIM),
        )
        # Training-only auxiliary head: target (x, y) / TARGET_SCALE from the keypoints.
        self.target_head = nn.Linear(2 * keypoints, 2)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Keypoint coordinates (B, 2K) in [-1, 1] from the image."""
        maps = self.trunk((image - self.image_mean) / self.image_std)  # (B, K, 32, 32)
        attention = torch.softmax(maps.flatten(2), dim=-1)  # (B, K, HW)
        return torch.matmul(attention, self.coords).flatten(1)  # (B, K, 2) -> (B, 2K)

    def act(self, keypoints: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Action (B, 2) from keypoint coordinates and the raw joint state."""
        s = (state - self.state_mean) / self.state_std
        return self.mlp(torch.cat([keypoints, s], dim=1))

    def forward(self, image: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.act(self.features(image), state)

    def forward_train(
        self, image: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Action and the auxiliary target-position prediction (training only)."""
        kp = self.features(image)
        return self.act(kp, state), self.target_head(kp)


def save_weights(model: ReacherCNNPolicy, path: Path) -> None:
    """Write the state_dict as float32 numpy arrays (``np.savez``, no pickle)."""
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: savez must not append ".npz" to the name
        np.savez(f, **arrays)


def load_weights(model: ReacherCNNPolicy, path: Path = WEIGHTS_FILE) -> ReacherCNNPolicy:
    """Load ``path`` into ``model``.

    Raises:
        ModelLoadError: the file is missing, unreadable or does not fit the architecture.
    """
    if not path.is_file():
        raise ModelLoadError(
            f"reacher-cnn weights {path} are missing: train them with `{TRAIN_COMMAND}`."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: torch.from_numpy(np.array(data[k], dtype=np.float32)) for k in data.files}
        model.load_state_dict(state, strict=True)
    # Broad: a corrupt .npz fails in numpy, zipfile, zlib, ast or tokenize with a dozen unrelated
    # types, a misfit in torch (RuntimeError); only numpy and torch run here.
    except Exception as exc:
        raise ModelLoadError(
            f"reacher-cnn weights {path} are unreadable or do not fit the model ({exc}); "
            f"retrain them with `{TRAIN_COMMAND}`."
        ) from exc
    return model


def example_inputs(seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    """Plausible inputs drawn from ``torch.Generator`` seeded with ``seed + 1_000_003``.

    Real frames need MuJoCo and an OpenGL context, so the frames are synthesised instead: the
    rendered arena's grey floor, a red target blob in the 0.2 m disc and the two blue-green
    links from the centre at random joint angles, drawn with the camera's scale (64 pixels span
    about 0.5 m), plus a little pixel noise. ``state`` holds the same random joint angles and
    velocities of a few rad/s.
    """
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    half_width = 0.6 * math.tan(math.radians(22.5))  # metres from centre to frame edge
    q1 = (torch.rand(batch, generator=g) * 2.0 - 1.0) * math.pi
    q2 = (torch.rand(batch, generator=g) * 2.0 - 1.0) * 2.5
    dq = torch.randn(batch, 2, generator=g) * 2.0
    radius = 0.2 * torch.sqrt(torch.rand(batch, generator=g))
    angle = torch.rand(batch, generator=g) * 2.0 * math.pi
    target = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)

    # World (x, y) of every pixel centre, (64, 64) each; x to the right, y up.
    lin = ((torch.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 2.0 - 1.0) * half_width
    wy, wx = torch.meshgrid(-lin, lin, indexing="ij")
    pix = torch.stack([wx, wy], dim=-1)[None]  # (1, 64, 64, 2)

    def seg_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ab = (b - a)[:, None, None]
        ap = pix - a[:, None, None]
        t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0.0, 1.0)
        return (ap - t[..., None] * ab).norm(dim=-1)  # (B, 64, 64)

    elbow = 0.1 * torch.stack([torch.cos(q1), torch.sin(q1)], dim=1)
    tip = elbow + 0.11 * torch.stack([torch.cos(q1 + q2), torch.sin(q1 + q2)], dim=1)
    arm = torch.minimum(seg_dist(torch.zeros_like(elbow), elbow), seg_dist(elbow, tip))
    px = 2.0 * half_width / IMAGE_SIZE
    arm_w = torch.sigmoid((0.01 - arm) / (0.3 * px))[:, None]  # (B, 1, 64, 64)
    tgt_w = torch.sigmoid((0.009 - (pix - target[:, None, None]).norm(dim=-1)) / (0.3 * px))
    tgt_w = tgt_w[:, None]

    floor = torch.tensor([0.647, 0.647, 0.647]).view(1, 3, 1, 1)
    arm_rgb = torch.tensor([0.05, 0.30, 0.40]).view(1, 3, 1, 1)
    tgt_rgb = torch.tensor([0.55, 0.10, 0.20]).view(1, 3, 1, 1)
    image = floor * (1 - arm_w) + arm_rgb * arm_w
    image = image * (1 - tgt_w) + tgt_rgb * tgt_w
    image = image + 0.01 * torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    angles = torch.stack([torch.cos(q1), torch.cos(q2), torch.sin(q1), torch.sin(q2)], dim=1)
    state = torch.cat([angles, dq], dim=1)
    return {"image": image.clamp(0.0, 1.0).contiguous(), "state": state.contiguous()}


def make_reacher_cnn(
    seed: int = 0, batch: int = 1
) -> tuple[ReacherCNNPolicy, dict[str, torch.Tensor]]:
    """Build ``reacher-cnn`` with its trained weights (eval mode) and example inputs.

    The weights are the committed ``weights/reacher_cnn.npz`` whatever ``seed`` is; ``seed``
    only picks the example inputs (see ``example_inputs``).

    Raises:
        ModelLoadError: the weights file is missing or corrupt (run the training script).
    """
    # The random initialisation is overwritten by the weights; building under ``seeded`` keeps
    # it off the caller's global RNG stream.
    with seeded(seed):
        model = ReacherCNNPolicy()
    load_weights(model)
    model.eval()
    return model, example_inputs(seed=seed, batch=batch)
