"""Weight-only INT4/INT8 compression with NNCF (``nncf.compress_weights``) for OpenVINO.

Only the weights of MatMul/Gemm nodes are compressed; activations stay float. NNCF 3.4's ONNX
backend does compress weights: at opset < 21 an INT4 weight becomes an onnxruntime
``com.microsoft::MatMulNBits`` node and an INT8 weight a per-channel ``DequantizeLinear``
feeding the MatMul. OpenVINO's ONNX frontend reads both into its compressed-weight
FullyConnected, and ONNX Runtime runs them too, so the pass returns ONNX like every other pass.

What the ONNX backend gets wrong (NNCF 3.4.0), and what this pass does about it:

- A MatMul followed by a bias Add becomes MatMulNBits *with* the bias as input 5 while the
  Add stays: the bias is added twice (ACT: cosine 0.985 instead of 0.995). The pass removes
  the duplicate bias input.
- Gemm: alpha/beta are ignored on the MatMulNBits path, and at opset 21 the blocked
  DequantizeLinear it writes for a Gemm has scales of the wrong shape (ONNX Runtime and
  OpenVINO both reject the model). The pass rewrites the Gemms it compresses as MatMul + Add.
- Conv (compressed in NNCF's INT8 backup mode): the per-channel scales come out shaped
  ``[C, 1, 1]`` instead of ``[C]``, which ONNX Runtime and OpenVINO reject, so Conv, ConvTranspose
  and Gather are kept out of compression (``nncf.compress_weights(ov.Model)`` does compress
  them to int8 per-channel; that only shrinks the file: OpenVINO decompresses them at load).
- A weight whose input dimension is not a multiple of the group size stops NNCF unless told what
  to do: the pass asks for ``group_size_fallback_mode=ADJUST`` (the largest power-of-two group
  >= 32 that divides it, else INT8 per-channel) and reports the group each node got.
"""

# Measured on the robopt dev box (Intel Xeon with AMX, 2 vCPUs, noisy), nncf 3.4.0, openvino
# 2026.4.1, onnxruntime 1.32.0. Zoo act-policy (ResNet-18 + 4+1-layer transformer, random Xavier
# weights), dynamo export (opset 20). Cosine vs torch fp32 on 8 held-out inputs; 1 thread,
# medians of interleaved runs (ms). The 6 MatMul/Gemm computed from constants (ACT's decoder
# query path and zero latent) are left alone, as ``nncf.compress_weights(ov.Model)`` does after
# OpenVINO folds them.
#
#   model                                    ONNX Runtime   OpenVINO f32   cos min
#   fp32                                          30.5           29.1      1
#   INT4_SYM g128, this pass                      30.2           28.4      0.99469
#   INT4_SYM g128, NNCF's ONNX output as is         -            26.0      0.98525 (bias twice)
#   INT8_SYM per-channel, this pass               36.0           28.0      0.99997
#   INT4_SYM g128 via ov.Model (OpenVINO only)      -            26.0      0.99480
#   INT8_ASYM via ov.Model (OpenVINO only)          -            25.9      0.99992
#   INT4 this pass, OpenVINO default hint (bf16)    -             6.8      0.99463
#
#   weight bytes (INT4 g128 / INT8):  whole model 62.3 MB -> 48.8 / 50.7 MB (0.78x / 0.81x);
#   everything but the ResNet backbone 17.6 MB -> 4.1 / 6.0 MB (0.24x / 0.34x); the compressed
#   MatMul/Gemm weights 15.5 MB -> 2.1 / 3.9 MB (0.13x / 0.25x).
#
# - The ResNet-18 backbone (44.7 of ACT's 62.3 MB) stays fp32 and dominates latency: weight-only
#   compression does not speed up this batch-1 CPU policy, it saves memory and bandwidth. On AMX
#   the bf16 hint is the speed lever (4x), int8 Q/DQ (int8-nncf) more (6.5x).
# - INT8 as DequantizeLinear -> MatMul is for OpenVINO (which folds it into a compressed
#   FullyConnected); ONNX Runtime dequantizes on every run (36 ms): use weight-only-ort there.

from __future__ import annotations

import time
from collections.abc import Sequence

import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import PassError
from robopt_compile.passes.quantize import _nncf_common as common
from robopt_compile.passes.quantize.base import QuantizePass, Sample

BITS = (4, 8)
# MatMulNBits (what an INT4 weight becomes at opset < 21) takes power-of-two blocks >= 16.
GROUP_SIZES = (16, 32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128  # NNCF's default for INT4
# Weighted ops NNCF would also compress (INT8 backup) but writes invalid ONNX for, or that
# are not matrix weights.
_NOT_COMPRESSED = ("Conv", "ConvTranspose", "Gather")


class NncfWeightOnlyPass(QuantizePass):
    """Compress MatMul/Gemm weights to INT4 (grouped) or INT8 (per-channel) with NNCF.

    Args:
        bits: 4 (grouped, ``MatMulNBits``) or 8 (per output channel, ``DequantizeLinear``).
        group_size: INT4 group along the input dimension, one of ``GROUP_SIZES``; ``None``
            means 128. NNCF's INT8 modes are per-channel only, so with ``bits=8`` it must be
            ``None``.
        ratio: INT4 only: the fraction of the MatMul weights in INT4; NNCF keeps the rest
            (those with the largest quantization error) in INT8.
        symmetric: Symmetric (``INT4_SYM``/``INT8_SYM``, no zero points) or asymmetric.
        exclude_nodes: Node names to keep in float.
        calibration: Accepted for a uniform pass interface and not used (data-free).
    """

    name = "weight-only-nncf"

    def __init__(
        self,
        bits: int = 4,
        group_size: int | None = None,
        ratio: float = 1.0,
        symmetric: bool = True,
        exclude_nodes: Sequence[str] = (),
        calibration: Sequence[Sample] | None = None,
    ) -> None:
        super().__init__(calibration, exclude_nodes)
        if bits not in BITS:
            raise PassError(
                f"{self.name}: bits must be 4 or 8, not {bits!r} (NNCF's ONNX backend has no "
                "other integer weight formats, and below 4 bits robot policies lose task success)."
            )
        if bits == 8 and (group_size not in (None, -1) or ratio != 1.0):
            raise PassError(
                f"{self.name}: NNCF compresses INT8 weights per output channel only; "
                "leave group_size and ratio at their defaults for bits=8."
            )
        if bits == 4 and group_size is not None and group_size not in GROUP_SIZES:
            raise PassError(
                f"{self.name}: group_size must be one of {GROUP_SIZES} for INT4 (the block sizes "
                f"of MatMulNBits), not {group_size!r}."
            )
        if not 0.0 < ratio <= 1.0:
            raise PassError(f"{self.name}: ratio must be in (0, 1], not {ratio!r}.")
        self.bits = bits
        self.group_size = (group_size or DEFAULT_GROUP_SIZE) if bits == 4 else -1
        self.ratio = ratio
        self.symmetric = symmetric

    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        """MatMul/Gemm nodes with a constant 2-D weight whose input depends on a model input."""
        prepared = common.prepare(model)
        live, _ = common.weight_nodes(prepared)
        nodes = {n.name: n for n in prepared.graph}
        return [n for n in live if common.matmul_weight_ok(nodes[n])]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        prepared = common.prepare(model)
        common.check_exclude(prepared, self.exclude_nodes, self.name)
        live, constant = common.weight_nodes(prepared)
        nodes = {n.name: n for n in prepared.graph}
        candidates = [n for n in live if common.matmul_weight_ok(nodes[n])]
        targets = [n for n in candidates if n not in self.exclude_nodes]
        if not targets:
            raise PassError(
                f"{self.name}: nothing to compress: the model has no MatMul/Gemm with a constant "
                "2-D weight on its data path outside exclude_nodes."
            )
        t_before = sum(common.weight_nbytes(nodes[n]) for n in targets)
        common.gemm_to_matmul(prepared, {n for n in targets if nodes[n].op_type == "Gemm"})
        matmuls = {n.name for n in prepared.graph if n.op_type == "MatMul"}
        ignored = sorted(matmuls - set(targets)) + sorted(
            n.name for n in prepared.graph if n.op_type == "Gemm"
        )
        ignored_types = sorted({n.op_type for n in prepared.graph} & set(_NOT_COMPRESSED))
        proto = common.to_proto(prepared, self.name)

        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedCompressionParameters,
            GroupSizeFallbackMode,
        )

        kind = "SYM" if self.symmetric else "ASYM"
        kwargs = {
            "mode": getattr(nncf.CompressWeightsMode, f"INT{self.bits}_{kind}"),
            "ignored_scope": nncf.IgnoredScope(names=ignored, types=ignored_types, validate=False),
        }
        if self.bits == 4:
            kwargs["group_size"] = self.group_size
            kwargs["ratio"] = self.ratio
            kwargs["advanced_parameters"] = AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
            )
        start = time.perf_counter()
        try:
            with common.quiet("nncf"):
                qproto = nncf.compress_weights(proto, **kwargs)
        except Exception as exc:  # NNCF raises any type from its graph and numpy code
            msg = " ".join(str(exc).split())[:200]
            raise PassError(
                f"NNCF {common.version('nncf')} could not compress this model's weights: "
                f"{type(exc).__name__}: {msg}. Exclude the failing node with exclude_nodes, "
                "or use weight-only-ort."
            ) from exc
        seconds = time.perf_counter() - start
        out = common.from_proto(qproto)
        # NNCF writes com.microsoft::MatMulNBits without importing its domain (ONNX Runtime
        # assumes version 1; the ONNX checker refuses the model): declare it.
        if any(n.domain == "com.microsoft" for n in out.graph):
            out.opset_imports.setdefault("com.microsoft", 1)
        fixed = _drop_duplicate_bias(out)
        common.check_io(model, out, self.name)

        compressed = _compressed(out, set(targets))
        before, after = rir.weight_bytes(model), rir.weight_bytes(out)
        t_after = after - (before - t_before)
        self.report = {
            "tool": "nncf.compress_weights (ONNX backend)",
            "tool_version": common.version("nncf"),
            "mode": kwargs["mode"].value,
            "group_size": self.group_size,
            "ratio": self.ratio,
            "seconds": round(seconds, 3),
            "compressed_nodes": compressed,
            "left_float_by_nncf": [n for n in targets if n not in compressed],
            "excluded_nodes": list(self.exclude_nodes),
            "constant_nodes": constant,
            "not_compressed_op_types": ignored_types,
            "nncf_duplicate_bias_removed": len(fixed),
            "op_delta": common.op_delta(prepared, out),
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "compressed_weight_bytes_before": t_before,
            "compressed_weight_bytes_after": t_after,
            "runtime": "OpenVINO (compressed FullyConnected) or ONNX Runtime (MatMulNBits)",
        }
        return ir.passes.PassResult(out, modified=True)


def _drop_duplicate_bias(model: ir.Model) -> list[str]:
    """Remove the bias input NNCF 3.4 gives a MatMulNBits when a bias Add already follows it."""
    fixed = []
    for node in model.graph:
        if node.op_type != "MatMulNBits" or len(node.inputs) < 6 or node.inputs[5] is None:
            continue
        bias = node.inputs[5]
        users = node.outputs[0].consumers()
        if any(u.op_type == "Add" and bias in u.inputs for u in users):
            node.resize_inputs(4 if node.inputs[3] is not None else 3)
            fixed.append(node.name)
    return fixed


def _compressed(model: ir.Model, targets: set[str]) -> dict[str, str]:
    """Which target nodes came out compressed, and to what."""
    found: dict[str, str] = {}
    for node in model.graph:
        base = node.name.removesuffix("_compressed_matmul")
        if base not in targets:
            continue
        if node.op_type == "MatMulNBits":
            bits = node.attributes.get_int("bits", 4)
            found[base] = f"int{bits} group {node.attributes.get_int('block_size', 0)}"
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        producer = weight.producer() if weight is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear":
            dtype = producer.inputs[0].dtype if producer.inputs[0] is not None else None
            found[base] = f"{dtype.name.lower() if dtype else 'int8'} per-channel"
    return found
