"""INT8 static quantization placed the way TensorRT's explicit quantization wants it.

TensorRT 10+ builds INT8 only from explicit Q/DQ (implicit INT8 calibration is gone in 11), and
where the Q/DQ sit decides which kernels it can fuse. This pass writes the placement of
NVIDIA's own ONNX quantizer, TensorRT Model Optimizer (``modelopt.onnx.quantization``, read
in version 0.47.0), through ONNX Runtime's ``quantize_static``:

- Q/DQ on the inputs of Conv, ConvTranspose, Gemm and MatMul, including the two attention
  MatMuls (TensorRT's INT8 MHA kernels want them), never on outputs: TensorRT fuses
  DQ -> Conv -> (Add) -> (ReLU) -> Q of the next layer itself. Pooling ops next to a quantized
  node get Q/DQ on their input too, so int8 flows through them.
- Activations int8 symmetric (zero point 0, ``ActivationSymmetric``), weights int8 symmetric
  per output channel (Conv axis 0, ConvTranspose axis 1, MatMul axis 1, Gemm by ``transB``),
  weights kept fp32 behind a Q/DQ pair (``AddQDQPairToWeight``), biases not quantized.
- Residual Adds: Q/DQ on the skip input only, so TensorRT fuses the Add into the Conv of the
  other branch (NVIDIA's guidance; Model Optimizer's ``build_non_residual_input_map``). The
  Conv branch is the input that comes straight from a quantized Conv; with two, the deeper.
- Left float, as Model Optimizer does: GEMV MatMul/Gemm (an output dim of 1, e.g. every Linear
  at batch 1) and GEMMs with K or N < 16, which Tensor Cores cannot use; Convs with fewer than
  16 channels unless Model Optimizer's multiple-of-8 exceptions apply.

Model Optimizer itself is not used. ``pip download --no-deps nvidia-modelopt`` (0.47.0, py3
wheel) needs ``torch>=2.8`` (2.13.0 is fine), but its ``[onnx]`` extra, which
``modelopt.onnx.quantization`` imports, pins ``onnx~=1.21.0`` and, on Linux x86-64,
``onnxruntime-gpu~=1.24.2`` and ``cupy-cuda12x``: beside robopt's onnx 1.23 and onnxruntime
1.32 it would downgrade onnx and put a second ORT build over the ``onnxruntime`` package. In a
throwaway venv (torch 2.13.0+cpu first) it installed and quantized the zoo CNN on CPU
(``calibration_eps=["cpu"]``, after an NVML error it ignores); its output is the reference
this placement was checked against: on the zoo CNN and ACT the set of nodes with a DQ-fed
input, and which of their inputs, is the same (CNN: 20 Conv, 8 residual Add skip inputs,
MaxPool; Gemms left as GEMV; ACT: the same plus 45 MatMuls, Softmax and LayerNorm inputs
float). TensorRT is not installable here, so the tests check structure and ORT numerics.
Run by ONNX Runtime (16 calibration / 16 held-out random inputs, MinMax): CNN cosine
0.999983 (0.9967 centred, see ``int8_static_ort``), ACT 0.999897 (0.9423). ORT runs this
int8-symmetric, output-unquantized form slowly (CNN 34 ms vs 22 fp32): it is for TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import InputError, PassError, UnknownNameError
from robopt_compile.passes.quantize import _ort_common as common
from robopt_compile.passes.quantize.base import QuantizePass, Sample

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Quantized when a neighbour is, so int8 flows through them (Model Optimizer's second pass).
POOLING_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
# Tensor Core INT8 GEMMs need K and N >= 16 (Model Optimizer's _MIN_MATMUL_DIM).
MIN_GEMM_DIM = 16
MIN_CONV_CHANNELS = 16
# Per-channel axis of the weight, i.e. its output-channel axis. Gemm: ORT uses transB.
PER_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}
MODELOPT_FINDING = (
    "nvidia-modelopt 0.47.0 [onnx] pins onnx~=1.21.0 and onnxruntime-gpu~=1.24.2 + cupy-cuda12x "
    "(conflicts with onnx 1.23 / onnxruntime 1.32); its placement is reimplemented here"
)
HINT = "exclude the node it names with exclude_nodes, or try another method"


def _attr(node: ir.Node, name: str, default: Any) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _gemm_reason(node: ir.Node, shapes: Any) -> str | None:
    """Why TensorRT would run this MatMul/Gemm faster without Q/DQ; ``None`` if it would not."""
    out = shapes.of(node.outputs[0]).shape
    b = shapes.of(node.inputs[1]).shape
    if out is None or len(out) < 2 or b is None:
        return None  # unknown shapes: quantize, as Model Optimizer would on a dynamic dim
    if node.op_type == "Gemm":
        k = b[-1] if _attr(node, "transB", 0) else b[0]
    else:
        k = b[-2] if len(b) >= 2 else b[0]
    activations = not common.is_weight(node.inputs[0]) and not common.is_weight(node.inputs[1])
    if (activations and 1 in out[-2:]) or (not activations and len(out) < 3 and 1 in out):
        return f"GEMV (output {list(out)}): no Tensor Core use, faster without Q/DQ"
    if out[-1] < MIN_GEMM_DIM or 0 < k < MIN_GEMM_DIM:
        return f"small GEMM (N={out[-1]}, K={k} < {MIN_GEMM_DIM}): no INT8 Tensor Core kernel"
    return None


def _conv_reason(node: ir.Node, shapes: Any, graph_inputs: set[ir.Value]) -> str | None:
    """Model Optimizer's INT8 Conv rule: >= 16 channels, or its multiple-of-8 exceptions."""
    if not common.is_weight(node.inputs[1]):
        return "weight is not a constant"
    w = shapes.of(node.inputs[1]).shape
    if node.op_type != "Conv" or w is None or len(w) < 3:
        return None
    oc, ic = w[0], w[1]
    if oc >= MIN_CONV_CHANNELS and ic >= MIN_CONV_CHANNELS:
        return None
    group = _attr(node, "group", 1)
    kernel = list(_attr(node, "kernel_shape", w[2:]))
    first = any(v in graph_inputs for v in node.inputs)
    dense_ok = (
        group == 1
        and (oc % 8 == 0 or ic % 8 == 0)
        and (first or oc >= MIN_CONV_CHANNELS or ic >= MIN_CONV_CHANNELS)
        and len(set(kernel)) == 1
    )
    grouped_ok = group > 1 and oc % 8 == 0 and all(k >= 3 for k in kernel)
    if dense_ok or grouped_ok:
        return None
    return f"Conv with {ic} input / {oc} output channels: no efficient INT8 kernel"


def _conv_producer(value: ir.Value | None) -> ir.Node | None:
    """The Conv that produces ``value``, directly or through a BatchNormalization."""
    p = value.producer() if value is not None else None
    if p is not None and p.op_type == "BatchNormalization":
        p = p.inputs[0].producer() if p.inputs[0] is not None else None
    return p if p is not None and p.op_type in ("Conv", "ConvTranspose") else None


def _is_ancestor(node: ir.Node, value: ir.Value) -> bool:
    stack, seen = [value], set()
    while stack:
        p = stack.pop().producer()
        if p is None or id(p) in seen:
            continue
        if p is node:
            return True
        seen.add(id(p))
        stack.extend(v for v in p.inputs if v is not None)
    return False


def residual_adds(model: ir.Model, quantized: set[str]) -> dict[str, int]:
    """Residual Adds after a quantized Conv: Add name -> index of its Conv-branch input.

    The other (skip) input is the one that gets Q/DQ. An Add whose skip input derives from the
    Conv itself (ConvNeXt's Conv -> ... -> Add(Conv, .)) is no residual add.
    """
    dep = common.input_dependent(model)
    depth: dict[ir.Value, int] = {}
    for node in model.graph:
        d = 1 + max((depth.get(v, 0) for v in node.inputs if v is not None), default=0)
        depth.update(dict.fromkeys(node.outputs, d))
    out: dict[str, int] = {}
    for node in model.graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or not all(v in dep for v in node.inputs):
            continue
        convs = [
            i for i, v in enumerate(node.inputs) if (c := _conv_producer(v)) and c.name in quantized
        ]
        if len(convs) == 2:
            out[node.name] = max(convs, key=lambda i: depth.get(node.inputs[i], 0))
        elif len(convs) == 1:
            i = convs[0]
            conv = _conv_producer(node.inputs[i])
            if conv is not None and not _is_ancestor(conv, node.inputs[1 - i]):
                out[node.name] = i
    return out


def pooling_nodes(model: ir.Model, quantized: set[str]) -> list[str]:
    """Pooling nodes with a quantized producer or consumer (through ``FORWARDING_OPS``)."""
    out = []
    for node in model.graph:
        if node.op_type not in POOLING_OPS or not common.is_float(node.inputs[0]):
            continue
        users, stack = [], list(node.outputs)
        while stack:
            for user in stack.pop().consumers():
                users.append(user)
                if user.op_type in common.FORWARDING_OPS:
                    stack.extend(user.outputs)
        producer = common.fed_by(node.inputs[0], frozenset(WEIGHTED_OPS | {"Add"}))
        if any(u.name in quantized for u in users) or (producer and producer.name in quantized):
            out.append(node.name)
    return out


class TensorRTInt8Pass(QuantizePass):
    """INT8 static QDQ for TensorRT explicit quantization (Model Optimizer's placement).

    Args:
        calibration: Feed dicts from the calibration split (at least one).
        exclude_nodes: Node names to keep in float.
        method: Activation range calibration: ``minmax``, ``entropy`` or ``percentile``.
        percentile: The percentile kept by ``method="percentile"``.
    """

    name = "int8-static-trt"
    needs_calibration = True

    def __init__(
        self,
        calibration: Sequence[Sample] | None = None,
        exclude_nodes: Sequence[str] = (),
        method: str = "minmax",
        percentile: float = 99.999,
    ) -> None:
        super().__init__(calibration, exclude_nodes)
        if method not in common.CALIBRATION_METHODS:
            raise UnknownNameError("calibration method", method, list(common.CALIBRATION_METHODS))
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile must be in (0, 100], got {percentile}.")
        self.method = method
        self.percentile = percentile

    def _plan(
        self, model: ir.Model, exclude: Sequence[str]
    ) -> tuple[list[str], dict[str, str], dict[str, int]]:
        """(Conv/Gemm/MatMul and pooling nodes to quantize, nodes left float with reasons,
        residual Adds)."""
        from robopt_compile.passes.analysis.shapes import infer_static_shapes

        shapes = infer_static_shapes(model, batch=1)
        graph_inputs = set(model.graph.inputs)
        targets: list[str] = []
        skipped: dict[str, str] = {}
        for node in model.graph:
            if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
                continue
            if not all(common.is_float(v) for v in node.inputs[:2]):
                continue
            if node.op_type in ("Gemm", "MatMul"):
                reason = _gemm_reason(node, shapes)
            else:
                reason = _conv_reason(node, shapes, graph_inputs)
            if reason is None:
                targets.append(node.name)
            else:
                skipped[node.name] = reason
        kept = set(targets) - set(exclude)
        residual = residual_adds(model, kept)
        pools = pooling_nodes(model, kept | set(residual))
        return [*targets, *pools], skipped, residual

    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        targets, _, residual = self._plan(common.prepare(model), ())
        return [*targets, *residual]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        work = common.prepare(model)
        reader = common.calibration_reader(self.calibration, work, self.name)
        common.check_exclude(work, self.exclude_nodes, self.name)
        targets, skipped, residual = self._plan(work, self.exclude_nodes)
        by_name = common.nodes_by_name(work)
        wanted = [n for n in [*targets, *residual] if n not in self.exclude_nodes]
        if not any(by_name[n].op_type in WEIGHTED_OPS for n in wanted):
            raise PassError(
                f"{self.name}: nothing to quantize: no Conv/Gemm/MatMul is left after "
                f"{len(skipped)} TensorRT rule(s) and {len(self.exclude_nodes)} exclusion(s) "
                "(at batch 1 every Linear is a GEMV); build this model in FP16 instead."
            )
        extra: dict[str, Any] = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "AddQDQPairToWeight": True,
            "ForceQuantizeNoInputCheck": True,  # MaxPool's input even when not yet quantized
            "OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in work.graph}),
            "QDQOpTypePerChannelSupportToAxis": PER_CHANNEL_AXIS,
            "QDQDisableWeightAdjustForInt32Bias": True,
        }
        if self.method == "percentile":
            extra["CalibPercentile"] = self.percentile
        out = common.run_quantizer(
            work,
            quantize_static,
            self.name,
            HINT,
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=sorted({by_name[n].op_type for n in wanted}),
            nodes_to_quantize=wanted,
            nodes_to_exclude=list(self.exclude_nodes),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, common.CALIBRATION_METHODS[self.method]),
            extra_options=extra,
        )
        out_nodes = common.nodes_by_name(out)
        skip_inputs: dict[str, str] = {}
        for add, conv_index in residual.items():
            if add in out_nodes and add in wanted:
                common.drop_input_qdq(out, out_nodes[add], [conv_index])
                skip_inputs[add] = by_name[add].inputs[1 - conv_index].name or ""
        fed = common.dq_fed_nodes(out)
        self.report = {
            "tool": "onnxruntime.quantization.quantize_static",
            "tool_version": common.ort_version(),
            "placement": "TensorRT explicit quantization (NVIDIA Model Optimizer's rules)",
            "modelopt": MODELOPT_FINDING,
            "format": "QDQ",
            "method": self.method,
            **({"percentile": self.percentile} if self.method == "percentile" else {}),
            "per_channel": True,
            "activations": "int8 symmetric (zero point 0)",
            "weights": "int8 symmetric per output channel, fp32 weight behind Q/DQ",
            "calibration_samples": len(self.calibration),
            "quantized_nodes": [n for n in wanted if n in fed],
            "residual_adds": skip_inputs,
            "excluded_nodes": [
                *({"name": n, "reason": "excluded by the caller"} for n in self.exclude_nodes),
                *({"name": n, "reason": r} for n, r in skipped.items()),
            ],
            "qdq_nodes": common.op_counts(out, ("QuantizeLinear", "DequantizeLinear")),
            "weight_bytes_before": common.weight_bytes(model),
            "weight_bytes_after": common.weight_bytes(out),
        }
        return ir.passes.PassResult(out, modified=True)
