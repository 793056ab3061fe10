"""What the ONNX Runtime quantizer passes share: names, graph facts, calibration and the run.

``onnxruntime.quantization`` works on files, so every pass goes onnx_ir -> temporary folder
(weights as external data, so models past protobuf's 2 GB limit work) -> quantizer -> onnx_ir
with every weight read back into memory before the folder goes away. Its failures and its log
noise stay here; a pass sees a ``PassError`` with one line it can show the user.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import PassError
from robopt_compile.passes.quantize.base import (  # noqa: F401 - shared helpers
    check_exclude,
    input_dependent,
    unique_node_names,
)

# "minmax" | "entropy" | "percentile" -> onnxruntime.quantization.CalibrationMethod member.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

NORM_OPS = frozenset({
    "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "GroupNormalization",
    "InstanceNormalization", "BatchNormalization", "MeanVarianceNormalization",
    "LpNormalization",
})  # fmt: skip
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
# Ops that pass a tensor on without changing what its values mean: a mask add that goes
# through a Reshape before the Softmax is still a mask add.
FORWARDING_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Expand",
    "Slice", "Concat", "Split", "Dropout",
})  # fmt: skip
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16})
# Models with more weight bytes than this are written by the quantizer with external data.
EXTERNAL_DATA_LIMIT = 1 << 30
# Entropy calibration: histogram bins over [-max|x|, max|x|], and the levels each candidate
# window is quantized to. quantize_static cannot set them, and with its defaults (128, 128)
# the KL search has one candidate, the full range: its "entropy" silently equals MinMax.
# 2048/256 is 128 levels a side on 1024 bins a side: the int8 resolution of TensorRT's entropy
# calibrator (2048 bins of |x|, 128 levels) at half its threshold resolution.
ENTROPY_BINS = (2048, 256)


prepare = unique_node_names


def nodes_by_name(model: ir.Model) -> dict[str, ir.Node]:
    return {n.name: n for n in model.graph if n.name}


def is_float(value: ir.Value | None) -> bool:
    """True if ``value`` is a float tensor (or of unknown type, which the quantizer checks)."""
    return value is not None and (value.dtype is None or value.dtype in FLOAT_TYPES)


def is_weight(value: ir.Value | None) -> bool:
    """An initializer or the output of a Constant node: what per-channel quantization needs."""
    if value is None:
        return False
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def reaches(
    node: ir.Node, targets: frozenset[str], via: frozenset[str] = FORWARDING_OPS
) -> ir.Node | None:
    """The first node of an op in ``targets`` that consumes ``node``'s output, directly or
    through ops in ``via``; ``None`` if there is none."""
    stack = list(node.outputs)
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        for user in value.consumers():
            if user.op_type in targets:
                return user
            if user.op_type in via and id(user) not in seen:
                seen.add(id(user))
                stack.extend(user.outputs)
    return None


def fed_by(value: ir.Value | None, targets: frozenset[str]) -> ir.Node | None:
    """The node of an op in ``targets`` that produces ``value``, looking back through
    ``FORWARDING_OPS`` (first input only); ``None`` if there is none."""
    while value is not None:
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type in targets:
            return producer
        if producer.op_type not in FORWARDING_OPS or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


def feeds_decomposed_norm(node: ir.Node) -> str | None:
    """Name the normalisation written as primitives that ``node``'s output feeds, if any.

    LayerNorm: ``x -> ReduceMean -> Sub(x, mean)``; RMSNorm: ``x -> Pow/Mul(x, x) ->
    ReduceMean``. Exporters emit these for norms without a fused ONNX op.
    """
    for x in node.outputs:
        users = x.consumers()
        means = [u for u in users if u.op_type == "ReduceMean"]
        for u in users:
            if u.op_type == "Sub" and any(
                u.inputs[1] is m.outputs[0] for m in means if len(u.inputs) > 1
            ):
                return "LayerNorm (ReduceMean/Sub)"
            squares = u.op_type == "Pow" or (u.op_type == "Mul" and u.inputs[0] is u.inputs[-1])
            if squares and any(c.op_type == "ReduceMean" for c in u.outputs[0].consumers()):
                return "RMSNorm (square/ReduceMean)"
    return None


def weight_bytes(model: ir.Model) -> int:
    return rir.weight_bytes(model)


def op_counts(model: ir.Model, ops: Iterable[str]) -> dict[str, int]:
    wanted = set(ops)
    counts = dict.fromkeys(sorted(wanted), 0)
    for node in model.graph:
        if node.op_type in wanted:
            counts[node.op_type] += 1
    return counts


def dq_fed_nodes(model: ir.Model) -> set[str]:
    """Names of the non-Q/DQ nodes with at least one input produced by a DequantizeLinear."""
    out = set()
    for node in model.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is not None and p.op_type == "DequantizeLinear":
                out.add(node.name)
                break
    return out


def drop_input_qdq(
    model: ir.Model,
    node: ir.Node,
    indices: Iterable[int] | None = None,
    shared_only: bool = False,
) -> int:
    """Feed ``node``'s inputs from before their activation Q -> DQ pair; return how many.

    ORT's quantizer points every consumer of a tensor it quantizes at the DQ output, float
    nodes included; this gives a node that should stay float its float input back. Pairs left
    without users are removed with their scale and zero point. ``shared_only`` leaves a pair
    that feeds only ``node``: it may be what lets ORT fuse the producer into an int8 kernel.
    """
    changed = 0
    for i in range(len(node.inputs)) if indices is None else indices:
        dq = node.inputs[i].producer() if node.inputs[i] is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        if shared_only and all(u.node is node for u in dq.outputs[0].uses()):
            continue
        node.replace_input_with(i, q.inputs[0])
        changed += 1
        for pair_node in (dq, q):
            if pair_node.outputs[0].uses() or pair_node.outputs[0].is_graph_output():
                break
            params = [v for v in pair_node.inputs[1:] if v is not None]
            model.graph.remove(pair_node, safe=True)
            for v in params:
                if v.is_initializer() and not v.uses() and v.name in model.graph.initializers:
                    del model.graph.initializers[v.name]
    return changed


class SampleReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feed dicts.

    Keeps only the model's inputs from each sample (extra keys are ignored, as in
    ``numerics.run_onnx``) and can be rewound, which the entropy and percentile methods need.
    """

    def __init__(self, samples: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]):
        self._samples = [{k: np.asarray(s[k]) for k in input_names} for s in samples]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._samples):
            return None
        self._i += 1
        return self._samples[self._i - 1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (s := self.get_next()) is not None:
            yield s

    def __len__(self) -> int:
        return len(self._samples)

    def rewind(self) -> None:
        self._i = 0


def calibration_reader(
    samples: Sequence[dict[str, np.ndarray]], model: ir.Model, pass_name: str
) -> SampleReader:
    """Check the calibration samples against the model inputs and wrap them for ORT."""
    if not samples:
        raise PassError(
            f"{pass_name} needs calibration samples and got none: give --calibration with "
            "samples of the model inputs (or use int8-dynamic, which needs none)."
        )
    names = [v.name for v in model.graph.inputs if not v.is_initializer() and v.name]
    for i, sample in enumerate(samples):
        missing = [n for n in names if n not in sample]
        if missing:
            raise PassError(
                f"{pass_name}: calibration sample {i} lacks model input(s) "
                f"{', '.join(map(repr, missing))} (it has {', '.join(map(repr, sample))}); "
                "give every input in every sample."
            )
    return SampleReader(samples, names)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's root-logger warnings and the calibrators' prints."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _entropy_ranges(src: Path, big: bool, kwargs: dict[str, Any]) -> Path:
    """Calibrate by entropy with ``ENTROPY_BINS``; the ranges go to a cache file that
    ``quantize_static`` reads instead of calibrating itself."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = kwargs.get("op_types_to_quantize") or sorted({*QDQRegistry, *QLinearOpsRegistry})
    bins, quantized_bins = ENTROPY_BINS
    symmetric = bool((kwargs.get("extra_options") or {}).get("ActivationSymmetric", False))
    calibrator = create_calibrator(
        src,
        op_types,
        augmented_model_path=str(src.with_name("augmented.onnx")),
        calibrate_method=CalibrationMethod.Entropy,
        use_external_data_format=big,
        extra_options={"num_bins": bins, "num_quantized_bins": quantized_bins,
                       "symmetric": symmetric},
    )  # fmt: skip
    reader = kwargs["calibration_data_reader"]
    calibrator.collect_data(reader)
    reader.rewind()
    path = src.with_name("entropy_ranges.json")
    save_tensors_data(calibrator.compute_data(), path)
    return path


def run_quantizer(
    model: ir.Model,
    quantize: Callable[..., Any],
    pass_name: str,
    hint: str,
    **kwargs: Any,
) -> ir.Model:
    """Run ``quantize(input_path, output_path, **kwargs)`` on ``model`` in a temporary folder.

    The model goes in with its weights as external data and comes back with every weight in
    memory. Any exception of the quantizer becomes a one-line ``PassError`` ending in ``hint``.
    """
    big = weight_bytes(model) >= EXTERNAL_DATA_LIMIT
    with tempfile.TemporaryDirectory(prefix="robopt-quant-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        ir.save(model, src, external_data="in.onnx.data")
        try:
            with _quiet():
                if getattr(kwargs.get("calibrate_method"), "name", None) == "Entropy":
                    kwargs["calibration_cache_path"] = _entropy_ranges(src, big, kwargs)
                quantize(str(src), str(dst), use_external_data_format=big, **kwargs)
            out = ir.load(dst)
            ir.external_data.load_to_model(out)
        except Exception as exc:  # ORT's quantizers raise any type (pybind, onnx, numpy, own)
            msg = " ".join(str(exc).split())[:240]
            raise PassError(
                f"{pass_name}: ONNX Runtime {ort_version()}'s {quantize.__name__} failed "
                f"({type(exc).__name__}: {msg}); {hint}."
            ) from exc
    return out
