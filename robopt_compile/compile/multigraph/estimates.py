"""ESTIMATES for a VLA on the real boards: weight memory per precision, and the roofline bound
on time per action (never measured here: no Jetson, and the 7B model is never built).

For a configuration (``zoo/vla.py``: ``OPENVLA_7B`` is the real OpenVLA-7B) and a board
profile (``hwprofiles/``):

- **weights** per precision: parameters x bytes per weight, plus one fp16 scale per 32
  weights (int4) or per 128 (int8) for the language model's layers; the vision encoder stays
  in 16-bit floats for the 4-bit and 8-bit rows (as OpenVLA's own 4-bit setting does);
- **decode**: one token reads every language-model weight once, so its time is at least the
  layer bytes over the board's peak memory bandwidth (batch 1 is bandwidth bound);
- **prefill** and **vision**: their arithmetic (2 x parameters x tokens) over the board's
  dense peak for the precision, or their weight bytes over the bandwidth, whichever is larger;
- **one action** = vision + prefill + 6 decode steps (7 action tokens; the first comes from
  the prefill).

Every figure is a lower bound on time and is labelled an estimate: real kernels reach a
fraction of the peaks (typically 50-80% of bandwidth in decode).
"""

from __future__ import annotations

from typing import Any

# Bytes per weight of the language model's layers, with the scales of grouped quantization.
LLM_BYTES = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8-weight": 1.0 + 2.0 / 128,
    "int4-weight": 0.5 + 2.0 / 32,
}
# Compute precision used for the arithmetic bound (weight-only formats compute in 16 bits).
COMPUTE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "int8-weight": "fp16",
           "int4-weight": "fp16"}  # fmt: skip
PUBLISHED = {  # OpenVLA's own figures (Kim et al. 2024, github.com/openvla/openvla README)
    "bf16": "about 16.8 GB of GPU memory (bf16 inference)",
    "int4-weight": "about 7.0 GB (4-bit, bitsandbytes)",
}


def weight_bytes(config: Any, precision: str) -> dict[str, float]:
    """Weight bytes per part for ``precision`` (the vision tower in 16 bits unless fp32)."""
    n = config.parameter_counts()
    llm = LLM_BYTES[precision]
    vision_b = 4.0 if precision == "fp32" else 2.0
    embed_b = 4.0 if precision == "fp32" else 2.0 if precision in ("bf16", "fp16") else 1.0
    parts = {
        "vision": (n["vision"] + n["projector"]) * vision_b,
        "llm_layers": n["llm_layers"] * llm,
        "embedding": n["embedding"] * embed_b,
        "lm_head": n["lm_head"] * llm,
    }
    parts["total"] = sum(parts.values())
    return parts


def _fig(profile: Any, precision: str) -> float | None:
    comp = profile.compute_gops.get(COMPUTE[precision]) or profile.compute_gops.get("fp32")
    return None if comp is None else float(comp.value)


def estimate(config: Any, profile: Any, precision: str) -> dict[str, Any]:
    """Memory and the time-per-action bound of ``config`` on ``profile`` (all estimates)."""
    n = config.parameter_counts()
    w = weight_bytes(config, precision)
    bw = float(profile.memory_bandwidth_gbs.value) * 1e9
    gops = _fig(profile, precision)
    tokens = config.patches + config.prompt_tokens
    # Decode reads the layers and the 256 action rows of the head (robopt cuts the head).
    head_rows = w["lm_head"] * 256 / config.vocab_size
    decode_s = (w["llm_layers"] + head_rows) / bw
    prefill_flops = 2.0 * n["llm_layers"] * tokens
    vision_flops = 2.0 * (n["vision"] / 2) * (config.patches + 1) * 2 + 2 * n["projector"] * (
        config.patches)  # fmt: skip
    prefill_s = max(prefill_flops / (gops * 1e9), (w["llm_layers"] + head_rows) / bw)
    vision_s = max(vision_flops / (gops * 1e9), w["vision"] / bw)
    action_s = vision_s + prefill_s + 6 * decode_s
    mem_gb = float(profile.memory_gb.value)
    return {
        "estimate": True,
        "profile": profile.name,
        "precision": precision,
        "weights_gb": w["total"] / 1e9,
        "weights_by_part_gb": {k: v / 1e9 for k, v in w.items() if k != "total"},
        "fits_in_memory": w["total"] / 1e9 < 0.8 * mem_gb,  # leave room for the OS, activations
        "board_memory_gb": mem_gb,
        "bandwidth_gbs": bw / 1e9,
        "compute_gops": gops,
        "decode_ms_min": decode_s * 1e3,
        "decode_tokens_per_s_max": 1.0 / decode_s,
        "prefill_ms_min": prefill_s * 1e3,
        "vision_ms_min": vision_s * 1e3,
        "action_ms_min": action_s * 1e3,
        "actions_per_s_max": 1.0 / action_s,
        "published": PUBLISHED.get(precision),
    }


TABLE_PRECISIONS = ("bf16", "int8-weight", "int4-weight")


def jetson_table(config: Any, precisions: tuple[str, ...] = TABLE_PRECISIONS) -> list[dict]:
    """:func:`estimate` for every Jetson profile and precision."""
    from robopt_compile.hwprofiles import load_profile, profile_names

    rows = []
    for name in profile_names():
        if not name.startswith("jetson"):
            continue
        p = load_profile(name)
        rows += [estimate(config, p, prec) for prec in precisions]
    return rows
