"""FP16 conversion with float32 inputs/outputs and numerically sensitive ops kept in float32.

The work is done by ONNX Runtime's ``onnxruntime.transformers.float16.convert_float_to_float16``
(ships with onnxruntime). Around it this pass adds what a policy needs:

- ``DEFAULT_OP_BLOCK_LIST``: ops that overflow or lose precision in fp16 (below), plus the ops
  ONNX Runtime has no fp16 kernel for (its own ``DEFAULT_OP_BLOCK_LIST``).
- fp32 islands: an elementwise node whose float inputs all come from kept-fp32 nodes (or
  constants) and whose outputs only feed kept-fp32 nodes stays fp32 too. In a LayerNorm/RMSNorm
  written as primitives, ``ReduceMean(x*x) -> Add(eps) -> Sqrt`` then stays fp32 end to end.
- Cast pairs: the converter wraps every kept node in Cast(fp16->fp32) ... Cast(fp32->fp16),
  so two kept nodes in a row pass their value through fp16 (a variance of 1e5 becomes inf).
  A Cast to fp16 read only by a Cast back to fp32 is removed; the fp32 value flows through.

onnxconverter-common (not installed here) has the same converter plus a pass that removes
redundant Cast pairs and an ``auto_mixed_precision`` search; the two things robopt needs from
it (cast-pair removal, keeping a chain fp32) are done here, so it is not required.

Kept in float32 by default, and why:

==========================================  ====================================================
Exp                                         overflows fp16 above x = 11.09 (e^11.09 = 65504)
Pow                                         x^2 overflows above |x| = 256, x^3 (tanh-GELU) 40
ReduceMean, ReduceSum, ReduceSumSquare,     sums of many terms: squares overflow, and a 10-bit
ReduceL2, ReduceLogSumExp, ReduceProd       mantissa drops small addends (2048 + 1 == 2048)
Sqrt, Reciprocal                            1/sqrt(var + eps) of norms: eps = 1e-5 is subnormal
Softmax, LogSoftmax                         probabilities < 6e-5 go subnormal, < 6e-8 to 0 (log
                                            -inf); kept fp32 as the cost is small
LayerNormalization, GroupNormalization,     statistics of activations with outliers overflow in
InstanceNormalization, RMSNormalization     fp16 kernels (TensorRT warns about exactly this)
Range, CumSum                               integers above 2048 are not exact in fp16
Resize                                      coordinate arithmetic; scales must stay fp32
TopK                                        ties reorder under rounding; no ORT fp16 kernel
onnxruntime's list (ai.onnx.ml ops,         ONNX Runtime has no float16 kernel for them
NonMaxSuppression, RoiAlign, Min, Max, ...)
==========================================  ====================================================

A float->int Cast is not in the list: keeping the Cast in fp32 cannot restore precision its
producer already lost in fp16; exclude the producers by name if index arithmetic runs in float.

BF16: ONNX Runtime's CPU provider has almost no bf16 kernels, and before opset 22 ONNX Conv does
not even allow bf16. Measured with a full graph-level bf16 conversion of visuomotor-cnn: invalid
model at opset 20 (Conv), "no implementation for Sub(14)" at opset 22. OpenVINO runs bf16 as a
runtime hint on the fp32 model (``targets/openvino.py`` ``PRECISION_HINTS``), so
``dtype="bf16"`` raises ``PassError`` pointing there.
"""

# Measured on the robopt dev box (Intel Xeon, Sapphire Rapids class: AMX, AVX512-FP16; 2 vCPUs,
# noisy), onnxruntime 1.32.0, 1 thread, medians of interleaved runs ("best": lowest block
# median), cosine vs torch fp32 on 8 held-out inputs:
#
#   model            ORT fp32 ms (best)  ORT fp16 ms (best)  cos min (fp16)  weight bytes
#   visuomotor-cnn      40.8 (24.9)         36.6 (24.7)        0.9999998      45.6 -> 22.8 MB
#   act-policy          30.5 (29.8)         31.1 (30.6)        0.9999998      62.3 -> 31.1 MB
#
# - ORT's x86 CPU provider has few fp16 kernels (MLAS's fp16 GEMM/conv paths are for ARM): it
#   inserts Casts and runs Conv/Gemm in fp32 (the optimized graph shows it), so fp16 is never
#   faster on this CPU, only half the weight bytes; the cosine only reflects fp16 weight
#   rounding. fp16 is for GPU targets (TensorRT, CUDA, DirectML) and ARM CPUs with fp16.
# - On AMX CPUs use OpenVINO's bf16 hint instead (ACT: 29.1 ms f32 -> 6.8 ms bf16).

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import BackendUnavailableError, PassError
from robopt_compile.passes.quantize import _nncf_common as common
from robopt_compile.passes.quantize.base import QuantizePass, Sample

SENSITIVE_OPS = (
    "Exp", "Pow",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "Sqrt", "Reciprocal",
    "Softmax", "LogSoftmax",
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
    "Range", "CumSum", "Resize", "TopK",
)  # fmt: skip
# onnxruntime.transformers.float16.DEFAULT_OP_BLOCK_LIST (onnxruntime 1.32): no fp16 kernels.
ORT_NO_FP16 = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor",
    "Scaler", "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap",
    "NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
)  # fmt: skip
DEFAULT_OP_BLOCK_LIST = tuple(dict.fromkeys(SENSITIVE_OPS + ORT_NO_FP16))
# Cheap elementwise ops that join an fp32 island when they sit between kept-fp32 nodes.
ISLAND_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Clip", "Max", "Min",
                        "Identity", "Sqrt", "Reciprocal"})  # fmt: skip
FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.96e-08  # smallest fp16 subnormal; the converter clamps up to it


class Float16Pass(QuantizePass):
    """Convert weights and activations to fp16, keeping float32 model inputs and outputs.

    Args:
        dtype: ``fp16``. ``bf16`` raises ``PassError``: use the OpenVINO backend's bf16 precision.
        keep_io_types: Keep float32 graph inputs/outputs (Casts at the boundary).
        op_block_list: Op types kept in float32 (``DEFAULT_OP_BLOCK_LIST``).
        exclude_nodes: Node names kept in float32.
        calibration: Accepted for a uniform pass interface and not used.
    """

    name = "float16"

    def __init__(
        self,
        dtype: str = "fp16",
        keep_io_types: bool = True,
        op_block_list: Sequence[str] = DEFAULT_OP_BLOCK_LIST,
        exclude_nodes: Sequence[str] = (),
        calibration: Sequence[Sample] | None = None,
    ) -> None:
        super().__init__(calibration, exclude_nodes)
        if dtype == "bf16":
            raise PassError(
                "float16 pass: a bf16 ONNX graph does not run on ONNX Runtime's CPU provider "
                "(no bf16 kernels; ONNX Conv allows bf16 only from opset 22). For bf16 use the "
                "OpenVINO backend with --precision bf16: OpenVINO runs the fp32 model in bf16 "
                "as a runtime hint on CPUs with AVX512-BF16/AMX."
            )
        if dtype != "fp16":
            raise PassError(f"float16 pass: dtype must be 'fp16' (or 'bf16'), not {dtype!r}.")
        self.dtype = dtype
        self.keep_io_types = keep_io_types
        self.op_block_list = tuple(op_block_list)

    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        """Nodes that would compute in fp16: float nodes whose op is not in the block list."""
        prepared = common.prepare(model)
        return [n.name for n in prepared.graph if self._convertible(n)]

    def _convertible(self, node: ir.Node) -> bool:
        if node.op_type in self.op_block_list or node.domain not in ("", "ai.onnx"):
            return False
        values = [v for v in (*node.inputs, *node.outputs) if v is not None]
        return any(v.dtype == ir.DataType.FLOAT for v in values)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        prepared = common.prepare(model)
        common.check_exclude(prepared, self.exclude_nodes, self.name)
        blocked = {n.name for n in prepared.graph if n.op_type in self.op_block_list}
        islands = _fp32_islands(prepared, blocked | set(self.exclude_nodes))
        node_block = sorted(set(self.exclude_nodes) | set(islands))
        proto = common.to_proto(prepared, self.name)
        # onnx_ir writes value_info for initializers; the converter would retype those to fp16
        # while the tensors stay fp32 (and wrap them in Casts), so leave initializers to it.
        inits = {t.name for t in proto.graph.initializer}
        kept_info = [v for v in proto.graph.value_info if v.name not in inits]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept_info)
        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the float16 pass needs onnxruntime's converter ({exc}): pip install onnxruntime."
            ) from exc
        start = time.perf_counter()
        try:
            with common.quiet("onnxruntime.transformers.float16"):
                converted = convert_float_to_float16(
                    proto,
                    keep_io_types=self.keep_io_types,
                    op_block_list=list(self.op_block_list),
                    node_block_list=node_block,
                )
        except Exception as exc:  # ORT's fp16 converter raises any type (onnx, numpy, asserts)
            msg = " ".join(str(exc).split())[:200]
            raise PassError(
                f"onnxruntime's fp16 converter failed: {type(exc).__name__}: {msg}. Keep the "
                "failing node in float32 with exclude_nodes."
            ) from exc
        seconds = time.perf_counter() - start
        out = common.from_proto(converted)
        removed = _remove_cast_pairs(out)
        if self.keep_io_types:
            common.check_io(model, out, self.name)
        elif [v.name for v in out.graph.outputs] != [v.name for v in model.graph.outputs]:
            raise PassError(f"{self.name} changed the model's output names (a bug).")
        kept = sorted(blocked | set(node_block))
        self.report = {
            "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
            "tool_version": common.version("onnxruntime"),
            "dtype": self.dtype,
            "keep_io_types": self.keep_io_types,
            "op_block_list": list(self.op_block_list),
            "seconds": round(seconds, 3),
            "fp32_nodes": kept,
            "fp32_island_nodes": islands,
            "excluded_nodes": list(self.exclude_nodes),
            "cast_pairs_removed": removed,
            "weights_clamped_to_fp16_range": _clamped_weights(prepared, out),
            "op_delta": common.op_delta(prepared, out),
            "weight_bytes_before": rir.weight_bytes(model),
            "weight_bytes_after": rir.weight_bytes(out),
            "note": "fp16 is for GPU/TensorRT targets: x86 ONNX Runtime runs it no faster",
        }
        return ir.passes.PassResult(out, modified=True)


def _is_const(value: ir.Value) -> bool:
    return value.is_initializer() or value.const_value is not None


def _fp32_islands(model: ir.Model, kept: set[str]) -> list[str]:
    """Elementwise nodes between kept-fp32 nodes, which the pass keeps fp32 as well."""
    kept = set(kept)
    added: list[str] = []
    changed = True
    while changed:
        changed = False
        for node in model.graph:
            if node.name in kept or node.op_type not in ISLAND_OPS:
                continue
            float_in = [v for v in node.inputs if v is not None and not _is_const(v)]
            producers = [v.producer() for v in float_in]
            users = [u for v in node.outputs for u in v.consumers()]
            outputs_free = not any(v.is_graph_output() for v in node.outputs)
            if (
                float_in
                and users
                and outputs_free
                and all(p is not None and p.name in kept for p in producers)
                and all(u.name in kept for u in users)
            ):
                kept.add(node.name)
                added.append(node.name)
                changed = True
    return added


def _clamped_weights(before: ir.Model, after: ir.Model) -> int:
    """How many converted weight values lay outside what fp16 holds (the converter clamps)."""
    count = 0
    for name, value in before.graph.initializers.items():
        tensor = value.const_value
        new = after.graph.initializers.get(name)
        if tensor is None or tensor.dtype != ir.DataType.FLOAT or new is None:
            continue
        if new.const_value is None or new.const_value.dtype != ir.DataType.FLOAT16:
            continue
        a = np.abs(tensor.numpy())
        count += int(np.count_nonzero((a > FP16_MAX) | ((a > 0) & (a < FP16_MIN_POSITIVE))))
    return count


def _remove_cast_pairs(model: ir.Model) -> int:
    """Bypass Cast(fp32->fp16) -> Cast(fp16->fp32): the second reads the fp32 value directly."""
    removed = 0
    for node in list(model.graph):
        if node.op_type != "Cast" or node.attributes.get_int("to") != ir.DataType.FLOAT16:
            continue
        source = node.inputs[0]
        if source is None or source.dtype != ir.DataType.FLOAT:
            continue
        for user in list(node.outputs[0].consumers()):
            if user.op_type != "Cast" or user.attributes.get_int("to") != ir.DataType.FLOAT:
                continue
            out = user.outputs[0]
            if out.is_graph_output():
                if source.is_graph_input() or source.is_graph_output():
                    continue
                name = out.name
                out.replace_all_uses_with(source, replace_graph_outputs=True)
                out.name, source.name = f"{name}_fp16_roundtrip", name
            else:
                out.replace_all_uses_with(source)
            model.graph.remove(user, safe=True)
            removed += 1
        if not node.outputs[0].uses() and not node.outputs[0].is_graph_output():
            model.graph.remove(node, safe=True)
    return removed
