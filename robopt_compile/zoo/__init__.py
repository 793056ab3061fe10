"""Model zoo: real robot-policy architectures with random weights and a fixed seed.

The zoo gives every pass, target and benchmark the same realistic models to work on without
downloading checkpoints. Importing this package must stay free of torch (the CLI lists zoo
names at start-up), so the table names factories as ``"module:function"`` strings that
``load_zoo`` imports only when a model is asked for.

Every factory has the signature ``make_xxx(seed: int = 0, batch: int = 1)`` and returns the
module in eval mode and a dict of example inputs. The dict's keys are the ONNX input names and
equal the names of ``forward``'s parameters, in order, so ``model(**inputs)`` works. Every zoo
module has a class attribute ``output_names`` naming its outputs.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from robopt_compile.errors import UnknownNameError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class ZooEntry:
    """One zoo model: its name, where its factory lives and what it stands for."""

    name: str
    factory: str  # "module:function", imported only by load_zoo
    description: str


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "state-mlp",
            "robopt_compile.zoo.mlp:make_state_mlp",
            "State-based MLP policy: obs (B,39) -> normalise -> 3x256 ReLU -> tanh action (B,7).",
        ),
        ZooEntry(
            "visuomotor-cnn",
            "robopt_compile.zoo.cnn:make_visuomotor_cnn",
            "ResNet-18 visuomotor policy: image (B,3,224,224) + proprio (B,14) -> action (B,7); "
            "about 1.82 GMAC.",
        ),
        ZooEntry(
            "act-policy",
            "robopt_compile.zoo.act:make_act_policy",
            "ACT (Zhao et al. 2023) inference path: ResNet-18 + 4-layer encoder / 1-layer "
            "decoder transformer; image (B,3,224,224) + qpos (B,14) -> actions (B,50,14).",
        ),
    )
}


def zoo_names() -> list[str]:
    """Names of the zoo models, in table order."""
    return list(ZOO)


def load_zoo(
    name: str, seed: int = 0, batch: int = 1
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Build a zoo model (eval mode) and example inputs of the given batch size.

    The same ``seed`` always gives the same weights and inputs; the inputs come from their own
    generator, so a different seed gives fresh inputs for parity checks.

    Raises:
        UnknownNameError: ``name`` is not in the zoo; the message suggests close names.
    """
    entry = ZOO.get(name)
    if entry is None:
        raise UnknownNameError("zoo model", name, zoo_names())
    module_name, _, func_name = entry.factory.partition(":")
    factory = getattr(importlib.import_module(module_name), func_name)
    return factory(seed=seed, batch=batch)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a model build, restoring the caller's RNG state after.

    Factories build under this so that the same seed always gives the same weights and a zoo
    build never changes the random stream of the code that asked for it.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
