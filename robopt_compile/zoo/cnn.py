"""``visuomotor-cnn``: a ResNet-18 visuomotor policy, the zoo's convolution workload.

Most deployed image-based policies (Diffusion Policy's and ACT's encoders, RT-1-style
baselines, BC-Z) put a ResNet-18 trunk in front of a small head, so this is the model the conv
passes (BN folding, conv+ReLU fusion, layout, int8) are judged on. torchvision is not a
dependency, so the trunk is written out here; ``act.py`` reuses it.

Random BatchNorm statistics (not 0/1) make BN folding change the numbers for real, and the init
keeps activations at a sane scale through all 8 blocks so parity checks are meaningful.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from robopt_compile.zoo import seeded

IMAGE_SIZE = 224
PROPRIO_DIM = 14
ACTION_DIM = 7
TRUNK_CHANNELS = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INPUT_SEED_OFFSET = 1_000_003


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 conv-BN pairs and a (projected when needed) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """Standard ResNet-18 up to layer4: (B,3,224,224) -> (B,512,7,7), no pooling or fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        layers: list[nn.Module] = []
        in_ch = 64
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch))
            )
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def init_resnet_(trunk: nn.Module) -> None:
    """Kaiming conv init and random-but-plausible BN parameters and running statistics.

    The last BN of each residual branch gets a small gamma (~0.2), as a trained ResNet's does,
    so the residual stream does not blow up over 8 blocks. Uses torch's global RNG: call it
    under ``seeded``.
    """
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.normal_(0.0, 0.05)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for m in trunk.modules():
        if isinstance(m, BasicBlock):
            m.bn2.weight.data.uniform_(0.15, 0.25)


class ImageNetNormalize(nn.Module):
    """Map a [0,1] RGB image to ImageNet statistics inside the graph, as deployed models do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class VisuomotorCNNPolicy(nn.Module):
    """ResNet-18 image features + proprioception embedding -> MLP head -> 7-DoF action."""

    output_names: ClassVar[tuple[str, ...]] = ("action",)

    def __init__(
        self, proprio_dim: int = PROPRIO_DIM, action_dim: int = ACTION_DIM, hidden: int = 256
    ) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.trunk = ResNet18Trunk()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proprio_mlp = nn.Sequential(
            nn.Linear(proprio_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Linear(TRUNK_CHANNELS + 64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, action_dim),
        )

    def forward(self, image: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        feat = self.pool(self.trunk(self.normalize(image))).flatten(1)
        return self.head(torch.cat([feat, self.proprio_mlp(proprio)], dim=1))


def make_image(batch: int, generator: torch.Generator) -> torch.Tensor:
    """A [0,1] float32 camera image of the zoo's input size."""
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def make_visuomotor_cnn(
    seed: int = 0, batch: int = 1
) -> tuple[VisuomotorCNNPolicy, dict[str, torch.Tensor]]:
    """Build ``visuomotor-cnn`` with seeded random weights and BN statistics."""
    with seeded(seed):
        model = VisuomotorCNNPolicy()
        init_resnet_(model.trunk)
    model.eval()
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    image = make_image(batch, g)
    proprio = torch.randn(batch, PROPRIO_DIM, generator=g)
    return model, {"image": image, "proprio": proprio}
