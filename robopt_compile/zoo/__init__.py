"""Model zoo: robot-policy architectures, some with real trained weights.

The zoo gives every pass, target and benchmark the same realistic models to work on without
downloading checkpoints. Importing this package must stay free of torch (the CLI lists zoo
names at start-up), so the table names factories as ``"module:function"`` strings that
``load_zoo`` imports only when a model is asked for.

Every factory has the signature ``make_xxx(seed: int = 0, batch: int = 1)`` and returns the
module in eval mode and a dict of example inputs. The dict's keys are the ONNX input names and
equal the names of ``forward``'s parameters, in order, so ``model(**inputs)`` works. Every zoo
module has a class attribute ``output_names`` naming its outputs.

Trained models (``trained=True``) carry real weights: the pybullet policies read theirs from the
pybullet wheel (``zoo/pybullet.py``), the Reacher CNN and the Meta-World ResNet-18 from
``zoo/weights/`` (trained here by ``python -m robopt_compile.zoo.train_reacher`` and
``train_metaworld``). Their ``task`` names the simulated task that ``robopt-compile evaluate``
runs them on. The other models have RANDOM weights from a fixed seed: they exist for breadth and
speed figures; fidelity figures measured on them (cosine, token agreement) say little about a
trained policy (docs/METAWORLD.md).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robopt_compile.errors import UnknownNameError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class ZooEntry:
    """One zoo model: its name, where its factory lives and what it stands for."""

    name: str
    factory: str  # "module:function", imported only by load_zoo
    description: str
    task: str | None = None  # the simulated task it was trained for (robopt_compile.tasks)
    trained: bool = False  # real trained weights (else random weights with a fixed seed)
    # "policy": one graph; "vla" / "diffusion": a multi-graph bundle driven by a loop
    # (robopt_compile/compile/multigraph/vla.py, diffusion.py).
    kind: str = "policy"
    # "module:function" turning the task's feeds into the model's observation, for a model
    # that reads its task through a tokenizer (a VLA: instruction text and state tokens)
    adapter: str | None = None


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
        ZooEntry(
            "hopper-mlp",
            "robopt_compile.zoo.pybullet:make_hopper_mlp",
            "Pretrained pybullet Hopper policy (weights from the pybullet wheel): "
            "obs (B,15) -> 128 -> 64 ReLU -> action (B,3).",
            task="HopperBulletEnv-v0",
            trained=True,
        ),
        ZooEntry(
            "double-pendulum-mlp",
            "robopt_compile.zoo.pybullet:make_double_pendulum_mlp",
            "Pretrained pybullet InvertedDoublePendulum policy: obs (B,9) -> 64 -> 32 ReLU -> "
            "action (B,1).",
            task="InvertedDoublePendulumBulletEnv-v0",
            trained=True,
        ),
        ZooEntry(
            "pendulum-swingup-mlp",
            "robopt_compile.zoo.pybullet:make_pendulum_swingup_mlp",
            "Pretrained pybullet InvertedPendulumSwingup policy: obs (B,5) -> 64 -> 32 ReLU -> "
            "action (B,1).",
            task="InvertedPendulumSwingupBulletEnv-v0",
            trained=True,
        ),
        ZooEntry(
            "reacher-cnn",
            "robopt_compile.zoo.reacher:make_reacher_cnn",
            "Visuomotor CNN trained here by behaviour cloning on MuJoCo Reacher-v5: 64x64 "
            "top-down image + joint state -> action (B,2); spatial-softmax keypoints.",
            task="Reacher-v5-pixels",
            trained=True,
        ),
        ZooEntry(
            "metaworld-resnet18",
            "robopt_compile.zoo.metaworld:make_metaworld_resnet18",
            "ResNet-18 visuomotor policy (1.02 GMAC) trained here by behaviour cloning on four "
            "Meta-World tasks: 168x168 camera frame + hand state + task one-hot -> action (B,4).",
            task="metaworld-suite",
            trained=True,
        ),
        ZooEntry(
            "openvla-tiny",
            "robopt_compile.zoo.vla:make_vla",
            "OpenVLA-style VLA for tests (0.4M params): DINOv2+SigLIP 56px, 2-layer Llama, "
            "7 action tokens of 256 bins; vision + prefill + decode graphs with a KV cache.",
            kind="vla",
        ),
        ZooEntry(
            "openvla-mini",
            "robopt_compile.zoo.vla:make_vla",
            "OpenVLA-style VLA for benchmarks (150M params): DINOv2+SigLIP ViT-S 224px, "
            "12-layer Llama (768 wide, 32k vocab); random weights.",
            kind="vla",
        ),
        ZooEntry(
            "metaworld-vla",
            "robopt_compile.zoo.vla_metaworld:make_metaworld_vla",
            "OpenVLA-form VLA (7.9M params) trained here on the same four Meta-World tasks: "
            "84px DINOv2+SigLIP, 4-layer Llama, byte-tokenized instruction + hand-state "
            "tokens -> 4 action tokens of 256 bins.",
            task="metaworld-suite",
            trained=True,
            kind="vla",
            adapter="robopt_compile.zoo.vla_metaworld:observation",
        ),
        ZooEntry(
            "diffusion-policy",
            "robopt_compile.zoo.diffusion:make_diffusion",
            "Diffusion Policy (Chi et al. 2023, CNN): 1-D conv U-Net denoiser (18M params) "
            "conditioned on 2 state observations, DDIM 10 steps -> 16 x 7 action chunk.",
            kind="diffusion",
        ),
        ZooEntry(
            "rt1-tiny",
            "robopt_compile.zoo.rt1:make_keras",
            "RT-1-style policy built with Keras (needs the [tf] extra): 2 frames 96x96 through "
            "an EfficientNet-style tokenizer with FiLM on a 64-d instruction embedding, "
            "TokenLearner (8 tokens/frame), 2-layer causal transformer, 9 x 256-bin action "
            "logits.",
            kind="keras",
        ),
    )
}


def zoo_kind(source: str) -> str | None:
    """The zoo kind of ``zoo:NAME`` ("policy", "vla", "diffusion", "keras": a model built with
    Keras, compiled through the TensorFlow path), None for other sources."""
    entry = ZOO.get(source.removeprefix("zoo:")) if source.startswith("zoo:") else None
    return None if entry is None else entry.kind


def is_folder_source(source: str) -> bool:
    """A local folder holding ``config.json`` (a Hugging Face-style model folder; torch-free)."""
    from pathlib import Path

    p = Path(source)
    return p.is_dir() and (p / "config.json").is_file()


def is_vla(source: str) -> bool:
    """``zoo:NAME`` of a multi-graph VLA model (compiled by compile/multigraph/vla.py)."""
    return zoo_kind(source) == "vla"


def load_vla(name: str, seed: int = 0) -> Any:
    """The torch model of a VLA zoo entry (``OpenVlaStyle``, eval mode)."""
    entry = ZOO.get(name)
    if entry is None or entry.kind != "vla":
        vlas = [n for n, e in ZOO.items() if e.kind == "vla"]
        raise UnknownNameError("zoo VLA model", name, vlas)
    module_name, _, func_name = entry.factory.partition(":")
    return getattr(importlib.import_module(module_name), func_name)(name, seed=seed)


def keras_zoo_file(name: str, seed: int = 0) -> Any:
    """The ``.keras`` file of a Keras zoo entry (built once into robopt's cache)."""
    entry = ZOO[name]
    module_name, _, func_name = entry.factory.partition(":")
    return getattr(importlib.import_module(module_name), func_name)(seed=seed)


def task_adapter(source: str) -> Any:
    """The feeds -> observation function of ``zoo:NAME`` (None when the model reads its task's
    feeds as they are)."""
    entry = ZOO.get(source.removeprefix("zoo:")) if source.startswith("zoo:") else None
    if entry is None or entry.adapter is None:
        return None
    module_name, _, func_name = entry.adapter.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


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
    if entry.kind != "policy":
        from robopt_compile.errors import InputError

        raise InputError(
            f"zoo:{name} is a multi-graph {entry.kind} model; robopt-compile builds it as a "
            "bundle of several graphs and a driver loop (it has no single module to export)."
        )
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
