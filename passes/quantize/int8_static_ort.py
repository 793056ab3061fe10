"""INT8 static quantization to QDQ ONNX for ONNX Runtime, placed so transformers keep accuracy.

ONNX Runtime's own ``quantize_static`` does the work (QDQ format, int8 per-channel symmetric
weights, calibrated activations); this pass chooses where Q/DQ goes, names every node it
leaves in float and why, and reports what it did.

Measured with ORT 1.32, 1 thread, on the dev box's Xeon (Sapphire Rapids, AVX-512 VNNI + AMX,
2 cores, noisy), zoo models with random weights, per-channel weights, MinMax, 16 calibration
inputs (seed 1) and 16 held-out ones (seed 2), p50 = median of 15 interleaved block medians.
The zoo's fp32 outputs for different random inputs already agree to cosine 0.9997 (ACT), so
the raw cosine hides damage; "centred" is the cosine after subtracting the fp32 mean output
over the held-out inputs, i.e. of the input-dependent part, and is the figure that ranks:

    model           QDQ placement, activations    cosine     centred  rel L2   p50 ms
    visuomotor-cnn  fp32                          1          1        0        22.3
                    all ORT ops, uint8            0.999917   0.984    0.0129   6.98
                    this pass, uint8              0.999917   0.984    0.0129   6.90
                    this pass, int8               0.999916   0.984    0.0130   20.7
    act-policy      fp32                          1          1        0        27.7
                    all ORT ops, uint8            0.999626   0.819    0.0275   9.63
                    this pass, uint8              0.999886   0.931    0.0157   10.3
                    this pass, int8               0.999885   0.931    0.0159   31.0

Activations are **uint8** (asymmetric): ORT's x86 CPU fusions want them. With int8 ones
only 9 of the CNN's 20 Convs become QLinearConv, the rest and the residual Adds run in fp32
behind DequantizeLinear, and the model is barely faster than fp32 (ACT: slower).

On x86 CPUs without VNNI (``x86-64-avx2``, AMD Zen 1-3) ORT's uint8 x int8 kernels saturate
(``hwprofiles.schema.int8_saturates``): ``reduce_range`` (7-bit weights, ORT's guidance) is on
for such a target, and by default for such a host. Measured on an AMD EPYC with AVX2 only, the
2-layer transformer of the tests, 4 held-out inputs, worst cosine vs fp32: 8-bit weights 0.9857
in ORT's fused kernels and 0.9966 with the graph run as written (float after each
DequantizeLinear: no saturation); 7-bit weights 0.9958 either way.

Calibration: MinMax is the default. ``quantize_static``'s own entropy method is MinMax in
disguise (see ``_ort_common.ENTROPY_BINS``); with working bins it clips the tails that these
random-weight models' outputs depend on: centred cosine CNN 0.861, ACT 0.402 (MinMax 0.984,
0.931), after 40-165 s of calibration. Percentile 99.999: 0.980 and 0.925.

Transformer-safe placement (``transformer_safe=True``, the default), built rule by rule on
``act-policy`` (same protocol, 8 held-out inputs, another run; fp32 32.6 ms):

    placement                                         cosine     centred  rel L2   p50 ms
    all ORT ops (quantize_static default)             0.999634   0.782    0.0274   11.3
    Conv/Gemm/MatMul only                             0.999840   0.886    0.0179   14.3
    + Add/MaxPool/Relu, no Add into norm/Softmax      0.999792   0.855    0.0206   12.2
    + no Add of a constant (bias, pos. embedding)     0.999839   0.884    0.0180   12.1
    + no attention MatMuls                            0.999872   0.897    0.0169   11.9
    + float nodes read float tensors (this pass)      0.999884   0.913    0.0158   same

- Q/DQ on a Conv/Gemm/MatMul output is what lets ORT fuse it (QLinearConv, QLinearMatMul);
  a consumer being quantized is what puts it there, hence Add/MaxPool/Relu in the op list.
  Keeping MatMul outputs float (``OpTypesToExcludeOutputQuantization``) doubled ACT latency
  (24.5 ms): ORT then folds the weight DQ and runs fp32 Gemms.
- A residual Add feeding a normalisation stays float (ORT fuses it into a float
  SkipLayerNormalization); so does an Add that reaches a Softmax (attention mask).
- QK^T and softmax(.)V MatMuls (both inputs activations, next to a Softmax) stay float: when
  quantized, ORT wraps the Softmax into QLinearSoftmax. Excluding them cost no latency.
- Adds of a constant operand stay float: an extra rounding, no int8 kernel to gain.
- A MatMul reading a Softmax output against a constant (spatial-softmax keypoints:
  probabilities @ pixel coordinates) stays float: the map is near zero but for a sharp peak,
  which per-tensor int8 flattens. On ``reacher-cnn`` (held-out task observations) full int8
  gave relative L2 0.47 with it quantized and 0.08 with it float.
- ORT's quantizer hands every reader of a quantized tensor the DQ output, float nodes too:
  the residual stream was rounded at every layer. Float nodes get the float tensor back
  where the Q/DQ is shared; a pair only they read stays (it is what fuses the producer).
- On a one-layer transformer with an additive mask (the tests) all-ops QDQ collapses to
  cosine 0.76 and this placement keeps 0.997. The error left on ACT comes mostly from the
  last decoder layers and the action head (quantized alone: cross-attention out-projection
  0.980, action head 0.984 centred); keeping them float is mixed precision's job, through
  ``exclude_nodes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import InputError, PassError, UnknownNameError
from robopt_compile.passes.quantize import _ort_common as common
from robopt_compile.passes.quantize.base import QuantizePass, Sample

# The nodes whose int8 kernels pay (Conv/Gemm/MatMul) and the neighbours that let ORT fuse
# them into QLinear* kernels, chaining int8 tensors between them.
SAFE_OP_TYPES = (
    "Conv", "ConvTranspose", "Gemm", "MatMul",
    "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip",
)  # fmt: skip
HINT = "exclude the node it names with exclude_nodes, or try another method"
# Between QK^T and its Softmax: scaling, masking and reshaping.
_SCORE_OPS = common.FORWARDING_OPS | {"Mul", "Div", "Add", "Sub", "Where"}


def transformer_unsafe(model: ir.Model) -> dict[str, str]:
    """Nodes that transformer-safe placement keeps in float, with the reason for each."""
    dep = common.input_dependent(model)
    out: dict[str, str] = {}
    for node in model.graph:
        op = node.op_type
        if op in common.SOFTMAX_OPS:
            out[node.name] = f"{op}: its input range is too wide for int8"
        elif op in common.NORM_OPS:
            out[node.name] = f"{op}: normalisation stays float"
        elif op in ("Add", "Sub"):
            if (user := common.reaches(node, common.SOFTMAX_OPS)) is not None:
                out[node.name] = f"attention mask/bias add feeding {user.name!r} ({user.op_type})"
            elif (user := common.reaches(node, common.NORM_OPS)) is not None:
                out[node.name] = f"residual add feeding {user.name!r} ({user.op_type})"
            elif (norm := common.feeds_decomposed_norm(node)) is not None:
                out[node.name] = f"residual add feeding a {norm}"
            elif not all(v in dep for v in node.inputs if v is not None):
                out[node.name] = "adds a constant (bias, positional embedding): extra rounding only"
        elif op == "MatMul" and all(v in dep for v in node.inputs if v is not None):
            near = common.reaches(node, common.SOFTMAX_OPS, _SCORE_OPS) or next(
                (p for v in node.inputs if (p := common.fed_by(v, common.SOFTMAX_OPS))), None
            )
            if near is not None:
                out[node.name] = f"attention MatMul next to {near.name!r}: Q/DQ would wrap it"
        elif op == "MatMul":
            sm = next((p for v in node.inputs if (p := common.fed_by(v, common.SOFTMAX_OPS))), None)
            if sm is not None:
                # softmax(x) @ constant: a spatial-softmax keypoint expectation. The probability
                # map is near zero except a sharp peak; per-tensor int8 flattens the peak.
                out[node.name] = f"expectation over the probabilities of {sm.name!r}"
    return out


class OrtStaticInt8Pass(QuantizePass):
    """INT8 static QDQ quantization with ONNX Runtime's quantizer.

    Args:
        calibration: Feed dicts from the calibration split (at least one).
        exclude_nodes: Node names to keep in float (``quantize_static``'s ``nodes_to_exclude``):
            float weights and compute. An input shared with quantized nodes is fed float; an
            input only they read keeps its Q/DQ, which lets ORT run its producer in int8.
        method: Activation range calibration: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: One weight scale per output channel (else one per tensor).
        percentile: The percentile kept by ``method="percentile"``.
        activation_symmetric: Symmetric activation ranges (uint8 zero point 128).
        transformer_safe: Keep Softmax, normalisations, mask and residual adds and attention
            MatMuls in float (see the module docstring for the measurements).
        op_types: Op types to quantize; default ``SAFE_OP_TYPES`` when ``transformer_safe``,
            else every op ORT's quantizer knows.
        reduce_range: 7-bit weights, for x86 CPUs without VNNI whose int8 kernels saturate;
            ``None``: on when the machine this runs on is one (pass the target's
            ``HardwareProfile.int8_saturates`` when it is another machine).
    """

    name = "int8-static-ort"
    needs_calibration = True

    def __init__(
        self,
        calibration: Sequence[Sample] | None = None,
        exclude_nodes: Sequence[str] = (),
        method: str = "minmax",
        per_channel: bool = True,
        percentile: float = 99.999,
        activation_symmetric: bool = False,
        transformer_safe: bool = True,
        op_types: Sequence[str] | None = None,
        reduce_range: bool | None = None,
    ) -> None:
        super().__init__(calibration, exclude_nodes)
        if reduce_range is None:
            from robopt_compile.hwprofiles.host import host_int8_saturates

            reduce_range = host_int8_saturates()
        self.reduce_range = reduce_range
        if method not in common.CALIBRATION_METHODS:
            raise UnknownNameError("calibration method", method, list(common.CALIBRATION_METHODS))
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile must be in (0, 100], got {percentile}.")
        self.method = method
        self.per_channel = per_channel
        self.percentile = percentile
        self.activation_symmetric = activation_symmetric
        self.transformer_safe = transformer_safe
        if op_types is None and transformer_safe:
            op_types = SAFE_OP_TYPES
        self.op_types = tuple(op_types) if op_types is not None else None

    def _op_types(self) -> frozenset[str]:
        if self.op_types is not None:
            return frozenset(self.op_types)
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)

    def _plan(self, model: ir.Model) -> tuple[list[str], dict[str, str]]:
        """(nodes to quantize, nodes kept float by placement with reasons), ``prepare``d model."""
        ops = self._op_types()
        unsafe = transformer_unsafe(model) if self.transformer_safe else {}
        candidates = [
            n.name
            for n in model.graph
            if n.op_type in ops
            and n.domain in ("", "ai.onnx")
            and any(common.is_float(v) for v in n.inputs)
        ]
        # Report Softmax and norms even when their op is not targeted: readers look for them.
        shown = ops | common.SOFTMAX_OPS | common.NORM_OPS
        by_name = common.nodes_by_name(model)
        kept = {n: r for n, r in unsafe.items() if by_name[n].op_type in shown}
        return [n for n in candidates if n not in unsafe], kept

    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        return self._plan(common.prepare(model))[0]

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
        targets, unsafe = self._plan(work)
        wanted = [n for n in targets if n not in self.exclude_nodes]
        if not wanted:
            raise PassError(
                f"{self.name}: nothing to quantize ({len(targets)} candidate nodes of op types "
                f"{', '.join(sorted(self._op_types())) if self.op_types else 'all'}, "
                f"{len(self.exclude_nodes)} excluded); quantize other op types or drop the step."
            )
        extra: dict[str, Any] = {"ActivationSymmetric": self.activation_symmetric}
        if self.method == "percentile":
            extra["CalibPercentile"] = self.percentile
        out = common.run_quantizer(
            work,
            quantize_static,
            self.name,
            HINT,
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=sorted(self.op_types) if self.op_types is not None else None,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[*self.exclude_nodes, *unsafe],
            calibrate_method=getattr(CalibrationMethod, common.CALIBRATION_METHODS[self.method]),
            extra_options=extra,
        )
        present = common.nodes_by_name(out)
        for name in sorted({*self.exclude_nodes, *unsafe} & present.keys()):
            common.drop_input_qdq(out, present[name], shared_only=True)
        # Quantized: a DQ feeds it, or ORT folded it into its neighbour's range (Relu, Clip).
        fed = common.dq_fed_nodes(out)
        quantized = [n for n in wanted if n in fed or n not in present]
        self.report = {
            "tool": "onnxruntime.quantization.quantize_static",
            "tool_version": common.ort_version(),
            "format": "QDQ",
            "method": self.method,
            **({"percentile": self.percentile} if self.method == "percentile" else {}),
            "per_channel": self.per_channel,
            "activations": "uint8 " + ("symmetric" if self.activation_symmetric else "asymmetric"),
            "weights": "int8 symmetric" + (", 7-bit range" if self.reduce_range else ""),
            "reduce_range": self.reduce_range,
            "calibration_samples": len(self.calibration),
            "transformer_safe": self.transformer_safe,
            "op_types": sorted(self.op_types) if self.op_types is not None else "all",
            "quantized_nodes": quantized,
            "left_float_by_quantizer": [n for n in wanted if n not in quantized],
            "excluded_nodes": [
                *({"name": n, "reason": "excluded by the caller"} for n in self.exclude_nodes),
                *({"name": n, "reason": r} for n, r in unsafe.items()),
            ],
            "qdq_nodes": common.op_counts(out, ("QuantizeLinear", "DequantizeLinear")),
            "weight_bytes_before": common.weight_bytes(model),
            "weight_bytes_after": common.weight_bytes(out),
        }
        return ir.passes.PassResult(out, modified=True)
