"""Weight-only INT4/INT8 with ONNX Runtime's ``MatMulNBits`` (block-wise, data-free RTN).

``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` replaces a MatMul whose
B input is a constant by ``com.microsoft::MatMulNBits``: B stored in 4 or 8 bits in blocks of
``block_size`` along K with one fp32 scale per block (plus a zero point when asymmetric),
dequantized on the fly by ORT's kernel. Activations stay fp32 (``accuracy_level=4`` lets the
kernel quantize them to int8 for the product). OpenVINO's ONNX frontend reads MatMulNBits too.

What it does not touch: Conv and ConvTranspose (a policy's CNN backbone stays fp32), MatMuls of
two activations (attention), and Gemm: the quantizer logs "Unsupported operator Gemm" and skips
it, so this pass first rewrites each Gemm it compresses as MatMul + Add (alpha and transB folded
into the weight). ORT 1.32 supports bits 2, 4 and 8; 2 is refused here (ACT cosine 0.787).
"""

# Measured on the robopt dev box (Intel Xeon with AMX, 2 vCPUs, noisy), onnxruntime 1.32.0.
# Zoo act-policy (ResNet-18 + 4+1-layer transformer, random Xavier weights), dynamo export.
# ORT CPU, 1 thread, ORT_ENABLE_ALL, medians of interleaved runs; cosine vs torch fp32 on 8
# held-out inputs. "mm": bytes of the compressed MatMul/Gemm weights over fp32; "non-bb": all
# weights but the ResNet backbone (17.6 MB fp32); "whole": the model (62.3 MB fp32).
#
#   model                               ORT ms   cos min    mm       non-bb   whole
#   fp32                                 30.5    1          1        1        1
#   int4 sym block 32 (default)          30.5    0.99293    0.156x   0.256x   0.790x
#   int4 sym block 64                    30.1    0.99444    0.141x
#   int4 sym block 128                   30.4    0.99500    0.134x   0.236x   0.784x
#   int4 asym block 32                   30.5    0.98610    0.164x
#   int4 sym block 128, accuracy_level 4 30.4    0.99351
#   int8 sym block 32                    35.9    0.99997    0.282x   0.367x   0.821x
#   int8 sym block 128, accuracy_level 4 30.0    0.99993    0.260x
#   int2 sym block 32                    39.3    0.78722    refused
#   OpenVINO f32 reading int4 block 32   27.6    0.99281    (OpenVINO fp32: 29.1)
#
# - Latency: the conv backbone is ~27 ms of ACT's 30 ms here; weight-only compression does not
#   speed up this batch-1 policy, it cuts the transformer's weight bytes. 8-bit weights are 18%
#   slower than fp32 with ORT's default compute and at parity with accuracy_level=4.
# - Block size: with these outlier-free random weights the per-weight error barely moves
#   (relative L2 0.065 at block 32, 0.067 at 128) and the cosine differences are noise. Trained
#   weights have outlier channels, where smaller blocks are what keeps INT4 usable, so the
#   default is 32 (onnxruntime-genai's CPU default; ORT's quantizer defaults to 128).
# - Symmetric beat asymmetric here (0.9931 vs 0.9861 at block 32), and it has no zero points.

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import BackendUnavailableError, PassError
from robopt_compile.passes.quantize import _nncf_common as common
from robopt_compile.passes.quantize.base import QuantizePass, Sample

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits' supported blocks
ACCURACY_LEVELS = (None, 0, 1, 2, 3, 4)  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


class OrtWeightOnlyPass(QuantizePass):
    """Compress constant MatMul/Gemm weights to ``MatMulNBits`` with ONNX Runtime's quantizer.

    Args:
        bits: 4 or 8.
        block_size: Weights per scale along K, one of ``BLOCK_SIZES``; 32 by default.
        symmetric: No zero points (measured more accurate here, and smaller).
        exclude_nodes: Node names to keep in float.
        accuracy_level: MatMulNBits' compute type for the activations (``None``: ORT's
            default; 4: int8, usually fastest on x86 with VNNI/AMX).
        calibration: Accepted for a uniform pass interface and not used (data-free).
    """

    name = "weight-only-ort"

    def __init__(
        self,
        bits: int = 4,
        block_size: int = 32,
        symmetric: bool = True,
        exclude_nodes: Sequence[str] = (),
        accuracy_level: int | None = None,
        calibration: Sequence[Sample] | None = None,
    ) -> None:
        super().__init__(calibration, exclude_nodes)
        if bits not in BITS:
            raise PassError(
                f"{self.name}: bits must be 4 or 8, not {bits!r} (ONNX Runtime also has 2 bits, "
                "which took ACT's held-out cosine to 0.79: refused)."
            )
        if block_size not in BLOCK_SIZES:
            raise PassError(
                f"{self.name}: block_size must be one of {BLOCK_SIZES} (MatMulNBits' block "
                f"sizes), not {block_size!r}."
            )
        if accuracy_level not in ACCURACY_LEVELS:
            raise PassError(
                f"{self.name}: accuracy_level must be None or 0-4, not {accuracy_level!r}."
            )
        self.bits = bits
        self.block_size = block_size
        self.symmetric = symmetric
        self.accuracy_level = accuracy_level

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
        targets = [
            n for n in live if common.matmul_weight_ok(nodes[n]) and n not in self.exclude_nodes
        ]
        if not targets:
            raise PassError(
                f"{self.name}: nothing to compress: the model has no MatMul/Gemm with a constant "
                "2-D weight on its data path outside exclude_nodes."
            )
        gemms = [n for n in targets if nodes[n].op_type == "Gemm"]
        t_before = sum(common.weight_nbytes(nodes[n]) for n in targets)
        common.gemm_to_matmul(prepared, set(gemms))
        wanted = set(targets)
        others = [n.name for n in prepared.graph if n.op_type == "MatMul" and n.name not in wanted]
        proto = common.to_proto(prepared, self.name)

        quantizer_cls = _import_quantizer()
        start = time.perf_counter()
        try:
            with common.quiet(_LOGGER):
                quantizer = quantizer_cls(
                    proto,
                    bits=self.bits,
                    block_size=self.block_size,
                    is_symmetric=self.symmetric,
                    accuracy_level=self.accuracy_level,
                    nodes_to_exclude=others,
                )
                quantizer.process()
        except Exception as exc:  # ORT's MatMulNBitsQuantizer raises any type (onnx, numpy)
            msg = " ".join(str(exc).split())[:200]
            raise PassError(
                f"onnxruntime {common.version('onnxruntime')} MatMulNBitsQuantizer failed: "
                f"{type(exc).__name__}: {msg}. Exclude the failing node with exclude_nodes."
            ) from exc
        seconds = time.perf_counter() - start
        out = common.from_proto(quantizer.model.model)
        common.check_io(model, out, self.name)

        done = {
            n.name.removesuffix(f"_Q{self.bits}")
            for n in out.graph
            if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"
        }
        missed = [n for n in targets if n not in done]
        if missed:
            raise PassError(
                f"{self.name}: onnxruntime left {len(missed)} MatMul weights uncompressed "
                f"({', '.join(missed[:5])}); add them to exclude_nodes to go on without them."
            )
        before, after = rir.weight_bytes(model), rir.weight_bytes(out)
        self.report = {
            "tool": "onnxruntime MatMulNBitsQuantizer (RTN)",
            "tool_version": common.version("onnxruntime"),
            "format": "com.microsoft::MatMulNBits",
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "accuracy_level": self.accuracy_level,
            "seconds": round(seconds, 3),
            "compressed_nodes": targets,
            "gemm_rewritten_as_matmul_add": gemms,
            "excluded_nodes": list(self.exclude_nodes),
            "constant_nodes": constant,
            "left_float": "Conv/ConvTranspose, activation x activation MatMul, non-2-D weights",
            "op_delta": common.op_delta(prepared, out),
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "compressed_weight_bytes_before": t_before,
            "compressed_weight_bytes_after": after - (before - t_before),
            "runtime": "ONNX Runtime (MatMulNBits) or OpenVINO (reads MatMulNBits)",
        }
        return ir.passes.PassResult(out, modified=True)


def _import_quantizer() -> Any:
    """Import the quantizer without letting it configure the root logger.

    The module calls ``logging.basicConfig(level=INFO)`` at import, which would make every
    library's INFO messages print for the rest of the process.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise BackendUnavailableError(
            f"weight-only-ort needs onnxruntime's quantization tools ({exc}): "
            "pip install onnxruntime."
        ) from exc
    finally:
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    return MatMulNBitsQuantizer
