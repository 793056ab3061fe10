"""``act-policy``: the inference path of ACT (Action Chunking Transformer, Zhao et al. 2023).

ACT is the reference transformer policy for low-cost bimanual arms (ALOHA, LeRobot), so it is
the zoo's attention workload: a ResNet-18 backbone, a DETR-style post-norm encoder-decoder and
a chunk of 50 future actions per call. Only what runs at inference is built: the CVAE encoder is
dropped and the latent z is zeros, as in ACT. ACT builds 7 decoder layers but only reads the
first one's output (``hs[0]``), so one decoder layer (plus the shared final LayerNorm) is the
whole effective decoder. Deviations kept on purpose: one camera, 224x224 input, FFN width 1024.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robopt_compile.zoo import seeded
from robopt_compile.zoo.cnn import (
    IMAGE_SIZE,
    TRUNK_CHANNELS,
    ImageNetNormalize,
    ResNet18Trunk,
    init_resnet_,
    make_image,
)

QPOS_DIM = 14
ACTION_DIM = 14
CHUNK_SIZE = 50
D_MODEL = 256
N_HEADS = 8
FFN_DIM = 1024
ENC_LAYERS = 4
LATENT_DIM = 32
FEATURE_SIZE = IMAGE_SIZE // 32  # ResNet-18 downsamples by 32: 7x7 tokens
_INPUT_SEED_OFFSET = 1_000_003


def sine_position_embedding(
    height: int, width: int, d_model: int, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's normalised 2D sine embedding for an unmasked ``height x width`` map.

    Returns (height*width, d_model): first half encodes y, second half x. It depends only on
    the feature-map size, so it is computed once and stored as a constant.
    """
    half = d_model // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32)[None, :].expand(height, width)
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, d_model)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention on ``scaled_dot_product_attention``.

    Written out rather than ``nn.MultiheadAttention`` so the exported graph is plain
    MatMul/Softmax that every backend and every attention-fusion pass understands.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b, s, d = query.shape
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class EncoderLayer(nn.Module):
    """DETR post-norm encoder layer: positions are added to queries and keys, not values."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.self_attn(qk, qk, src))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):
    """DETR post-norm decoder layer: self-attention over queries, then cross-attention."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.cross_attn = MultiheadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(qk, qk, tgt))
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, memory + pos, memory))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class ACTPolicy(nn.Module):
    """ACT at inference: [z, qpos, 49 image tokens] -> encoder; 50 queries -> decoder -> chunk."""

    output_names: ClassVar[tuple[str, ...]] = ("actions",)

    def __init__(self) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.backbone = ResNet18Trunk()
        self.input_proj = nn.Conv2d(TRUNK_CHANNELS, D_MODEL, kernel_size=1)
        self.input_proj_robot_state = nn.Linear(QPOS_DIM, D_MODEL)
        self.latent_out_proj = nn.Linear(LATENT_DIM, D_MODEL)
        # Learned positions of the latent and qpos tokens; image tokens use the sine embedding.
        self.additional_pos_embed = nn.Embedding(2, D_MODEL)
        self.query_embed = nn.Embedding(CHUNK_SIZE, D_MODEL)
        pos = sine_position_embedding(FEATURE_SIZE, FEATURE_SIZE, D_MODEL)
        self.register_buffer("image_pos", pos[None], persistent=False)
        self.encoder = nn.ModuleList(
            EncoderLayer(D_MODEL, N_HEADS, FFN_DIM) for _ in range(ENC_LAYERS)
        )
        self.decoder = DecoderLayer(D_MODEL, N_HEADS, FFN_DIM)
        self.decoder_norm = nn.LayerNorm(D_MODEL)
        self.action_head = nn.Linear(D_MODEL, ACTION_DIM)

    def forward(self, image: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        b = qpos.shape[0]
        feat = self.input_proj(self.backbone(self.normalize(image)))  # (B, D, 7, 7)
        img_tokens = feat.flatten(2).transpose(1, 2)  # (B, 49, D)
        # ACT samples z ~ N(0, I) only in training; at inference z is zeros.
        latent = self.latent_out_proj(qpos.new_zeros(b, LATENT_DIM))
        state = self.input_proj_robot_state(qpos)
        src = torch.cat([latent[:, None], state[:, None], img_tokens], dim=1)
        pos = torch.cat([self.additional_pos_embed.weight[None], self.image_pos], dim=1)
        for layer in self.encoder:
            src = layer(src, pos)
        query_pos = self.query_embed.weight[None]  # (1, 50, D)
        tgt = torch.zeros_like(query_pos).expand(b, -1, -1)
        hs = self.decoder_norm(self.decoder(tgt, src, pos, query_pos))
        return self.action_head(hs)


def make_act_policy(seed: int = 0, batch: int = 1) -> tuple[ACTPolicy, dict[str, torch.Tensor]]:
    """Build ``act-policy`` with seeded random weights (transformer weights Xavier, as DETR)."""
    with seeded(seed):
        model = ACTPolicy()
        init_resnet_(model.backbone)
        for name, p in model.named_parameters():
            if not name.startswith("backbone") and p.dim() > 1:
                nn.init.xavier_uniform_(p)
    model.eval()
    g = torch.Generator().manual_seed(seed + _INPUT_SEED_OFFSET)
    image = make_image(batch, g)
    qpos = torch.randn(batch, QPOS_DIM, generator=g)
    return model, {"image": image, "qpos": qpos}
