"""Simplify: constant folding, dead-node removal, shape-op simplification and fusions.

The work is delegated to a maintained library (``tool``); this pass adds what robopt needs
around it: model inputs and outputs kept, a numerical check with ONNX Runtime, an honest
``modified`` flag, a report, and one-line errors that name the next thing to try.
"""

# Why onnxscript is the default: measured on the robopt dev box (shared 2-core x86-64 VM), with
# torch 2.13.0 CPU, onnx 1.23.2, onnxruntime 1.32.0, onnxscript 0.7.2, onnxslim 0.1.98, onnxsim
# 0.8.1. Models: mlp (64->512x3->16, LayerNorm, GELU); resnet-bn (4 residual blocks with
# BatchNorm, 96x96 image + state); transformer (3 pre-norm layers, key-padding mask and in-graph
# causal mask, dynamic batch and sequence); the zoo's visuomotor-cnn (ResNet-18, 224x224) and
# act-policy (ACT). Exports: ts = TorchScript (dynamo=False, opset 17); dynamo = dynamo=True
# (its default optimize=True already runs onnxscript's optimizer); dyn-raw = dynamo=True,
# optimize=False. oxs = this pass's onnxscript tool. "tool s": best of 3 runs of the library
# alone. "ORT ms": 1 thread, ORT_ENABLE_ALL, batch 1, variants interleaved, min over 15 blocks
# of the block median (20-100 runs a block).
#
#                        nodes               | tool s            | ORT ms
# model       export      in  oxs slim  sim |  oxs  slim   sim |   none    oxs   slim    sim
# mlp         ts          37   25   25   29 | 0.03  0.05  0.02 |  0.083  0.083  0.083  0.081
# mlp         dyn-raw     14   13   13   14 | 0.01  0.02  0.01 |  0.085  0.080  0.083  0.083
# mlp         dynamo      13   13   13   13 | 0.01  0.02  0.02 |  0.085  0.083  0.085  0.086
# resnet-bn   ts          45   38   30   38 | 0.03  0.08  0.02 |   2.04   2.08   2.04   2.04
# resnet-bn   dyn-raw    112   31   59   63 | 0.10  0.11  0.03 |   3.74   2.02   3.72   3.70
# resnet-bn   dynamo      31   31   30   30 | 0.02  0.04  0.02 |   2.09   2.08   2.08   2.10
# transformer ts         273  152  140  182 | 0.25  0.21  0.06 |  0.302  0.269  0.271  0.311
# transformer dyn-raw    310  106  118  161 | 0.28  0.22  0.07 |  0.202  0.183  0.202  0.208
# transformer dynamo     106  106  106  150 | 0.06  0.10  0.04 |  0.187  0.189  0.184  0.210
# visuomotor  ts          60   60   60   60 | 0.06  0.20  0.25 |  24.83  24.94  24.89  24.87
# visuomotor  dyn-raw    190   60  114  115 | 0.21  0.37  0.15 |  36.50  24.60  36.63  36.14
# visuomotor  dynamo      60   60   60   60 | 0.04  0.18  0.10 |  24.82  24.90  24.84  24.74
# act-policy  ts         689  296  257  269 | 0.86  1.83  0.31 |  33.31  32.74  32.11  32.31
# act-policy  dyn-raw    730  264  378  369 | 1.00  1.64  0.36 |  43.56  31.32  43.54  43.75
# act-policy  dynamo     300  264  277  268 | 0.35  1.14  0.21 |  31.83  31.65  31.88  31.63
#
# - Numerics: every tool on every model kept input/output names, dtypes, order and dynamic dims
#   and agreed with the input model at batch 1 and 2: worst max_abs 2.9e-6 (ACT), cosine
#   >= 1 - 2e-13 (ORT with graph optimizations off, as this pass checks).
# - dyn-raw exports put CastLike/Expand in front of every BatchNormalization. Only onnxscript
#   folds them; ORT has no CPU kernel to fold CastLike, so after onnxslim or onnxsim BN stays
#   unfused: onnxscript's output has 28-46% lower latency (ACT 31.3 vs 43.5 ms).
# - ts exports: onnxslim leaves the fewest nodes (ACT 257 vs 296), but ORT's own optimizer
#   closes the gap: latency is equal within 3%. Whole-model shape inference with data
#   propagation before onnxscript's optimizer is what folds the Shape->Gather chains on partly
#   static shapes (ACT ts: 446 nodes without it, 296 with it).
# - onnxsim 0.8.1 rewrites MatMul+Add as Reshape+Gemm+Reshape for ORT CPU: more nodes on the
#   transformer (dynamo 106 -> 150) and 11-16% slower than onnxscript there. It runs fastest.
# - Already-optimized dynamo exports gain nothing measurable from any tool. With ORT's graph
#   optimizations off (a runtime with a weak optimizer) simplifying matters more: transformer
#   dyn-raw 0.65 ms -> 0.18 (oxs), 0.19 (slim), 0.21 (sim).
# - onnxscript works on the onnx_ir model itself: no protobuf round trip, no 2 GB limit,
#   external weights stay on disk; it is the optimizer the dynamo exporter runs, and it never
#   added nodes. onnxslim and onnxsim need one ModelProto under 2 GB (PROTO_WEIGHT_LIMIT).
# Default: onnxscript. Use onnxslim for the fewest nodes on TorchScript exports.

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from robopt_compile import ir as rir
from robopt_compile.errors import (
    BackendUnavailableError,
    CheckFailedError,
    PassError,
    UnknownNameError,
)

DEFAULT_TOOL = "onnxscript"
# How a user picks the tool (robopt-compile's option), named in every error message.
CLI_FLAG = "--simplify"

# onnxslim and onnxsim take one ModelProto; protobuf cannot serialize more than 2 GiB, so models
# whose weights come near that are refused up front instead of failing deep inside the tool.
PROTO_WEIGHT_LIMIT = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Tool:
    """A simplifier library: its module, its pip package and how to run it."""

    module: str
    package: str
    run: Callable[[Any, ir.Model], ir.Model]  # (imported module, model) -> new model
    needs_proto: bool


def _run_onnxscript(mod: Any, model: ir.Model) -> ir.Model:
    # Whole-model shape inference with data propagation first: it lets the optimizer fold
    # Shape->Gather->Concat chains on partly static shapes (TorchScript ACT: 446 -> 296 nodes).
    # It strips large initializers before serializing, so it has no 2 GB limit.
    from onnx_ir.passes.common import ShapeInferencePass

    out = model.clone()
    ShapeInferencePass(data_prop=True)(out)
    mod.optimize(out)  # in place on the clone
    return out


def _run_onnxslim(mod: Any, model: ir.Model) -> ir.Model:
    proto = mod.slim(_to_proto(model))
    if proto is None:
        raise RuntimeError("onnxslim returned no model")
    return ir.serde.deserialize_model(proto)


def _run_onnxsim(mod: Any, model: ir.Model) -> ir.Model:
    proto, ok = mod.simplify(_to_proto(model))  # check_n=0: robopt checks numerics itself
    if not ok:
        raise RuntimeError("onnxsim reported that its own check failed")
    return ir.serde.deserialize_model(proto)


def _to_proto(model: ir.Model) -> Any:
    """Serialize with every weight inline: a proto tool cannot resolve external data paths."""
    copy = model.clone()
    ir.external_data.load_to_model(copy)
    return ir.serde.serialize_model(copy)


TOOLS: dict[str, Tool | None] = {
    "onnxscript": Tool("onnxscript.optimizer", "onnxscript", _run_onnxscript, False),
    "onnxslim": Tool("onnxslim", "onnxslim", _run_onnxslim, True),
    "onnxsim": Tool("onnxsim", "onnxsim", _run_onnxsim, True),
    "none": None,
}


class SimplifyPass(ir.passes.FunctionalPass):
    """Simplify the graph with ``tool`` and prove the result computes the same outputs.

    Args:
        tool: ``onnxscript`` (default), ``onnxslim``, ``onnxsim`` or ``none``.
        check: Run the model before and after with ONNX Runtime on random inputs and raise
            ``CheckFailedError`` if any output moved beyond the tolerances.
        rtol: Relative tolerance of the element-wise check.
        atol: Absolute tolerance of the element-wise check.
        min_cosine: Smallest cosine similarity accepted per output.
        seed: Seed of the random check inputs.
    """

    name = "simplify"

    def __init__(
        self,
        tool: str = DEFAULT_TOOL,
        check: bool = True,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        min_cosine: float = 0.99999,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if tool not in TOOLS:
            raise UnknownNameError("simplify tool", tool, list(TOOLS))
        self.tool = tool
        self.check = check
        self.rtol = rtol
        self.atol = atol
        self.min_cosine = min_cosine
        self.seed = seed
        self.report: dict[str, Any] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        start = time.perf_counter()
        out = self._simplify(model)
        seconds = time.perf_counter() - start
        _check_io(model, out, self._hint())
        modified = not _same_graph(model, out)
        if not modified:
            out = model.clone()  # the tool may have touched metadata; hand back the input as is
        before, after = _op_histogram(model), _op_histogram(out)
        self.report = {
            "tool": self.tool,
            "tool_version": self._version(),
            "seconds": round(seconds, 4),
            "modified": modified,
            "nodes_before": len(model.graph),
            "nodes_after": len(out.graph),
            "initializers_before": len(model.graph.initializers),
            "initializers_after": len(out.graph.initializers),
            "op_delta": {
                op: after[op] - before[op]
                for op in sorted(before.keys() | after.keys())
                if after[op] != before[op]
            },
            "parity": None,
        }
        if self.check and modified:
            self._parity(model, out)
        return ir.passes.PassResult(out, modified)

    def _hint(self) -> str:
        other = next(t for t in TOOLS if t not in (self.tool, "none"))
        return f"try {CLI_FLAG} {other} or {CLI_FLAG} none"

    def _version(self) -> str | None:
        tool = TOOLS[self.tool]
        if tool is None:
            return None
        try:
            return importlib.metadata.version(tool.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def _simplify(self, model: ir.Model) -> ir.Model:
        tool = TOOLS[self.tool]
        if tool is None:
            return model.clone()
        try:
            mod = importlib.import_module(tool.module)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"simplify tool {self.tool!r} is not installed ({exc}): "
                f"pip install {tool.package}, or {self._hint()}."
            ) from exc
        if tool.needs_proto and (size := rir.weight_bytes(model)) > PROTO_WEIGHT_LIMIT:
            raise PassError(
                f"simplify with {self.tool} needs the model as one protobuf, which is limited to "
                f"2 GB, and this model has {size / 1e9:.2f} GB of weights; use {CLI_FLAG} "
                "onnxscript (works on the in-memory IR, no size limit) or none."
            )
        try:
            return tool.run(mod, model)
        except Exception as exc:  # onnxslim, onnxsim and onnxscript's rewriters raise any type
            msg = " ".join(str(exc).split())[:200]
            raise PassError(
                f"simplify with {self.tool} failed: {type(exc).__name__}: {msg}; {self._hint()}."
            ) from exc

    def _parity(self, before: ir.Model, after: ir.Model) -> None:
        """Compare ORT outputs at batch 1, and at batch 2 too when the model has symbolic dims.

        Batch 2 catches a rewrite that baked a dynamic dim into a constant; it is skipped (and
        said so) when the input model itself cannot run at batch 2. The figures go into
        ``report["parity"]`` before any failure is raised, so a failed compile still shows them.
        """
        from robopt_compile.numerics import compare, random_feeds, run_onnx, worst

        specs = rir.input_specs(before)
        dynamic = any(isinstance(d, str) for s in specs for d in s.shape)
        batches = (1, 2) if dynamic else (1,)
        parity: dict[str, Any] = {
            "max_abs": 0.0,
            "max_rel": 0.0,
            "cosine": 1.0,
            "inputs": f"random, seed {self.seed}, batch {' and '.join(map(str, batches))}",
            "tolerance": {"cosine_min": self.min_cosine, "rtol": self.rtol, "atol": self.atol},
        }
        self.report["parity"] = parity
        for batch in batches:
            try:
                feeds = random_feeds(specs, seed=self.seed, batch=batch)
                ref = run_onnx(before, feeds, optimization="disable")
            except Exception as exc:  # onnxruntime's errors share no base but Exception
                if batch == 1:
                    raise PassError(
                        "cannot check simplify: ONNX Runtime cannot run the input model on "
                        "random inputs "
                        f"({type(exc).__name__}: {str(exc)[:160]}); fix the model, or run "
                        "simplify with check=False."
                    ) from exc
                from onnxruntime.capi import onnxruntime_pybind11_state as ort

                if not isinstance(exc, (ort.InvalidArgument, ort.Fail, ort.RuntimeException)):
                    raise  # only ORT refusing batch 2 (a hard-coded batch dim) skips it
                parity[f"batch{batch}"] = {"skipped": "the input model fails at this batch"}
                continue
            try:
                got = run_onnx(after, feeds, optimization="disable")
            except Exception as exc:  # onnxruntime's errors share no base but Exception
                raise CheckFailedError(
                    f"simplify with {self.tool} made a model ONNX Runtime cannot run at batch "
                    f"{batch} ({type(exc).__name__}: {str(exc)[:160]}); {self._hint()}."
                ) from exc
            cmp = compare(ref, got, rtol=self.rtol, atol=self.atol)
            w = worst(cmp)
            parity[f"batch{batch}"] = {"worst": w, "outputs": cmp}
            parity["max_abs"] = max(parity["max_abs"], w["max_abs"])
            parity["max_rel"] = max(parity["max_rel"], w["max_rel"])
            parity["cosine"] = min(parity["cosine"], w["cosine"])
            for name, c in cmp.items():
                if c["cosine"] < self.min_cosine or not c["allclose"]:
                    raise CheckFailedError(
                        f"simplify with {self.tool} changed output {name!r} at batch {batch}: "
                        f"cosine {c['cosine']:.7f} (min {self.min_cosine}), max_abs "
                        f"{c['max_abs']:.3g}, max_rel {c['max_rel']:.3g} (rtol {self.rtol}, "
                        f"atol {self.atol}), {c.get('nonfinite_mismatch', 0)} NaN/inf "
                        f"mismatches; {self._hint()}."
                    )


def _real_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _check_io(before: ir.Model, after: ir.Model, hint: str) -> None:
    """Raise ``PassError`` unless inputs and outputs keep names, order, dtypes and dynamism.

    A dim may be refined from symbolic to a number only on outputs and only if the symbol is
    not an input dim (e.g. TorchScript's ``Addactions_dim_1`` becoming 50); ``batch`` stays.
    """
    input_syms = {
        d.value
        for v in _real_inputs(before)
        for d in (v.shape or ())
        if not isinstance(d, int) and d.value is not None
    }
    for kind, old, new in (
        ("inputs", _real_inputs(before), _real_inputs(after)),
        ("outputs", list(before.graph.outputs), list(after.graph.outputs)),
    ):
        if [v.name for v in old] != [v.name for v in new]:
            raise PassError(
                f"simplify changed the model {kind} from {[v.name for v in old]} to "
                f"{[v.name for v in new]}; {hint}."
            )
        for a, b in zip(old, new, strict=True):
            problem = None
            if a.dtype is not None and a.dtype != b.dtype:
                problem = f"dtype {a.dtype} -> {b.dtype}"
            elif a.shape is not None and b.shape is None and kind == "inputs":
                problem = "lost its shape"
            elif a.shape is not None and b.shape is not None:
                if a.shape.rank() != b.shape.rank():
                    problem = f"shape {a.shape} -> {b.shape}"
                for da, db in zip(a.shape, b.shape, strict=False):
                    if isinstance(da, int):
                        bad = da != db
                    elif kind == "inputs":
                        bad = isinstance(db, int)
                    else:
                        bad = isinstance(db, int) and da.value in input_syms
                    if bad:
                        problem = f"shape {a.shape} -> {b.shape}"
            if problem:
                raise PassError(f"simplify changed {kind[:-1]} {a.name!r}: {problem}; {hint}.")


def _fingerprint(model: ir.Model) -> tuple[Hashable, list[Any]]:
    """Structure of the graph free of names and node order, plus its tensors in a canonical order.

    Tools rename values and nodes and re-sort nodes freely. Each node gets a Merkle-style key
    (op, attributes, keys of its inputs); two graphs compute the same thing if their multisets
    of node keys and their output keys match and the tensors at matching places hold the same
    bytes. Tensors enter keys by dtype and shape only, so bytes are read only when needed.
    """
    keys: dict[ir.Value, int] = {v: hash(("in", i)) for i, v in enumerate(_real_inputs(model))}

    def tensor_key(t: Any, found: list[Any]) -> int:
        found.append(t)
        return hash(("t", t.dtype, tuple(t.shape)))

    def ref(v: ir.Value | None, found: list[Any]) -> int:
        if v is None:
            return 0
        if v in keys:
            return keys[v]
        if v.is_initializer() and v.const_value is not None:
            return tensor_key(v.const_value, found)
        return hash(("?", v.name))  # a subgraph input or an outer-scope name

    def attr_key(a: ir.Attr, found: list[Any]) -> Hashable:
        if a.type == ir.AttributeType.TENSOR:
            return tensor_key(a.value, found)
        if a.type == ir.AttributeType.TENSORS:
            return tuple(tensor_key(t, found) for t in a.value)
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return "graph"  # its nodes are walked by the recursive iterator
        return repr(a.value)

    nodes: list[tuple[int, list[Any]]] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        found: list[Any] = []
        ins = tuple(ref(v, found) for v in node.inputs)
        attrs = tuple(sorted((n, attr_key(a, found)) for n, a in node.attributes.items()))
        key = hash((node.domain or "", node.op_type, node.overload, ins, attrs, len(node.outputs)))
        for j, out in enumerate(node.outputs):
            keys[out] = hash((key, j))
        nodes.append((key, found))
    out_tensors: list[Any] = []
    outputs = tuple(ref(v, out_tensors) for v in model.graph.outputs)
    nodes.sort(key=lambda kt: kt[0])
    structure = (tuple(k for k, _ in nodes), outputs)
    return structure, [t for _, found in nodes for t in found] + out_tensors


def _same_graph(a: ir.Model, b: ir.Model) -> bool:
    """True if ``b`` computes what ``a`` does with the same nodes and weights (names aside).

    A false "different" only costs a numerical check; a false "same" hands back ``a`` itself.
    """
    (sa, ta), (sb, tb) = _fingerprint(a), _fingerprint(b)
    if sa != sb:
        return False
    # Same structure: compare the bytes only now (cheap when the tool shared tensor objects).
    return all(x is y or x.tobytes() == y.tobytes() for x, y in zip(ta, tb, strict=True))


def _op_histogram(model: ir.Model) -> Counter[str]:
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
