"""``zoo:rt1-tiny``: an RT-1-style policy built with Keras, as the original is (issue 22).

RT-1 (Brohan et al., 2022) tokenizes each camera frame with an EfficientNet whose blocks are
conditioned on the instruction by FiLM, squeezes each frame's feature map to a few tokens with
TokenLearner, runs a decoder-only transformer over the tokens of a short history of frames and
reads out one 256-bin token per action dimension. This is the same structure at a size this
machine compiles in seconds, with RANDOM weights from a fixed seed (no checkpoint can be
downloaded here): fidelity figures on it say how faithfully an engine computes the model, not
how well a trained RT-1 would do a task.

| part | here | RT-1 |
|---|---|---|
| frames | ``FRAMES`` x 96x96 RGB | 6 x 300x300 |
| instruction | a 64-d embedding input (``instruction``) | Universal Sentence Encoder, 512-d |
| tokenizer | stem + 4 MBConv (depthwise, squeeze-excite), FiLM after each | EfficientNet-B3, FiLM |
| TokenLearner | 8 tokens per frame | 8 tokens per frame |
| transformer | 2 causal layers, width 128, 4 heads | 8 layers, width 512, 8 heads |
| actions | 9 dims (7 arm, gripper, mode) x 256 bins | 11 dims x 256 bins |

Inputs: ``images`` (B, FRAMES, 96, 96, 3) in [0, 1], ``instruction`` (B, 64). Output:
``action_logits`` (B, 9, 256); the action tokens are its argmax over the last axis.

The frontend builds it with Keras, saves it as ``.keras`` in robopt's cache and converts it
through the TensorFlow path (``compile/tf_frontend.py``), so it needs the ``[tf]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FRAMES = 2
SIZE = 96
EMBED = 64
TOKENS = 8  # TokenLearner tokens per frame
WIDTH = 128
HEADS = 4
LAYERS = 2
ACTION_DIMS = 9  # 7 arm (xyz, rpy, gripper opening delta) + gripper + mode
BINS = 256
BLOCKS = ((16, 24, 2), (24, 40, 2), (40, 80, 2), (80, 112, 1))  # (in, out, stride) MBConv


def _keras() -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    return keras


def _film(keras: Any, x: Any, emb: Any, channels: int, name: str) -> Any:
    """FiLM: x * (1 + gamma(emb)) + beta(emb), per channel (RT-1 initialises it to identity)."""
    layers = keras.layers
    gamma = layers.Dense(channels, kernel_initializer="zeros", name=f"{name}_gamma")(emb)
    beta = layers.Dense(channels, kernel_initializer="zeros", name=f"{name}_beta")(emb)
    gamma = layers.Reshape((1, 1, channels))(gamma)
    beta = layers.Reshape((1, 1, channels))(beta)
    return layers.Add(name=f"{name}_out")([layers.Multiply()([x, gamma + 1.0]), beta])


def _mbconv(keras: Any, x: Any, cin: int, cout: int, stride: int, name: str) -> Any:
    """EfficientNet's inverted bottleneck: expand 1x1, depthwise 3x3, squeeze-excite, project."""
    layers = keras.layers
    h = layers.Conv2D(cin * 4, 1, use_bias=False, name=f"{name}_expand")(x)
    h = layers.Activation("swish")(layers.BatchNormalization(name=f"{name}_bn0")(h))
    h = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                               name=f"{name}_dw")(h)  # fmt: skip
    h = layers.Activation("swish")(layers.BatchNormalization(name=f"{name}_bn1")(h))
    se = layers.GlobalAveragePooling2D(keepdims=True)(h)
    se = layers.Conv2D(max(4, cin // 4), 1, activation="swish", name=f"{name}_se_r")(se)
    se = layers.Conv2D(cin * 4, 1, activation="sigmoid", name=f"{name}_se_e")(se)
    h = layers.Multiply()([h, se])
    h = layers.Conv2D(cout, 1, use_bias=False, name=f"{name}_project")(h)
    h = layers.BatchNormalization(name=f"{name}_bn2")(h)
    if stride == 1 and cin == cout:
        h = layers.Add()([h, x])
    return h


def _tokenizer(keras: Any) -> Any:
    """One frame + the instruction -> TOKENS tokens of width WIDTH (shared over frames)."""
    layers, ops = keras.layers, keras.ops
    frame = keras.Input((SIZE, SIZE, 3), name="frame")
    emb = keras.Input((EMBED,), name="emb")
    h = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(frame)
    h = layers.Activation("swish")(layers.BatchNormalization(name="stem_bn")(h))
    for i, (cin, cout, stride) in enumerate(BLOCKS):
        h = _mbconv(keras, h, cin, cout, stride, f"b{i}")
        h = _film(keras, h, emb, cout, f"film{i}")
    h = layers.Conv2D(WIDTH, 1, name="to_width")(h)  # (6, 6, WIDTH)
    # TokenLearner: TOKENS spatial attention maps, each a weighted mean of the feature map
    a = layers.LayerNormalization(name="tl_norm")(h)
    # tanh-approximated GELU: TensorFlow's exact one uses Erfc, which tf2onnx cannot convert
    a = ops.gelu(layers.Conv2D(32, 3, padding="same", name="tl_conv")(a), approximate=True)
    a = layers.Conv2D(TOKENS, 1, activation="sigmoid", name="tl_maps")(a)  # (6, 6, TOKENS)
    hw = h.shape[1] * h.shape[2]
    a = layers.Permute((2, 1))(layers.Reshape((hw, TOKENS))(a))  # (TOKENS, hw)
    v = layers.Reshape((hw, WIDTH))(h)
    tokens = layers.Dot(axes=(2, 1), name="tl_pool")([a, v])  # (TOKENS, WIDTH)
    tokens = layers.Rescaling(1.0 / hw)(tokens)
    return keras.Model([frame, emb], tokens, name="tokenizer")


def build(seed: int = 0) -> Any:
    """The Keras model (module doc), weights from ``seed``."""
    keras = _keras()
    layers, ops = keras.layers, keras.ops
    keras.utils.set_random_seed(seed)
    images = keras.Input((FRAMES, SIZE, SIZE, 3), name="images")
    instruction = keras.Input((EMBED,), name="instruction")
    # every frame through the one tokenizer at once: (B * FRAMES, ...) in frame order
    frames = ops.reshape(images, (-1, SIZE, SIZE, 3))
    emb = ops.repeat(instruction, FRAMES, axis=0)
    tokens = _tokenizer(keras)([frames, emb])  # (B * FRAMES, TOKENS, WIDTH)
    n = FRAMES * TOKENS
    x = ops.reshape(tokens, (-1, n, WIDTH))
    position = ops.cumsum(ops.ones_like(x[:, :, 0], dtype="int32"), axis=1) - 1
    x = x + layers.Embedding(n, WIDTH, name="position")(position)
    for i in range(LAYERS):
        h = layers.LayerNormalization(name=f"t{i}_ln0")(x)
        h = layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name=f"t{i}_attn")(
            h, h, use_causal_mask=True
        )
        x = x + h
        h = layers.LayerNormalization(name=f"t{i}_ln1")(x)
        h = ops.gelu(layers.Dense(WIDTH * 4, name=f"t{i}_up")(h), approximate=True)
        x = x + layers.Dense(WIDTH, name=f"t{i}_down")(h)
    x = layers.LayerNormalization(name="final_ln")(x)
    # the last frame's tokens read out the action: pooled, one 256-bin head per dimension
    last = layers.GlobalAveragePooling1D()(x[:, -TOKENS:])
    logits = layers.Dense(ACTION_DIMS * BINS, name="action_head")(last)
    logits = layers.Reshape((ACTION_DIMS, BINS), name="action_logits")(logits)
    return keras.Model([images, instruction], logits, name="rt1_tiny")


def make_keras(seed: int = 0) -> Path:
    """The model saved as ``.keras`` in robopt's cache (built once per seed and version)."""
    from robopt_compile.paths import cache_dir

    keras = _keras()
    path = cache_dir("zoo") / f"rt1-tiny-seed{seed}-keras{keras.__version__}.keras"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.keras")
        build(seed).save(tmp)
        tmp.replace(path)
    return path
