"""What TensorRT's ONNX parser takes, as tables with their sources, and the ``Finding`` record.

The pre-flight check (``check.py``, ``qdq.py``) reads these tables; the recipe records
``OPERATOR_TABLE``, ``TARGET_TRT`` and ``MIN_TRT``; the builder and the GPU probe read
``parse_version`` and ``dla_supported``. This module imports nothing heavy, so the runner's
TensorRT version check does not pull in ``onnx``. What each table rests on:

- Operators: onnx-tensorrt ``docs/operators.md`` at "ONNX-TensorRT 10.1 GA release" (commit
  96e7811), whose header reads "TensorRT 10.0 supports operators in the inclusive range of opset
  9 to opset 20". JetPack 6.1 and 6.2 ship TensorRT 10.3; later 10.x releases only add operators,
  so the 10.1 table is the conservative one. An op in no table (newer than opset 20, or a custom
  domain) is reported too: the parser would try to load it as a plugin and fail.
- Q/DQ (explicit quantization, the only INT8 path in TensorRT 11): the table's "``x_zero_point`` /
  ``y_zero_point`` must be zero" and the ``IQuantizeLayer`` contract in ``NvInfer.h`` (TensorRT
  tags v10.3.0 and v11.1): symmetric only; the scale is a positive build-time constant, a scalar
  (per-tensor) or 1-D (per-channel); "Per-channel quantization is supported only for weight
  inputs"; "For strongly typed networks, input data type must match the scale data type". A
  per-channel weight scale must run along the consumer's output-channel axis (Conv axis 0,
  ConvTranspose 1, MatMul the last, Gemm by ``transB``: NVIDIA's KCRS example), or it cannot be
  factored out of the dot product. Every QuantizeLinear must feed DequantizeLinear nodes.
- INT64: TensorRT up to 8.6 cast INT64 weights to INT32, clamping to +-INT_MAX (operators.md of
  8.x: "TensorRT will attempt to cast down INT64 to INT32 ... clamping values"). Since 9.x the
  parser keeps INT64, but values it turns into dimensions (Reshape shape, Expand shape, Tile
  repeats, ...) still go through ``toDims`` limited to int32 (onnx-tensorrt ``ShapeTensor.cpp``):
  out-of-range there is an error, elsewhere a warning. Slice starts/ends, Loop trip counts and
  NonMaxSuppression's box limit are exempt: INT64_MAX is their documented "no limit" idiom, which
  the parser clamps itself.
- Dynamic dims: robopt builds one optimization profile, over a symbolic batch dim (dim 0) from
  ``BuildOptions.dynamic_batch``. Any other symbolic dim, or a symbolic batch without a profile,
  would fail the build ("network has dynamic inputs but no optimization profile").
- DLA (only when a DLA core is requested): TensorRT's "DLA Supported Layers and Restrictions":
  FP16/INT8 only, batch <= 4096, non-batch dims <= 8192, no dynamic dims (min = opt = max).
  Which layers run on DLA is decided by TensorRT at build time; with GPU fallback (always set
  here) the rest runs on the GPU silently, so these rules warn when DLA would end up idle.
  "Working with DLA" (TensorRT 11.3 and 11.4.1 docs): 10.7 was the last 10.x release with DLA on
  Jetson, and 11.x has it again only from 11.4.1 on JetPack 7.2.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPERATOR_TABLE = (
    "onnx-tensorrt docs/operators.md, ONNX-TensorRT 10.1 GA (commit 96e7811): TensorRT 10.0, "
    "opset 9-20"
)
OPSET_RANGE = (9, 20)
TARGET_TRT = "10.3"  # JetPack 6.1 and 6.2 (CUDA 12.6, TensorRT 10.3, cuDNN 9.3)
MIN_TRT = (10, 0)  # strongly typed networks; JetPack 6.0 ships 8.6 and is not supported
ERROR, WARNING = "error", "warning"

# "Y" rows of the operator table (ONNX default domain).
SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
    ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905 - the table's rows, as they read
)
# "N" rows: ops the table lists as not supported.
UNSUPPORTED_OPS = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow
    CenterCropPad Col2Im Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    HammingWindow HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
    Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
    QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
    SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()  # noqa: SIM905
)
# INT64 inputs the parser turns into int32 dimensions (op -> input indices).
SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Resize": (3,),
    "Pad": (1,),
    "TopK": (1,),
    "OneHot": (1,),
}
# INT64 inputs where INT64_MAX means "no limit" and the parser clamps it (op -> indices).
SENTINEL_INPUTS = {"Slice": (1, 2), "Loop": (0,), "NonMaxSuppression": (2,)}
# Per-channel weight axis = output channels of the consumer, by (op, weight input index).
OUTPUT_AXIS = {("Conv", 1): 0, ("ConvTranspose", 1): 1}
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# ONNX TensorProto data types used below (onnx.TensorProto enum values).
FLOAT, UINT8, INT8, INT64, FLOAT16, INT4, FLOAT8E4M3FN = 1, 2, 3, 7, 10, 22, 17
QUANT_TYPES = {INT8: "INT8", INT4: "INT4", FLOAT8E4M3FN: "FP8"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing TensorRT would reject (``error``) or handle in a way worth knowing (``warning``).

    ``op`` is the node's op type, or ``"input"`` / ``"model"`` for graph-level findings.
    """

    node: str
    op: str
    reason: str
    severity: str = ERROR
    rule: str = ""

    def where(self) -> str:
        if self.op == "model":
            return "model"
        if self.op == "input":
            return f"input {self.node!r}"
        return f"node {self.node!r} ({self.op})"

    def to_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "op": self.op,
            "reason": self.reason,
            "severity": self.severity,
            "rule": self.rule,
        }


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; ``"11.x"`` -> ``(11,)``."""
    parts = []
    for p in str(text).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def dla_supported(trt_version: str) -> bool:
    """Whether TensorRT ``trt_version`` runs DLA on Jetson Orin (see the module docstring)."""
    v = parse_version(trt_version)
    return (v[:1] == (10,) and v[:2] <= (10, 7)) or v[:3] >= (11, 4, 1)
