"""What one pre-flight run knows: the request, an index of the ONNX graph, and its findings.

The rules (``check.py``, ``qdq.py``) are functions of a ``CheckContext``: they look nodes and
constants up here and report through ``add``. Subgraphs (If/Loop/Scan bodies) are indexed with
the main graph, because TensorRT's parser imports them too. ``onnx`` is imported only inside the
functions that need it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError
from robopt_compile.targets.tensorrt.support import ERROR, Finding


class CheckContext:
    """The request, the model's nodes, constants, producers, consumers and value types, and the
    findings so far (in the order the rules report them)."""

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
        self.nodes = list(walk(model.graph))
        self.names = {id(n): n.name or f"{n.op_type}#{i}" for i, n in enumerate(self.nodes)}
        self.constants: dict[str, Any] = {}  # value name -> TensorProto
        for g in graphs(model.graph):
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

    def add(self, node: str, op: str, reason: str, severity: str = ERROR, rule: str = "") -> None:
        self.findings.append(Finding(node, op, reason, severity, rule))

    def name(self, node: Any) -> str:
        return self.names[id(node)]

    def array(self, value: str) -> Any:
        """The constant ``value`` as a numpy array (external data is read on demand)."""
        import onnx
        from onnx import numpy_helper

        try:
            return numpy_helper.to_array(self.constants[value], self.base_dir)
        # OSError reading the file, onnx's ValidationError for a missing or escaping data file;
        # ValueError (data shorter than the tensor), TypeError or KeyError (an UNDEFINED or
        # unknown element type) for a malformed tensor
        except (OSError, ValueError, TypeError, KeyError, onnx.checker.ValidationError) as exc:
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
        # Broad on purpose: onnx's C++ shape inference raises InferenceError, ValidationError,
        # ValueError (models > 2 GB) or RuntimeError; any of them only skips the dtype rule.
        except Exception:
            inferred = self.model
        g = inferred.graph
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for name, t in self.constants.items():
            types[name] = t.data_type
        return types


def dtype_name(t: int) -> str:
    """An ONNX element type's name (``FLOAT16``), or its number if onnx does not know it."""
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(t)
    except ValueError:
        return str(t)


def graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                yield from graphs(a.g)
            for g in a.graphs:
                yield from graphs(g)


def walk(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and its subgraphs."""
    for g in graphs(graph):
        yield from g.node
