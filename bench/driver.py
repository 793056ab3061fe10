"""Driver loops of multi-graph bundles: what one control step runs, with numpy and a runtime.

A multi-graph bundle (docs/BUNDLE.md, "Multi-graph bundles") holds several engines and names
the loop that turns an observation into an action. The loops live here, on the robot side, so
``robopt-bench`` times exactly what a robot runs: no torch, no transformers.

``vla-greedy`` (an OpenVLA-style model):

1. ``vision``: ``pixel_values (1,3,H,W)`` -> ``image_embeds (1,P,D)``;
2. ``embed``: ``input_ids (1,T)`` -> ``token_embeds (1,T,D)`` (the embedding table, alone in
   its graph so that it is stored once);
3. ``llm``, the prefill: BOS, the image embeddings and the prompt's embeddings, with an empty
   key/value cache ``past.{i}.k|v (1,KV,0,hd)`` -> ``logits (1,256)`` for the next token and
   the cache ``present.{i}.k|v``;
4. ``llm`` again for each remaining action dimension: the last token's embedding and the cache
   -> the next token's logits and the grown cache. A bundle may carry ``llm-decode``, the same
   graph built by another runtime (``--decode-backend``: a kernel that is fast at one token is
   not always the one that is fast at hundreds); the decode steps then run it instead.

Decoding is greedy and constrained to the 256 action tokens (the last 256 ids of the
vocabulary, as in OpenVLA): the language model's head is cut to those rows, so ``logits``
index bins, not the vocabulary. Tokens are de-tokenized to continuous actions as OpenVLA does
(bin centres of 256 uniform bins on [-1, 1], then the dataset's 1st/99th percentile range).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopt_compile.errors import InputError

Runner = Any  # targets.base.Runner: .infer(feeds) -> {name: array}
DRIVERS = ("vla-greedy", "ddim")
VLA_GRAPHS = ("vision", "embed", "llm")
DECODE_GRAPH = "llm-decode"  # optional: the llm's decode steps on another runtime


def bin_centers(n_bins: int) -> np.ndarray:
    """OpenVLA's bin centres: ``n_bins`` uniform edges on [-1, 1], midpoints between them."""
    edges = np.linspace(-1.0, 1.0, n_bins)
    return ((edges[:-1] + edges[1:]) / 2.0).astype(np.float64)


def tokens_to_actions(tokens: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Action token ids -> continuous actions (OpenVLA's de-tokenization).

    ``bin = clip(vocab_size - token - 1, 0, n_bins - 2)``, its centre in [-1, 1], then for the
    dimensions marked in ``normalized`` the affine map of [-1, 1] onto [q01, q99].
    """
    vocab = int(config["vocab_size"])
    centers = bin_centers(int(config["n_bins"]))
    idx = np.clip(vocab - np.asarray(tokens, np.int64) - 1, 0, centers.shape[0] - 1)
    norm = centers[idx]
    q01 = np.asarray(config["q01"], np.float64)
    q99 = np.asarray(config["q99"], np.float64)
    mask = np.asarray(config["normalized"], bool)
    return np.where(mask, 0.5 * (norm + 1.0) * (q99 - q01) + q01, norm)


def bins_to_tokens(bins: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Argmax positions over the action-token logits -> vocabulary ids."""
    return int(config["vocab_size"]) - int(config["n_bins"]) + np.asarray(bins, np.int64)


@dataclass
class StepResult:
    """One control step: the action (a chunk for a diffusion policy), its tokens (none for a
    diffusion policy), and the time each graph took (ms)."""

    actions: np.ndarray
    tokens: np.ndarray
    graph_ms: dict[str, float]


class VlaGreedyDriver:
    """The ``vla-greedy`` loop over three runners (``vision``, ``embed``, ``llm``)."""

    def __init__(self, runners: Mapping[str, Runner], config: Mapping[str, Any]) -> None:
        missing = set(VLA_GRAPHS) - set(runners)
        if missing:
            raise InputError(f"the vla-greedy driver needs graphs {sorted(missing)} too.")
        self.runners = runners
        self.decode = DECODE_GRAPH if DECODE_GRAPH in runners else "llm"
        self.config = dict(config)
        self.layers = int(config["layers"])
        self.dims = int(config["action_dims"])
        kv, hd = int(config["kv_heads"]), int(config["head_dim"])
        self.empty = {f"past.{i}.{k}": np.zeros((1, kv, 0, hd), np.float32)
                      for i in range(self.layers) for k in "kv"}  # fmt: skip

    def step(self, obs: Mapping[str, np.ndarray]) -> StepResult:
        """Observation (``pixel_values``, ``input_ids``) -> actions, batch 1."""
        ms: dict[str, float] = dict.fromkeys((*VLA_GRAPHS, self.decode), 0.0)

        def run(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            t = time.perf_counter()
            out = self.runners[name].infer(feeds)
            ms[name] += (time.perf_counter() - t) * 1e3
            return out

        image = run("vision", {"pixel_values": obs["pixel_values"]})["image_embeds"]
        text = run("embed", {"input_ids": obs["input_ids"]})["token_embeds"]
        x = np.concatenate([text[:, :1], image, text[:, 1:]], axis=1)
        out = run("llm", {"inputs_embeds": x, **self.empty})
        bins = [int(np.argmax(out["logits"][0]))]
        while len(bins) < self.dims:
            token = bins_to_tokens(np.array([[bins[-1]]]), self.config)
            e = run("embed", {"input_ids": token})["token_embeds"]
            cache = {f"past.{i}.{k}": out[f"present.{i}.{k}"] for i in range(self.layers)
                     for k in "kv"}  # fmt: skip
            out = run(self.decode, {"inputs_embeds": e, **cache})
            bins.append(int(np.argmax(out["logits"][0])))
        tokens = bins_to_tokens(np.asarray(bins), self.config)
        return StepResult(tokens_to_actions(tokens, self.config), tokens, ms)


def _alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def ddim_config(train_steps: int, steps: int, horizon: int, action_dim: int) -> dict[str, Any]:
    """The ``ddim`` driver's schedule (squared-cosine betas as in Diffusion Policy, DDIM
    "leading" timesteps, final alpha 1) and shapes, as JSON for the manifest."""
    if not 1 <= steps <= train_steps:
        raise InputError(f"DDIM steps must be 1..{train_steps}, not {steps}.")
    betas = [min(1 - _alpha_bar((i + 1) / train_steps) / _alpha_bar(i / train_steps), 0.999)
             for i in range(train_steps)]  # fmt: skip
    acp = np.cumprod(1.0 - np.asarray(betas))
    ratio = train_steps // steps
    ts = (np.arange(steps) * ratio)[::-1]
    prev = [float(acp[t - ratio]) if t - ratio >= 0 else 1.0 for t in ts]
    return {
        "timesteps": [int(t) for t in ts],
        "alpha_cumprod": [float(acp[t]) for t in ts],
        "alpha_cumprod_prev": prev,
        "horizon": horizon,
        "action_dim": action_dim,
        "clip_sample": 1.0,
        "noise_seed": 0,
    }


class DdimDriver:
    """The ``ddim`` loop: ``encoder`` once, then ``denoiser`` once per DDIM step (eta 0).

    The observation is ``obs (1, n_obs_steps, obs_dim)``; its initial noise ``noise (1,
    horizon, action_dim)`` when given (fidelity at fixed noise), else drawn from the driver's
    own generator (seeded by ``noise_seed``, advancing every step, as on a robot).
    """

    def __init__(self, runners: Mapping[str, Runner], config: Mapping[str, Any]) -> None:
        missing = {"encoder", "denoiser"} - set(runners)
        if missing:
            raise InputError(f"the ddim driver needs graphs {sorted(missing)} too.")
        self.runners, self.config = runners, dict(config)
        self.rng = np.random.default_rng(int(config.get("noise_seed", 0)))

    def step(self, obs: Mapping[str, np.ndarray]) -> StepResult:
        c = self.config
        ms = {"encoder": 0.0, "denoiser": 0.0}
        t0 = time.perf_counter()
        cond = self.runners["encoder"].infer({"obs": obs["obs"]})["global_cond"]
        ms["encoder"] += (time.perf_counter() - t0) * 1e3
        x = obs.get("noise")
        if x is None:
            x = self.rng.standard_normal((1, c["horizon"], c["action_dim"])).astype(np.float32)
        x = np.asarray(x, np.float32)
        clip = float(c["clip_sample"])
        for t, a, a_prev in zip(c["timesteps"], c["alpha_cumprod"], c["alpha_cumprod_prev"],
                                strict=True):  # fmt: skip
            t0 = time.perf_counter()
            eps = self.runners["denoiser"].infer(
                {"sample": x, "timestep": np.array([t], np.int64), "global_cond": cond}
            )["noise"]
            ms["denoiser"] += (time.perf_counter() - t0) * 1e3
            x0 = np.clip((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -clip, clip)
            x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).astype(np.float32)
        return StepResult(x[0], np.zeros(0, np.int64), ms)


def make_driver(kind: str, runners: Mapping[str, Runner], config: Mapping[str, Any]) -> Any:
    """The driver a manifest names; an unknown one is an InputError naming the known ones."""
    if kind == "vla-greedy":
        return VlaGreedyDriver(runners, config)
    if kind == "ddim":
        return DdimDriver(runners, config)
    raise InputError(
        f"driver {kind!r} is not known to this robopt-bench (known: {', '.join(DRIVERS)}); "
        "update robopt on the robot."
    )
