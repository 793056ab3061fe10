"""A Diffusion Policy (Chi et al. 2023, CNN variant) for state observations, random weights.

- **Observation encoder**: the last ``n_obs_steps`` observations, flattened, through a 2-layer
  Mish MLP -> the global condition.
- **Denoiser**: the 1-D temporal conv U-Net of the paper (``ConditionalUnet1D``): sinusoidal
  diffusion-step embedding, residual conv blocks with FiLM conditioning on (step, observation),
  two down- and up-samplings over the action horizon, skip connections.
- **Sampler**: DDIM (eta = 0) on the squared-cosine schedule of 100 training steps, with a
  configurable number of inference steps (10 by default), predicted samples clipped to [-1, 1].
  The loop is ``bench/driver.py``'s ``DdimDriver`` (numpy); the eager reference runs the same
  loop with the torch modules, so engine and reference differ only in the graphs.

One control step is the whole sampling loop: ``horizon`` (16) actions of ``action_dim`` (7).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robopt_compile.bench.driver import DdimDriver, ddim_config


@dataclass(frozen=True)
class DiffusionConfig:
    name: str
    obs_dim: int = 20
    n_obs_steps: int = 2
    action_dim: int = 7
    horizon: int = 16
    cond_dim: int = 256
    step_embed: int = 128
    down_dims: tuple[int, ...] = (128, 256, 512)
    kernel: int = 5
    train_steps: int = 100
    inference_steps: int = 10


DIFFUSION = DiffusionConfig("diffusion-policy")
CONFIGS = {DIFFUSION.name: DIFFUSION}


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
        arg = x.float()[:, None] * freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2),
                                   nn.GroupNorm(8, cout), nn.Mish())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CondResBlock(nn.Module):
    """Two conv blocks; FiLM (per-channel scale and bias) from the condition between them."""

    def __init__(self, cin: int, cout: int, cond: int, k: int) -> None:
        super().__init__()
        self.b1, self.b2 = Conv1dBlock(cin, cout, k), Conv1dBlock(cout, cout, k)
        self.cond = nn.Sequential(nn.Mish(), nn.Linear(cond, 2 * cout))
        self.res = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        self.cout = cout

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.b1(x)
        film = self.cond(c).reshape(c.shape[0], 2, self.cout, 1)
        h = film[:, 0] * h + film[:, 1]
        return self.b2(h) + self.res(x)


class ConditionalUnet1D(nn.Module):
    """``sample (B,T,A)``, ``timestep (B,)`` int64, ``global_cond (B,G)`` -> noise (B,T,A)."""

    output_names = ("noise",)

    def __init__(self, c: DiffusionConfig) -> None:
        super().__init__()
        e = c.step_embed
        self.step = nn.Sequential(SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(),
                                  nn.Linear(4 * e, e))  # fmt: skip
        cond = e + c.cond_dim
        dims = [c.action_dim, *c.down_dims]
        pairs = list(itertools.pairwise(dims))
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                CondResBlock(a, b, cond, c.kernel), CondResBlock(b, b, cond, c.kernel),
                nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))  # fmt: skip
        mid = dims[-1]
        self.mid = nn.ModuleList([CondResBlock(mid, mid, cond, c.kernel) for _ in range(2)])
        self.up = nn.ModuleList()
        for a, b in reversed(pairs[1:]):  # every up level upsamples (as the paper's code)
            self.up.append(nn.ModuleList([
                CondResBlock(2 * b, a, cond, c.kernel), CondResBlock(a, a, cond, c.kernel),
                nn.ConvTranspose1d(a, a, 4, 2, 1)]))  # fmt: skip
        start = c.down_dims[0]
        self.final = nn.Sequential(Conv1dBlock(start, start, c.kernel),
                                   nn.Conv1d(start, c.action_dim, 1))  # fmt: skip

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        x = sample.transpose(1, 2)
        c = torch.cat([self.step(timestep), global_cond], dim=-1)
        skips = []
        for r1, r2, down in self.down:
            x = r2(r1(x, c), c)
            skips.append(x)
            x = down(x)
        for m in self.mid:
            x = m(x, c)
        for r1, r2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(r2(r1(x, c), c))
        return self.final(x).transpose(1, 2)


class ObsEncoder(nn.Module):
    """``obs (B, n_obs_steps, obs_dim)`` -> ``global_cond (B, cond_dim)``."""

    output_names = ("global_cond",)

    def __init__(self, c: DiffusionConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c.n_obs_steps * c.obs_dim, c.cond_dim), nn.Mish(),
                                 nn.Linear(c.cond_dim, c.cond_dim))  # fmt: skip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(obs.flatten(1))


class _TorchRunner:
    """A torch module behind the runner interface the driver uses (for the eager reference)."""

    def __init__(self, module: nn.Module, inputs: tuple[str, ...], output: str) -> None:
        self.module, self.inputs, self.output = module, inputs, output

    @torch.no_grad()
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.inputs]
        return {self.output: self.module(*args).numpy()}


class DiffusionPolicy(nn.Module):
    def __init__(self, c: DiffusionConfig) -> None:
        super().__init__()
        self.config = c
        self.encoder = ObsEncoder(c)
        self.denoiser = ConditionalUnet1D(c)

    def driver_config(self, steps: int | None = None) -> dict[str, Any]:
        c = self.config
        return ddim_config(c.train_steps, steps or c.inference_steps, c.horizon, c.action_dim)

    def eager_driver(self, steps: int | None = None) -> DdimDriver:
        runners = {
            "encoder": _TorchRunner(self.encoder, ("obs",), "global_cond"),
            "denoiser": _TorchRunner(self.denoiser, ("sample", "timestep", "global_cond"), "noise"),
        }
        return DdimDriver(runners, self.driver_config(steps))

    def example_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """An observation history and the initial noise of the sampler (fixed by ``seed``)."""
        c = self.config
        rng = np.random.default_rng(seed)
        return {
            "obs": rng.standard_normal((1, c.n_obs_steps, c.obs_dim)).astype(np.float32),
            "noise": rng.standard_normal((1, c.horizon, c.action_dim)).astype(np.float32),
        }


def make_diffusion(name: str = "diffusion-policy", seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    return DiffusionPolicy(CONFIGS[name]).eval()


def describe(c: DiffusionConfig) -> dict[str, Any]:
    m = DiffusionPolicy(c)
    return {**asdict(c), "parameters": {
        "encoder": sum(p.numel() for p in m.encoder.parameters()),
        "denoiser": sum(p.numel() for p in m.denoiser.parameters())}}  # fmt: skip
