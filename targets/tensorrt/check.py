"""Static pre-flight check of an ONNX model against TensorRT's ONNX parser, without TensorRT.

It runs on the build machine (it needs only ``onnx``) before every TensorRT build and before a
deferred build is written, so a model TensorRT would reject fails here, naming the node and the
reason, instead of on the robot minutes into an engine build. What each rule rests on:

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

A model without TensorRT proof is still only checked: the real parse happens on the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError, InputError

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


def check_dynamic_batch(value: Sequence[int] | None) -> tuple[int, int, int] | None:
    """Validate ``BuildOptions.dynamic_batch``: ``(min, opt, max)`` with 1 <= min <= opt <= max."""
    if value is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(
            f"dynamic_batch must be (min, opt, max) integers, got {value!r}."
        ) from None
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"dynamic_batch must satisfy 1 <= min <= opt <= max, got {value!r}.")
    return lo, opt, hi


def load_model(model_path: Path) -> Any:
    """The ONNX model (``onnx.ModelProto``) or a one-line ``BuildError``.

    External data is not loaded: the checks read only small constants (INT64 values, Q/DQ
    scales), each loaded on demand, so a multi-GB policy is not read into memory here.
    """
    import onnx

    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, missing external data, OSError
        lines = str(exc).strip().splitlines()
        first = (lines[0] if lines else type(exc).__name__)[:200]
        raise BuildError(f"TensorRT pre-flight cannot read {model_path}: {first}.") from exc


def check_model(
    model: Any,
    *,
    precision: str = "fp32",
    dynamic_batch: Sequence[int] | None = None,
    dla_core: int | None = None,
    trt_version: str = TARGET_TRT,
    base_dir: Path | None = None,
) -> list[Finding]:
    """Everything TensorRT ``trt_version`` would reject or silently change, node by node.

    Args:
        model: an ``onnx.ModelProto`` or the path of an ONNX file.
        base_dir: the folder of the ONNX file, for external data (a path ``model`` sets it).
        precision: the requested robopt precision (``fp32``, ``fp16``, ``int8``); with strongly
            typed networks it must match the ONNX's own types.
        dynamic_batch: ``(min, opt, max)`` of the optimization profile over a symbolic batch.
        dla_core: the DLA core the build will use, or ``None`` for GPU only.
        trt_version: the TensorRT version the engine will be built with.

    Returns:
        Findings in graph order; ``require_buildable`` raises on the first error.
    """
    if isinstance(model, str | Path):
        base_dir = Path(model).parent
        model = load_model(Path(model))
    batch = check_dynamic_batch(dynamic_batch)
    return _Checker(model, precision, batch, dla_core, trt_version, base_dir).run()


def require_buildable(findings: Sequence[Finding]) -> None:
    """Raise one ``BuildError`` line naming the first blocking finding and how many others."""
    errors = [f for f in findings if f.severity == ERROR]
    if not errors:
        return
    first, more = errors[0], len(errors) - 1
    tail = f" (and {more} other blocking finding{'s' if more != 1 else ''})" if more else ""
    raise BuildError(f"TensorRT pre-flight: {first.where()}: {first.reason}{tail}.")


# --- the checker ------------------------------------------------------------------------------


def _dtype_name(t: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(t)
    except ValueError:
        return str(t)


class _Checker:
    def __init__(
        self,
        model: Any,
        precision: str,
        dynamic_batch: tuple[int, int, int] | None,
        dla_core: int | None,
        trt_version: str,
        base_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.base_dir = str(base_dir) if base_dir is not None else ""
        self.precision = precision
        self.dynamic_batch = dynamic_batch
        self.dla_core = dla_core
        self.trt_version = trt_version
        self.findings: list[Finding] = []
        self.nodes = list(_walk(model.graph))
        self.names = {id(n): n.name or f"{n.op_type}#{i}" for i, n in enumerate(self.nodes)}
        self.constants: dict[str, Any] = {}  # value name -> TensorProto
        for g in _graphs(model.graph):
            self.constants.update({t.name: t for t in g.initializer})
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = next((a.t for a in n.attribute if a.name == "value" and a.t), None)
                if value is not None and n.output:
                    self.constants[n.output[0]] = value
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in self.nodes:
            for i, v in enumerate(n.input):
                if v:
                    self.consumers.setdefault(v, []).append((n, i))
        self.graph_outputs = {o.name for o in model.graph.output}
        self.types = self._value_types()

    # helpers

    def add(self, node: str, op: str, reason: str, severity: str = ERROR, rule: str = "") -> None:
        self.findings.append(Finding(node, op, reason, severity, rule))

    def name(self, node: Any) -> str:
        return self.names[id(node)]

    def array(self, value: str) -> Any:
        from onnx import numpy_helper

        try:
            return numpy_helper.to_array(self.constants[value], self.base_dir)
        except Exception as exc:  # OSError, onnx's ValidationError for a missing data file
            raise BuildError(
                f"TensorRT pre-flight cannot read constant {value!r} from external data "
                f"({type(exc).__name__}); keep the .onnx next to its data file."
            ) from exc

    def _value_types(self) -> dict[str, int]:
        """Element type of every value ONNX shape inference can type (empty if it fails)."""
        import onnx

        types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:  # models > 2 GB, unknown domains: the dtype rule then skips
            inferred = self.model
        g = inferred.graph
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for name, t in self.constants.items():
            types[name] = t.data_type
        return types

    def run(self) -> list[Finding]:
        self._opset()
        self._operators()
        self._int64()
        self._qdq()
        self._inputs()
        self._precision()
        if self.dla_core is not None:
            self._dla()
        return self.findings

    # rules

    def _opset(self) -> None:
        for imp in self.model.opset_import:
            if imp.domain not in ("", "ai.onnx"):
                continue
            lo, hi = OPSET_RANGE
            if imp.version < lo:
                self.add("", "model", f"opset {imp.version} is older than TensorRT's opset {lo}")
            elif imp.version > hi:
                self.add(
                    "",
                    "model",
                    f"opset {imp.version} is newer than the opset {lo}-{hi} of {OPERATOR_TABLE}; "
                    "an operator whose semantics changed since may be rejected on the device",
                    WARNING,
                    "opset",
                )

    def _operators(self) -> None:
        # Calls of model-local functions are inlined by the parser: check their bodies instead.
        local = {(f.domain, f.name): f for f in self.model.functions}
        body = [n for f in self.model.functions for n in f.node]
        for i, n in enumerate(body):
            self.names.setdefault(id(n), n.name or f"{n.op_type}#f{i}")
        for n in [*self.nodes, *body]:
            if (n.domain, n.op_type) in local:
                continue
            if n.domain not in ("", "ai.onnx"):
                self.add(
                    self.name(n),
                    n.op_type,
                    f"op domain {n.domain!r} has no TensorRT importer; it needs a TensorRT "
                    "plugin registered under that name",
                    rule="operator",
                )
            elif n.op_type in UNSUPPORTED_OPS:
                self.add(
                    self.name(n),
                    n.op_type,
                    f"{n.op_type} is not supported by TensorRT's ONNX parser ({OPERATOR_TABLE})",
                    rule="operator",
                )
            elif n.op_type not in SUPPORTED_OPS:
                self.add(
                    self.name(n),
                    n.op_type,
                    f"{n.op_type} is not in TensorRT's operator table ({OPERATOR_TABLE})",
                    rule="operator",
                )

    def _int64(self) -> None:
        for value, tensor in self.constants.items():
            if tensor.data_type != INT64:
                continue
            arr = self.array(value)
            if arr.size == 0:
                continue
            lo, hi = int(arr.min()), int(arr.max())
            if lo >= INT32_MIN and hi <= INT32_MAX:
                continue
            bad = hi if hi > INT32_MAX else lo
            uses = self.consumers.get(value, [])
            exempt = [i in SENTINEL_INPUTS.get(n.op_type, ()) for n, i in uses]
            if uses and all(exempt) and abs(bad) >= INT32_MAX:
                continue  # INT64_MAX "to the end" / "no limit": the parser clamps it
            shape_use = next(
                ((n, i) for n, i in uses if i in SHAPE_INPUTS.get(n.op_type, ())), None
            )
            where = shape_use[0] if shape_use else (uses[0][0] if uses else None)
            node, op = (self.name(where), where.op_type) if where is not None else (value, "model")
            if shape_use:
                self.add(
                    node,
                    op,
                    f"INT64 constant {value!r} holds {bad}, outside int32, and TensorRT turns "
                    f"input {shape_use[1]} of {op} into int32 dimensions",
                    rule="int64-range",
                )
            else:
                self.add(
                    node,
                    op,
                    f"INT64 constant {value!r} holds {bad}, outside int32: TensorRT 10 keeps "
                    "INT64 here, but TensorRT <= 8.6 clamped it to INT32 and INT32-only layers "
                    "will not take it",
                    WARNING,
                    "int64-range",
                )

    # Q/DQ

    def _is_weight(self, node: Any) -> bool:
        """Whether a Q/DQ node's data input is a constant (a weight), possibly behind a Q."""
        src = node.input[0]
        if src in self.constants:
            return True
        p = self.producer.get(src)
        return p is not None and p.op_type == "QuantizeLinear" and p.input[0] in self.constants

    def _weight_consumers(self, node: Any) -> Iterator[tuple[Any, int]]:
        outs = [node.output[0]]
        if node.op_type == "QuantizeLinear":
            outs = [d.output[0] for d, _ in self.consumers.get(node.output[0], [])]
        for out in outs:
            yield from self.consumers.get(out, [])

    def _expected_axis(self, consumer: Any, index: int, rank: int) -> int | None:
        if (consumer.op_type, index) in OUTPUT_AXIS:
            return OUTPUT_AXIS[(consumer.op_type, index)]
        if consumer.op_type == "MatMul" and index == 1:
            return rank - 1
        if consumer.op_type == "Gemm" and index == 1:
            trans = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
            return 0 if trans else 1
        return None

    def _qdq(self) -> None:
        for n in self.nodes:
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            name, op = self.name(n), n.op_type
            scale = n.input[1] if len(n.input) > 1 else ""
            zero = n.input[2] if len(n.input) > 2 else ""
            if scale not in self.constants:
                self.add(
                    name,
                    op,
                    f"scale {scale!r} is not a constant (TensorRT needs a "
                    "build-time constant scale)",
                    rule="qdq-scale",
                )
                continue
            s = self.array(scale)
            if (s <= 0).any():
                self.add(name, op, f"scale {scale!r} has non-positive values", rule="qdq-scale")
            qtype = self._quant_type(n, zero)
            if qtype is not None and qtype not in QUANT_TYPES:
                self.add(
                    name,
                    op,
                    f"quantizes to {_dtype_name(qtype)}: TensorRT quantizes to INT8, INT4 or FP8 "
                    "(UINT8 only as a network input/output type); use int8 symmetric",
                    rule="qdq-type",
                )
            if zero:
                if zero not in self.constants:
                    self.add(
                        name, op, f"zero point {zero!r} is not a constant", rule="qdq-zero-point"
                    )
                elif (z := self.array(zero)).any():
                    nz = z.reshape(-1)[z.reshape(-1) != 0][0]
                    self.add(
                        name,
                        op,
                        f"asymmetric quantization: zero point {int(nz)} (TensorRT quantization is "
                        "symmetric: the zero point must be 0)",
                        rule="qdq-zero-point",
                    )
            elif op == "QuantizeLinear" and qtype is None:
                self.add(
                    name,
                    op,
                    "no zero point: ONNX then means uint8, TensorRT builds int8; add an int8 "
                    "zero point of 0 so both agree",
                    WARNING,
                    "qdq-zero-point",
                )
            self._qdq_granularity(n, s)
            self._qdq_pairing(n, s)
            if op == "QuantizeLinear":
                xt = self.types.get(n.input[0])
                st = self.constants[scale].data_type
                if xt and st and xt != st:
                    self.add(
                        name,
                        op,
                        f"input is {_dtype_name(xt)} but its scale is {_dtype_name(st)}: in a "
                        "strongly typed network the input type must match the scale type",
                        rule="qdq-strongly-typed",
                    )

    def _quant_type(self, node: Any, zero: str) -> int | None:
        if zero and zero in self.constants:
            return self.constants[zero].data_type
        if node.op_type == "DequantizeLinear" and node.input[0] in self.types:
            return self.types[node.input[0]]
        attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return attr or None

    def _qdq_granularity(self, node: Any, scale: Any) -> None:
        name, op = self.name(node), node.op_type
        if scale.size <= 1:
            return
        if scale.ndim >= 2:
            self.add(
                name,
                op,
                "block quantization (a 2-D scale) is INT4-weight only in TensorRT",
                rule="qdq-granularity",
            )
            return
        if not self._is_weight(node):
            self.add(
                name,
                op,
                f"per-channel scale ({scale.size} values) on an activation: TensorRT quantizes "
                "activations per-tensor only",
                rule="qdq-granularity",
            )
            return
        src = node.input[0]
        data = src if src in self.constants else self.producer[src].input[0]
        rank = len(self.constants[data].dims)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        axis = axis + rank if axis < 0 else axis
        for consumer, index in self._weight_consumers(node):
            expected = self._expected_axis(consumer, index, rank)
            if expected is not None and axis != expected:
                self.add(
                    name,
                    op,
                    f"per-channel weight scale along axis {axis}, but the output channels of "
                    f"{consumer.op_type} {self.name(consumer)!r} are axis {expected}: the scale "
                    "cannot be factored out of the dot product",
                    rule="qdq-granularity",
                )
                return

    def _qdq_pairing(self, node: Any, scale: Any) -> None:
        import numpy as np

        name, op = self.name(node), node.op_type
        if op == "QuantizeLinear":
            users = self.consumers.get(node.output[0], [])
            if node.output[0] in self.graph_outputs or any(
                u.op_type != "DequantizeLinear" for u, _ in users
            ):
                self.add(
                    name,
                    op,
                    "its output feeds something other than DequantizeLinear: TensorRT's "
                    "explicit quantization works on QuantizeLinear/DequantizeLinear pairs",
                    rule="qdq-pair",
                )
            for u, _ in users:
                other = u.input[1] if len(u.input) > 1 else ""
                same = other in self.constants and np.array_equal(self.array(other), scale)
                if u.op_type == "DequantizeLinear" and other in self.constants and not same:
                    self.add(
                        name,
                        op,
                        f"its DequantizeLinear {self.name(u)!r} uses a different scale: the "
                        "pair re-scales instead of fake-quantizing",
                        WARNING,
                        "qdq-pair",
                    )
        else:
            src = node.input[0]
            p = self.producer.get(src)
            if src not in self.constants and (p is None or p.op_type != "QuantizeLinear"):
                self.add(
                    name,
                    op,
                    f"its input {src!r} comes from neither a QuantizeLinear nor a quantized "
                    "constant weight",
                    rule="qdq-pair",
                )

    # inputs and shapes

    def _inputs(self) -> None:
        batch = self.dynamic_batch
        dynamic_batch_inputs = 0
        for v in self.model.graph.input:
            if v.name in self.constants:
                continue
            tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
            if tt is None or not tt.HasField("shape"):
                self.add(
                    v.name,
                    "input",
                    "has no shape; TensorRT needs the rank and the non-batch dims",
                    rule="dynamic-dim",
                )
                continue
            dims = list(tt.shape.dim)
            for i, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value > 0:
                    continue
                label = d.dim_param or "?"
                if i == 0 and batch is not None:
                    dynamic_batch_inputs += 1
                elif i == 0:
                    self.add(
                        v.name,
                        "input",
                        f"dim 0 ({label!r}) is symbolic but no dynamic_batch (min, opt, max) was "
                        "given for the optimization profile; pass one or export a fixed batch",
                        rule="dynamic-dim",
                    )
                else:
                    self.add(
                        v.name,
                        "input",
                        f"dim {i} ({label!r}) is dynamic: robopt's optimization profile covers "
                        "only a batch dim 0; export this dim with a fixed size",
                        rule="dynamic-dim",
                    )
        if batch is not None and dynamic_batch_inputs == 0:
            self.add(
                "",
                "model",
                f"dynamic_batch {batch} was given but no input has a symbolic dim 0 (export the "
                "model with a dynamic batch)",
                rule="dynamic-dim",
            )

    # precision (strongly typed: the ONNX types are the engine's precision)

    def _precision(self) -> None:
        fp16 = self._first_fp16()
        qdq = next(
            (n for n in self.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")), None
        )
        p = self.precision
        if p == "fp16" and fp16 is None:
            self.add(
                "",
                "model",
                "precision fp16, but this ONNX has no float16 tensor and a "
                "strongly typed engine computes in the ONNX's own types: run robopt's "
                "float16 pass first (TensorRT 11 has no FP16 builder flag)",
                rule="precision",
            )
        if p == "int8" and qdq is None:
            self.add(
                "",
                "model",
                "precision int8, but this ONNX has no QuantizeLinear/"
                "DequantizeLinear: run robopt's int8-static-trt pass (TensorRT 11 removed "
                "implicit INT8 calibration)",
                rule="precision",
            )
        if p in ("fp32", "fp16") and qdq is not None:
            self.add(
                self.name(qdq),
                qdq.op_type,
                f"precision {p}, but this ONNX is quantized (Q/DQ): build it as int8",
                rule="precision",
            )
        if p == "fp32" and fp16 is not None:
            self.add(
                "",
                "model",
                f"precision fp32, but this ONNX computes in float16 ({fp16}): "
                "a strongly typed engine would run that in fp16; build it as fp16",
                rule="precision",
            )

    def _first_fp16(self) -> str | None:
        for name, t in self.constants.items():
            if t.data_type == FLOAT16:
                return f"constant {name!r}"
        for n in self.nodes:
            if n.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in n.attribute):
                return f"Cast {self.name(n)!r}"
        for v in self.model.graph.input:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == FLOAT16:
                return f"input {v.name!r}"
        return None

    # DLA

    def _dla(self) -> None:
        if not dla_supported(self.trt_version):
            self.add(
                "",
                "model",
                f"DLA is not available in TensorRT {self.trt_version} on "
                "Jetson (10.7 was the last 10.x with DLA; 11.x has it from 11.4.1 on "
                "JetPack 7.2.2)",
                rule="dla",
            )
        if self.precision == "fp32":
            self.add(
                "",
                "model",
                "DLA runs FP16 and INT8 only: at fp32 every layer would fall "
                "back to the GPU; build fp16 or int8 for DLA",
                rule="dla",
            )
        b = self.dynamic_batch
        if b is not None and b[0] != b[2]:
            self.add(
                "",
                "model",
                f"DLA takes no dynamic dims but dynamic_batch is {b}: the "
                "layers would run on the GPU (fallback); use min = opt = max for DLA",
                WARNING,
                "dla",
            )
        for v in self.model.graph.input:
            if v.name in self.constants or not v.type.HasField("tensor_type"):
                continue
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            batch = b[2] if b is not None else (dims[0] if dims else 1)
            if batch > DLA_MAX_BATCH:
                self.add(
                    v.name,
                    "input",
                    f"batch {batch} exceeds DLA's {DLA_MAX_BATCH}; those "
                    "layers fall back to the GPU",
                    WARNING,
                    "dla",
                )
            big = [d for d in dims[1:] if d > DLA_MAX_DIM]
            if big:
                self.add(
                    v.name,
                    "input",
                    f"dim {big[0]} exceeds DLA's {DLA_MAX_DIM} for "
                    "non-batch dims; those layers fall back to the GPU",
                    WARNING,
                    "dla",
                )


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _walk(graph: Any) -> Iterator[Any]:
    for g in _graphs(graph):
        yield from g.node
