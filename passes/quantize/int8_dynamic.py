"""Dynamic INT8 quantization of MatMul/Gemm weights with ONNX Runtime's ``quantize_dynamic``.

Weights become int8 at compile time; activations are quantized to uint8 at run time from
their actual range (``DynamicQuantizeLinear``), so no calibration data is needed and there is
no calibration error. It pays where MatMul/Gemm carry the work (transformer layers).

Weights are **int8** (``QuantType.QInt8``). Measured with ORT 1.32, 1 thread, on the dev box's
Xeon (Sapphire Rapids, AVX-512 VNNI + AMX, 2 cores), per-tensor weights, p50 = median of 15
interleaved block medians, cosine over 16 held-out random inputs:

    model, MatMul/Gemm only   fp32      int8 weights   uint8 weights   cosine int8 / uint8
    act-policy                27.7 ms   25.3 ms        27.1 ms         0.999918 / 0.999884
    state-mlp                 14.8 us   17.5 us        15.5 us         0.999972 / 0.999975

int8 weights are faster and more accurate where there is work to speed up; a 15 us MLP is
overhead-bound and gets slower either way. Per-channel weights: ACT cosine 0.999947, same speed.

Conv nets are refused. ``quantize_dynamic`` turns a Conv into ConvInteger, which ORT runs far
slower than its fp32 Conv: zoo ``visuomotor-cnn`` (ResNet-18, 224x224) takes 138 ms with int8
weights and 31.6 ms with uint8 ones against 22.3 ms in fp32 (6.2x and 1.4x slower).
Quantizing only the MatMul/Gemm of a conv net leaves the convolutions, i.e. most of the time,
in fp32. A model is a conv net when Conv/ConvTranspose hold more than ``max_conv_mac_share``
(half) of its MACs at batch 1: ``visuomotor-cnn`` 99.99%, ``act-policy`` 89% (ResNet-18
backbone; dynamic INT8 gains it 9%, ``int8-static-ort`` 2.7x), ``state-mlp`` 0%.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from robopt_compile.errors import InputError, PassError
from robopt_compile.passes.quantize import _ort_common as common
from robopt_compile.passes.quantize.base import QuantizePass

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
# Measured on visuomotor-cnn (module docstring): ConvInteger time / fp32 Conv time.
CONV_INTEGER_SLOWDOWN = 6.2
HINT = "exclude the node it names, or use static int8 (--precision int8 --calibration ...)"


def conv_mac_share(model: ir.Model) -> float | None:
    """Share of the model's MACs (batch 1) in Conv/ConvTranspose; ``None`` if unknown."""
    from robopt_compile.passes.analysis.flops import node_costs

    costs, _ = node_costs(model, batch=1)
    if any(c.op_type in CONV_OPS and c.macs is None for c in costs):
        return None
    total = sum(c.macs or 0 for c in costs)
    conv = sum(c.macs or 0 for c in costs if c.op_type in CONV_OPS)
    return conv / total if total else 0.0


def _dynamic_ok(node: ir.Node) -> bool:
    """Whether ORT's dynamic quantizer takes ``node``: MatMul/Gemm need a constant B
    (``MatMulConstBOnly``), and Gemm is first rewritten to MatMul + Add, which it does only
    for ``alpha = beta = 1, transA = 0``."""
    if node.op_type not in ("MatMul", "Gemm"):
        return True
    if not common.is_weight(node.inputs[1]):
        return False
    attrs = node.attributes
    return node.op_type == "MatMul" or (
        attrs.get_float("alpha", 1.0) == 1.0
        and attrs.get_float("beta", 1.0) == 1.0
        and attrs.get_int("transA", 0) == 0
    )


class DynamicInt8Pass(QuantizePass):
    """Dynamic INT8 (int8 weights, run-time uint8 activations) for MatMul/Gemm-heavy models.

    Args:
        exclude_nodes: Node names to keep in float.
        per_channel: One weight scale per output channel (more accurate, same speed on ACT).
        op_types: Op types to quantize; Conv and ConvTranspose are refused (ConvInteger).
        max_conv_mac_share: Refuse models whose Conv MACs exceed this share (1.0 never
            refuses).
    """

    name = "int8-dynamic"
    needs_calibration = False

    def __init__(
        self,
        exclude_nodes: Sequence[str] = (),
        per_channel: bool = False,
        op_types: Sequence[str] = ("MatMul", "Gemm"),
        max_conv_mac_share: float = 0.5,
    ) -> None:
        super().__init__(None, exclude_nodes)
        if conv := sorted(CONV_OPS & set(op_types)):
            raise PassError(
                f"{self.name} does not quantize {', '.join(conv)}: ONNX Runtime runs the "
                f"resulting ConvInteger {CONV_INTEGER_SLOWDOWN}x slower than fp32 Conv on x86; "
                "use static int8 (--precision int8 with --calibration) for convolutions."
            )
        if not 0.0 <= max_conv_mac_share <= 1.0:
            raise InputError(f"max_conv_mac_share must be in [0, 1], got {max_conv_mac_share}.")
        self.per_channel = per_channel
        self.op_types = tuple(op_types)
        self.max_conv_mac_share = max_conv_mac_share

    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        return self._targets(common.prepare(model))

    def _targets(self, model: ir.Model) -> list[str]:
        return [
            n.name
            for n in model.graph
            if n.op_type in self.op_types
            and n.domain in ("", "ai.onnx")
            and common.is_float(n.inputs[0])
            and _dynamic_ok(n)
        ]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        work = common.prepare(model)
        common.check_exclude(work, self.exclude_nodes, self.name)
        share = conv_mac_share(work)
        if share is None or share > self.max_conv_mac_share:
            held = "an unknown share" if share is None else f"{share:.0%}"
            raise PassError(
                f"{self.name} refused: this is a conv net (Conv holds {held} of its MACs, limit "
                f"{self.max_conv_mac_share:.0%}), and dynamic INT8 leaves Conv in fp32 "
                f"(ConvInteger runs {CONV_INTEGER_SLOWDOWN}x slower than fp32 Conv here); "
                "use static int8 (--precision int8 with --calibration)."
            )
        wanted = [n for n in self._targets(work) if n not in self.exclude_nodes]
        if not wanted:
            raise PassError(
                f"{self.name}: nothing to quantize: no {'/'.join(self.op_types)} with constant "
                f"weights is left ({len(self.exclude_nodes)} excluded); drop the step."
            )
        # ORT rewrites Gemm ``g`` to MatMul ``g_MatMul`` + Add before it quantizes, and matches
        # names after that: name both, and let MatMul through, or exclusions miss the Gemm.
        gemm = {n for n in wanted if work.graph.node(n).op_type == "Gemm"}
        out = common.run_quantizer(
            work,
            quantize_dynamic,
            self.name,
            HINT,
            op_types_to_quantize=sorted({*self.op_types, *(["MatMul"] if gemm else [])}),
            nodes_to_quantize=[*wanted, *(f"{n}_MatMul" for n in gemm)],
            per_channel=self.per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        float_left = {
            n.name for n in out.graph if n.op_type in self.op_types or n.op_type == "MatMul"
        }
        self.report = {
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "tool_version": common.ort_version(),
            "method": "dynamic (activation range measured at run time)",
            "per_channel": self.per_channel,
            "activations": "uint8 asymmetric, quantized at run time",
            "weights": "int8 symmetric",
            "conv_mac_share": round(share, 4),
            "op_types": list(self.op_types),
            # ORT replaces a quantized node by MatMulInteger & co. under new names.
            "quantized_nodes": [
                n for n in wanted if n not in float_left and f"{n}_MatMul" not in float_left
            ],
            "excluded_nodes": [
                {"name": n, "reason": "excluded by the caller"} for n in self.exclude_nodes
            ],
            "weight_bytes_before": common.weight_bytes(model),
            "weight_bytes_after": common.weight_bytes(out),
        }
        return ir.passes.PassResult(out, modified=True)
