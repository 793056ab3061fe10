"""``state-mlp``: a state-based MLP policy, the smallest model in the zoo.

It stands for the SAC/PPO actors used on proprioceptive or low-dimensional state (Meta-World's
39-dim observation, 7-DoF arm): the running observation normaliser and the tanh squash with
action scale/bias are kept in the graph because that is how such policies are deployed, and they
are what constant folding and elementwise fusion should eat.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from robopt_compile.zoo import seeded

OBS_DIM = 39
ACTION_DIM = 7
HIDDEN = 256
# Offset so the example inputs do not share a random stream with the weights.
_INPUT_SEED_OFFSET = 1_000_003


class StateMLPPolicy(nn.Module):
    """Normalise the observation, 3 hidden ReLU layers, tanh-squashed and rescaled action."""

    output_names: ClassVar[tuple[str, ...]] = ("action",)

    def __init__(
        self, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, hidden: int = HIDDEN
    ) -> None:
        super().__init__()
        # Running statistics from training, frozen at deployment.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))
        self.register_buffer("action_bias", torch.zeros(action_dim))
        self.trunk = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.mu = nn.Linear(hidden, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = ((obs - self.obs_mean) / self.obs_std).clamp(-10.0, 10.0)
        return torch.tanh(self.mu(self.trunk(x))) * self.action_scale + self.action_bias


def make_state_mlp(seed: int = 0, batch: int = 1) -> tuple[StateMLPPolicy, dict[str, torch.Tensor]]:
    """Build ``state-mlp`` with seeded random weights and non-trivial normaliser statistics."""
    with seeded(seed):
        model = StateMLPPolicy()
        model.obs_mean.normal_(0.0, 1.0)
        model.obs_std.uniform_(0.5, 2.0)
        model.action_scale.uniform_(0.5, 1.5)
        model.action_bias.normal_(0.0, 0.1)
    model.eval()
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    # Raw observations in the range the normaliser was fitted on.
    obs = model.obs_mean + model.obs_std * torch.randn(batch, OBS_DIM, generator=g)
    return model, {"obs": obs}
