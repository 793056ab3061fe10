"""Graph facts and tool plumbing shared by the NNCF, weight-only and float16 passes.

NNCF's ONNX backend, onnxruntime's ``MatMulNBitsQuantizer`` and its fp16 converter all take an
``onnx.ModelProto`` and address nodes by name, so every pass here works on a *prepared* copy:
unnamed main-graph nodes get the ``<op_type>_<index>`` names robopt's reports use, and weights
held in Constant nodes become initializers (the tools only recognise initializers as weights).

A weight node whose activation input does not depend on any model input (ACT's decoder query
path, a latent projected from zeros) computes a constant: runtimes fold it at load time, so
compressing it only adds error. NNCF leaves such nodes alone on its own; the weight-only passes
here skip them too and report them as ``constant_nodes``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
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

# Ops whose second input is a weight matrix the weight-only quantizers can compress.
WEIGHT_OPS = ("MatMul", "Gemm")
# protobuf cannot serialize more than 2 GiB, and every tool here needs one ModelProto.
PROTO_LIMIT = 2_000_000_000


def prepare(model: ir.Model) -> ir.Model:
    """A copy with unique non-empty node names and Constant-node weights as initializers."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    out = unique_node_names(model)
    LiftConstantsToInitializersPass()(out)
    return out


def constant_weight(node: ir.Node) -> ir.Value | None:
    """The weight input (B) of a MatMul/Gemm if it is an initializer, else None."""
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    b = node.inputs[1]
    return b if b.is_initializer() and b.const_value is not None else None


def weight_nodes(
    model: ir.Model, op_types: Sequence[str] = WEIGHT_OPS
) -> tuple[list[str], list[str]]:
    """Names of ``op_types`` nodes with a constant weight: (on the data path, constant-only).

    ``model`` must be prepared (named nodes, lifted constants).
    """
    dep = input_dependent(model)
    live, const = [], []
    for node in model.graph:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        if constant_weight(node) is None:
            continue
        (live if node.inputs[0] in dep else const).append(node.name)
    return live, const


def weight_nbytes(node: ir.Node) -> int:
    """Bytes of a node's constant weight (0 if it has none)."""
    b = constant_weight(node)
    return b.const_value.nbytes if b is not None and b.const_value is not None else 0


def matmul_weight_ok(node: ir.Node) -> bool:
    """True if a MatMul/Gemm weight can be block-quantized: 2-D, and Gemm's A not transposed."""
    b = constant_weight(node)
    if b is None or b.const_value is None or len(b.const_value.shape) != 2:
        return False
    return node.op_type == "MatMul" or node.attributes.get_int("transA", 0) == 0


def gemm_to_matmul(model: ir.Model, names: set[str]) -> None:
    """Rewrite the named Gemm nodes as MatMul (+ Add of C), in place.

    The weight quantizers only take MatMul (onnxruntime logs "Unsupported operator Gemm" and
    skips it; NNCF's MatMulNBits path ignores alpha/beta). ``alpha`` and ``transB`` are folded
    into a new weight and ``beta`` into a constant C. The MatMul keeps the Gemm's name, so
    exclude lists and reports name the same node. Callers pass only ``matmul_weight_ok`` nodes.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    graph = model.graph
    for node in list(graph):
        if node.op_type != "Gemm" or node.name not in names:
            continue
        a, b = node.inputs[0], node.inputs[1]
        assert a is not None and b is not None and b.const_value is not None
        c = node.inputs[2] if len(node.inputs) > 2 else None
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        w = b.const_value.numpy()
        if node.attributes.get_int("transB", 0):
            w = w.T
        if alpha != 1.0:
            w = w * np.asarray(alpha, dtype=w.dtype)
        weight = _initializer(graph, f"{node.name}_weight", np.ascontiguousarray(w))
        new_nodes = [ir.node("MatMul", [a, weight], name=node.name)]
        result = new_nodes[0].outputs[0]
        if c is not None and beta != 0.0:
            if beta != 1.0 and c.const_value is not None:
                scaled = c.const_value.numpy() * np.asarray(beta, dtype=w.dtype)
                c = _initializer(graph, f"{node.name}_bias_value", scaled)
            elif beta != 1.0:
                factor = _initializer(graph, f"{node.name}_beta", np.asarray(beta, w.dtype))
                new_nodes.append(ir.node("Mul", [c, factor], name=f"{node.name}_beta"))
                c = new_nodes[-1].outputs[0]
            new_nodes.append(ir.node("Add", [result, c], name=f"{node.name}_bias"))
            result = new_nodes[-1].outputs[0]
        old = node.outputs[0]
        result.shape, result.type = old.shape, old.type
        graph.insert_before(node, new_nodes)
        if old.is_graph_output():
            name = old.name
            old.replace_all_uses_with(result, replace_graph_outputs=True)
            old.name, result.name = f"{name}_gemm", name
        else:
            old.replace_all_uses_with(result)
        graph.remove(node, safe=True)
    RemoveUnusedNodesPass()(model)  # and the Gemm weights nothing reads any more


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype),
                     const_value=tensor)  # fmt: skip
    graph.register_initializer(value)
    return value


def fold_constant_matmuls(model: ir.Model) -> list[str]:
    """Replace MatMul/Gemm nodes whose inputs are all initializers by their result, in place.

    NNCF 3.4's SmoothQuant (``model_type="transformer"``) asserts on a MatMul with two
    initializer inputs, and no runtime computes one at inference anyway. Returns their names.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    folded = []
    for node in list(model.graph):
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        values = [v for v in node.inputs if v is not None]
        if not values or not all(v.is_initializer() and v.const_value is not None for v in values):
            continue
        arrays = [v.const_value.numpy() for v in values]  # type: ignore[union-attr]
        if node.op_type == "MatMul":
            result = np.matmul(arrays[0], arrays[1])
        else:
            a, b = arrays[0], arrays[1]
            a = a.T if node.attributes.get_int("transA", 0) else a
            b = b.T if node.attributes.get_int("transB", 0) else b
            result = node.attributes.get_float("alpha", 1.0) * (a @ b)
            if len(arrays) > 2:
                result = result + node.attributes.get_float("beta", 1.0) * arrays[2]
        old = node.outputs[0]
        if old.is_graph_output():
            continue
        value = _initializer(model.graph, f"{node.name}_folded", result.astype(arrays[0].dtype))
        old.replace_all_uses_with(value)
        model.graph.remove(node, safe=True)
        folded.append(node.name)
    if folded:
        RemoveUnusedNodesPass()(model)
    return folded


def check_calibration(
    model: ir.Model, samples: Sequence[dict[str, Any]], pass_name: str
) -> list[dict[str, np.ndarray]]:
    """The samples as feeds of exactly the model's inputs; ``PassError`` on what cannot run."""
    if not samples:
        raise PassError(
            f"{pass_name} needs calibration data and got none: pass --calibration DIR|FILE.npz|"
            "module:iterator (samples from the calibration split, never the held-out one)."
        )
    specs = rir.input_specs(model)
    feeds = []
    for i, sample in enumerate(samples):
        feed = {}
        for spec in specs:
            if spec.name not in sample:
                raise PassError(
                    f"{pass_name}: calibration sample {i} has no input {spec.name!r} "
                    f"(it has {sorted(sample)}); every sample needs every model input."
                )
            arr = np.asarray(sample[spec.name])
            if str(arr.dtype) != spec.dtype:
                raise PassError(
                    f"{pass_name}: calibration sample {i} input {spec.name!r} is {arr.dtype}, "
                    f"the model takes {spec.dtype}; convert the calibration data."
                )
            dims = zip(arr.shape, spec.shape, strict=False)
            if arr.ndim != len(spec.shape) or any(isinstance(d, int) and a != d for a, d in dims):
                raise PassError(
                    f"{pass_name}: calibration sample {i} input {spec.name!r} has shape "
                    f"{list(arr.shape)}, the model takes {list(spec.shape)}."
                )
            feed[spec.name] = np.ascontiguousarray(arr)
        feeds.append(feed)
    return feeds


def to_proto(model: ir.Model, pass_name: str) -> Any:
    """One ``onnx.ModelProto`` with every weight inline (what the tools take)."""
    size = rir.weight_bytes(model)
    if size > PROTO_LIMIT:
        raise PassError(
            f"{pass_name} hands the model to its tool as one protobuf, which is limited to 2 GB, "
            f"and this model has {size / 1e9:.2f} GB of weights."
        )
    copy = model.clone()
    ir.external_data.load_to_model(copy)
    return ir.serde.serialize_model(copy)


def from_proto(proto: Any) -> ir.Model:
    """The tool's result as an ``ir.Model``, topologically sorted (some tools append nodes)."""
    from onnx_ir.passes.common import TopologicalSortPass

    model = ir.serde.deserialize_model(proto)
    TopologicalSortPass()(model)
    return model


def check_io(before: ir.Model, after: ir.Model, pass_name: str) -> None:
    """Raise ``PassError`` unless inputs and outputs keep their names, order and dtypes."""
    for kind, a, b in (
        ("inputs", rir.input_specs(before), rir.input_specs(after)),
        ("outputs", rir.output_specs(before), rir.output_specs(after)),
    ):
        old = [(s.name, s.dtype) for s in a]
        new = [(s.name, s.dtype) for s in b]
        if old != new:
            raise PassError(f"{pass_name} changed the model's {kind}: {old} -> {new} (a bug).")


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def op_delta(before: ir.Model, after: ir.Model) -> dict[str, int]:
    """How many nodes of each op type the pass added (+) or removed (-)."""

    def hist(m: ir.Model) -> Counter[str]:
        return Counter(
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            for n in m.graph
        )

    a, b = hist(before), hist(after)
    return {op: b[op] - a[op] for op in sorted(a.keys() | b.keys()) if a[op] != b[op]}


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence the tools' INFO logging, warnings and NNCF's progress bars for one call.

    A logger the user set to DEBUG stays as it is: that is how a pass is debugged.
    """
    saved = {}
    for name in loggers:
        log = logging.getLogger(name)
        if not log.isEnabledFor(logging.DEBUG):
            saved[name] = log.level
            log.setLevel(logging.ERROR)
    track = None
    if "nncf" in saved:
        from nncf.common.logging import track_progress

        track = track_progress.track
        original_init = track.__init__

        def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            original_init(self, *args, **kwargs)

        track.__init__ = silent_init
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if track is not None:
            track.__init__ = original_init
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
