"""An OpenVLA-style vision-language-action model, built from ``transformers`` components.

Architecture (Kim et al. 2024, "OpenVLA"; Prismatic VLMs), at a configurable scale:

- **Fused vision encoder**: a DINOv2 ViT and a SigLIP ViT see the same image; their patch
  features are concatenated channel-wise (DINOv2's CLS token dropped).
- **Projector**: a 3-layer GELU MLP from the fused width to the language model's width.
- **Llama backbone** (``LlamaForCausalLM``): the image's patch embeddings go right after BOS,
  then the prompt's tokens.
- **Action tokens**: 7 action dimensions, each one token out of 256 bins that occupy the last
  256 ids of the vocabulary; decoded greedily one by one, then de-tokenized to continuous
  actions (``bench/driver.py``: bin centres, then the dataset's 1st/99th percentiles).

Weights are random (fixed seed): no checkpoint is downloaded. ``openvla-tiny`` is for tests,
``openvla-mini`` (about 140M parameters) for benchmarks, and :data:`OPENVLA_7B` is the real
configuration, used only for planning and estimates (never built).

Decoding is constrained to the action tokens: the head computes logits for those 256 rows only
(OpenVLA takes the argmax over the whole vocabulary; a trained model puts it on an action
token, random weights would not). The exported graphs (``vision``, ``embed``, and ``llm``:
one graph for prefill and decode, with a key/value cache) and the numpy loop that drives them
are in ``robopt_compile/compile/multigraph/vla.py`` and ``bench/driver.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robopt_compile.bench.driver import bins_to_tokens, tokens_to_actions

N_BINS = 256
ACTION_DIMS = 7  # OpenVLA (BridgeData); a config with other statistics has len(q01)
# BridgeData V2's action statistics as published with OpenVLA (q01/q99 per dimension; the
# gripper dimension is not normalized). Used to de-tokenize; any dataset's stats fit here.
BRIDGE_Q01 = (-0.0299, -0.0414, -0.0260, -0.0879, -0.1320, -0.1574, 0.0)
BRIDGE_Q99 = (0.0286, 0.0411, 0.0409, 0.0843, 0.1151, 0.1423, 1.0)
BRIDGE_NORMALIZED = (True, True, True, True, True, True, False)


@dataclass(frozen=True)
class VlaConfig:
    """Scale of an OpenVLA-style model (ViT sizes, Llama size, image and prompt length)."""

    name: str
    image_size: int
    patch_size: int
    vit_width: int  # both ViTs (OpenVLA: DINOv2 ViT-L 1024, SigLIP SO400M 1152)
    vit_layers: int
    vit_heads: int
    vit_mlp: int
    llm_width: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_mlp: int
    vocab_size: int
    prompt_tokens: int  # BOS + "In: What action should the robot take to ...?\nOut:"
    q01: tuple[float, ...] = BRIDGE_Q01
    q99: tuple[float, ...] = BRIDGE_Q99
    normalized: tuple[bool, ...] = BRIDGE_NORMALIZED
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def action_dims(self) -> int:
        """Action tokens per step: one per dimension of the dataset's statistics."""
        return len(self.q01)

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def driver_config(self) -> dict[str, Any]:
        """What ``bench/driver.py`` needs to run and de-tokenize (JSON, in the manifest)."""
        return {
            "vocab_size": self.vocab_size,
            "n_bins": N_BINS,
            "action_dims": self.action_dims,
            "layers": self.llm_layers,
            "kv_heads": self.llm_kv_heads,
            "head_dim": self.llm_width // self.llm_heads,
            "q01": list(self.q01),
            "q99": list(self.q99),
            "normalized": list(self.normalized),
        }

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, from the configuration (no model is built)."""
        vw, ve = self.vit_width, self.vit_mlp
        per_vit_layer = 4 * vw * vw + 2 * vw * ve + 4 * vw + vw + ve + 4 * vw
        embed = 3 * self.patch_size**2 * vw + (self.patches + 1) * vw
        vit = self.vit_layers * per_vit_layer + embed
        fused = 2 * vw
        proj = fused * self.llm_width + 2 * self.llm_width**2 + 3 * self.llm_width
        hd = self.llm_width // self.llm_heads
        attn = self.llm_width * hd * (2 * self.llm_heads + 2 * self.llm_kv_heads)
        mlp = 3 * self.llm_width * self.llm_mlp
        layers = self.llm_layers * (attn + mlp + 2 * self.llm_width)
        embed = self.vocab_size * self.llm_width
        return {
            "vision": 2 * vit,
            "projector": proj,
            "llm_layers": layers,
            "embedding": embed,
            "lm_head": embed,
            "total": 2 * vit + proj + layers + 2 * embed,
        }


TINY = VlaConfig("openvla-tiny", 56, 14, 64, 2, 4, 128, 64, 2, 4, 2, 128, 512, 12)
MINI = VlaConfig("openvla-mini", 224, 14, 384, 6, 6, 1536, 768, 12, 12, 4, 2048, 32000, 24)
# The real OpenVLA-7B (Prismatic "prism-dinosiglip-224px" + Llama-2 7B): for estimates only.
OPENVLA_7B = VlaConfig(
    "openvla-7b", 224, 14, 1088, 24, 16, 4304, 4096, 32, 32, 32, 11008, 32064, 24,
    extra={"note": "ViT widths averaged (DINOv2 ViT-L/14 1024, SigLIP SO400M/14 1152)"},
)  # fmt: skip
CONFIGS = {c.name: c for c in (TINY, MINI, OPENVLA_7B)}


def _vit_configs(c: VlaConfig) -> tuple[Any, Any]:
    from transformers import Dinov2Config, SiglipVisionConfig

    common = {
        "hidden_size": c.vit_width,
        "num_hidden_layers": c.vit_layers,
        "num_attention_heads": c.vit_heads,
        "intermediate_size": c.vit_mlp,
        "image_size": c.image_size,
        "patch_size": c.patch_size,
    }
    dino = Dinov2Config(**{k: v for k, v in common.items() if k != "intermediate_size"},
                        mlp_ratio=c.vit_mlp // c.vit_width)  # fmt: skip
    siglip = SiglipVisionConfig(**common)
    for cfg in (dino, siglip):
        cfg._attn_implementation = "sdpa"
    return dino, siglip


def _llm_config(c: VlaConfig) -> Any:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.llm_width,
        intermediate_size=c.llm_mlp,
        num_hidden_layers=c.llm_layers,
        num_attention_heads=c.llm_heads,
        num_key_value_heads=c.llm_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # 0.02 (Llama's default) makes a random model whose greedy tokens ignore the input,
        # so token agreement would be trivially 100%; 0.05 gives input-dependent tokens.
        initializer_range=0.05,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


class FusedVision(nn.Module):
    """DINOv2 + SigLIP patch features, concatenated, projected to the LLM's width."""

    output_names = ("image_embeds",)

    def __init__(self, c: VlaConfig) -> None:
        super().__init__()
        from transformers import Dinov2Model, SiglipVisionModel

        dino_cfg, siglip_cfg = _vit_configs(c)
        self.dino = Dinov2Model(dino_cfg)
        self.siglip = SiglipVisionModel(siglip_cfg)
        fused = 2 * c.vit_width
        self.projector = nn.Sequential(
            nn.Linear(fused, c.llm_width), nn.GELU(),
            nn.Linear(c.llm_width, c.llm_width), nn.GELU(),
            nn.Linear(c.llm_width, c.llm_width),
        )  # fmt: skip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        d = self.dino(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
        s = self.siglip(pixel_values=pixel_values).last_hidden_state
        return self.projector(torch.cat([d, s], dim=-1))


def _flat(cache: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class LlmStep(nn.Module):
    """One graph for prefill and decode: ``inputs_embeds (1,T,D)`` + the key/value cache
    ``past.{i}.k|v (1,KV,S,hd)`` (S = 0 for the prefill) -> the next token's action logits
    (1,256) and the grown cache ``present.{i}.k|v (1,KV,S+T,hd)``. Positions continue from S."""

    def __init__(self, vla: OpenVlaStyle) -> None:
        super().__init__()
        self.llm, self.head = vla.llm, vla.action_head
        self.layers = vla.config.llm_layers

    def forward(self, inputs_embeds: torch.Tensor, *past: torch.Tensor) -> tuple:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.llm.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        n, t = past[0].shape[2], inputs_embeds.shape[1]
        mask = torch.ones((1, n + t), dtype=torch.int64)  # explicit: exports cleanly
        pos = torch.arange(n, n + t).unsqueeze(0)
        out = self.llm.model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=pos,
                             cache=cache, use_cache=True)  # fmt: skip
        return (self.head(out.last_hidden_state[:, -1]), *_flat(out.cache))

    def empty_cache(self) -> list[torch.Tensor]:
        c = self.llm.config
        hd = c.hidden_size // c.num_attention_heads
        return [torch.zeros((1, c.num_key_value_heads, 0, hd)) for _ in range(2 * self.layers)]


def prompt_embeds(embed: Any, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """The prefill sequence: BOS, the image's patch embeddings, then the prompt's tokens."""
    emb = embed(input_ids)
    return torch.cat([emb[:, :1], image_embeds, emb[:, 1:]], dim=1)


class OpenVlaStyle(nn.Module):
    """The whole model; :meth:`predict_action` is the eager reference a bundle must match."""

    def __init__(self, c: VlaConfig) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = c
        self.vision = FusedVision(c)
        self.llm = LlamaForCausalLM(_llm_config(c))
        # The head's rows of the 256 action tokens (the last ids of the vocabulary).
        self.action_head = nn.Linear(c.llm_width, N_BINS, bias=False)
        with torch.no_grad():
            self.action_head.weight.copy_(self.llm.lm_head.weight[-N_BINS:])

    def example_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """An observation: a random image and a random prompt (BOS + text-token ids)."""
        g = torch.Generator().manual_seed(seed)
        c = self.config
        pixels = torch.rand((1, 3, c.image_size, c.image_size), generator=g) * 2 - 1
        text = torch.randint(3, c.vocab_size - N_BINS, (1, c.prompt_tokens - 1), generator=g)
        ids = torch.cat([torch.ones((1, 1), dtype=torch.int64), text], dim=1)
        return {"pixel_values": pixels, "input_ids": ids}

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """numpy observation (``pixel_values``, ``input_ids``) -> continuous actions."""
        return self.predict_action(**{k: torch.from_numpy(v) for k, v in obs.items()})[1]

    @torch.no_grad()
    def predict_action(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, use_cache: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(action token ids (7,), continuous actions (7,)): greedy, constrained to the
        action tokens. ``use_cache=False`` recomputes the whole sequence for every token (the
        check that the key/value cache changes nothing)."""
        drv = self.config.driver_config()
        embed = self.llm.model.embed_tokens
        x = prompt_embeds(embed, input_ids, self.vision(pixel_values))
        step = LlmStep(self)
        out = step(x, *step.empty_cache())
        bins = [int(out[0][0].argmax())]
        past = out[1:]
        while len(bins) < self.config.action_dims:
            tok = torch.as_tensor(bins_to_tokens(np.array([[bins[-1]]]), drv))
            if use_cache:
                out = step(embed(tok), *past)
                past = out[1:]
            else:
                x = torch.cat([x, embed(tok)], dim=1)
                out = step(x, *step.empty_cache())
            bins.append(int(out[0][0].argmax()))
        tokens = bins_to_tokens(np.asarray(bins), drv)
        return tokens, tokens_to_actions(tokens, drv)


def make_vla(name: str = "openvla-tiny", seed: int = 0) -> OpenVlaStyle:
    """An OpenVLA-style model of a named scale with seeded random weights, in eval mode."""
    c = CONFIGS[name]
    if c is OPENVLA_7B:
        raise ValueError("openvla-7b is a configuration for estimates; it is never built here.")
    torch.manual_seed(seed)
    model = OpenVlaStyle(c).eval()
    # transformers initializes Llama's weights with std 0.02; the projector's default init
    # gives image embeddings of a similar scale.
    return model


FOLDER_ARCHITECTURE = "robopt-openvla-style"


def save_folder(model: OpenVlaStyle, folder: Any) -> None:
    """A local Hugging Face-style folder: ``config.json`` (the architecture and its scale) and
    ``model.safetensors`` (every weight), what ``robopt-compile FOLDER`` reads back."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in asdict(model.config).items() if k != "extra"}
    (out / "config.json").write_text(json.dumps(
        {"architectures": [FOLDER_ARCHITECTURE], "robopt_config": cfg}, indent=1))  # fmt: skip
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))


def load_folder(folder: Any) -> OpenVlaStyle:
    """The model of a folder written by :func:`save_folder`; one-line errors otherwise."""
    import json
    from pathlib import Path

    from robopt_compile.errors import InputError, ModelLoadError

    root = Path(folder)
    try:
        doc = json.loads((root / "config.json").read_text())
        arch = (doc.get("architectures") or ["?"])[0]
    except (OSError, ValueError, AttributeError, IndexError) as exc:
        raise ModelLoadError(f"{root}/config.json cannot be read ({exc}).") from exc
    if arch != FOLDER_ARCHITECTURE:
        raise InputError(
            f"{root}: a Hugging Face folder of architecture {arch!r} is not supported; robopt "
            f"reads folders of {FOLDER_ARCHITECTURE!r} (robopt_compile.zoo.vla.save_folder)."
        )
    raw = dict(doc.get("robopt_config") or {})
    for k in ("q01", "q99", "normalized"):
        if k in raw:
            raw[k] = tuple(raw[k])
    try:
        c = VlaConfig(**raw)
        model = OpenVlaStyle(c).eval()
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(str(root / "model.safetensors")),
                                                    strict=False)  # fmt: skip
    except (TypeError, OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{root}: the weights do not load into an {FOLDER_ARCHITECTURE} model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc
    if missing or unexpected:
        raise ModelLoadError(
            f"{root}/model.safetensors does not match config.json: missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}."
        )
    return model


def describe(c: VlaConfig) -> dict[str, Any]:
    """The configuration and its parameter counts, as JSON."""
    return {**asdict(c), "patches": c.patches, "parameters": c.parameter_counts()}
