"""Which backends can run every operator of the model, and why not where they cannot.

Each backend is asked in its own terms, with nothing hand-listed here:
    * ONNX Runtime: its registered CPU kernels (domain, op, version range, type constraints),
      matched against the op version the model's opset selects and the node's dtypes. ONNX
      function ops without a kernel count as supported (ORT expands their function body), and
      float16 nodes with only a float kernel run through Casts ORT inserts.
    * OpenVINO: the ONNX frontend converts the model; ops left unconverted
      (``convert_partially`` keeps them as framework nodes) are unsupported, with the reason
      from the frontend's conversion report. A converted model is then asked
      ``Core.query_model(model, device)`` for ops the device plugin cannot run.
Runtimes are imported inside the checks; a missing one is reported as unavailable.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import UnknownNameError
from robopt_compile.passes.analysis.flops import iter_named_nodes
from robopt_compile.passes.analysis.op_histogram import norm_domain, op_key
from robopt_compile.passes.analysis.shapes import StaticShapes, infer_static_shapes
from robopt_compile.passes.base import AnalysisPass
from robopt_compile.targets.registry import TARGETS

_MAX_REASON = 300


def norm_opsets(model: ir.Model) -> dict[str, int]:
    """Opset imports with ``ai.onnx`` spelled ``""``."""
    return {norm_domain(d): v for d, v in model.opset_imports.items()}


def _walk(model: ir.Model) -> Iterator[tuple[ir.Node, str, dict[str, int]]]:
    """Every node to check with its report name and opsets; local functions are entered."""
    entered: set[tuple[str, str, str]] = set()

    def visit(
        nodes: Iterable[ir.Node], prefix: str, scope: dict[str, int]
    ) -> Iterator[tuple[ir.Node, str, dict[str, int]]]:
        for node, name in iter_named_nodes(nodes, prefix):
            function = model.functions.get(node.op_identifier())
            if function is None:
                yield node, name, scope
            elif function.identifier() not in entered:
                entered.add(function.identifier())
                inner = {**scope, **{norm_domain(d): v for d, v in function.opset_imports.items()}}
                yield from visit(function, name + "/", inner)

    yield from visit(model.graph, "", norm_opsets(model))


def _row(node: ir.Node, name: str, opset: int | None, reason: str) -> dict[str, Any]:
    return {
        "node": name,
        "domain": norm_domain(node.domain),
        "op_type": node.op_type,
        "opset": opset,
        "reason": reason[:_MAX_REASON],
    }


def _result(rows: list[dict[str, Any]], notes: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "available": True,
        "checked": True,
        **extra,
        "supported": not rows,
        "unsupported": rows,
        "unsupported_ops": dict(Counter(op_key(r["domain"], r["op_type"]) for r in rows)),
        "notes": notes,
    }


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "checked": False, "supported": None, "reason": reason}


# --- ONNX Runtime -------------------------------------------------------------------------


def _tensor_type(value: ir.Value | None, shapes: StaticShapes) -> str | None:
    if value is None or (value.type is not None and not isinstance(value.type, ir.TensorType)):
        return None
    dtype = shapes.of(value).dtype
    if dtype is None or dtype == ir.DataType.UNDEFINED:
        return None
    return f"tensor({dtype.name.lower()})"


def _bindings(node: ir.Node, schema: Any, shapes: StaticShapes) -> dict[str, str]:
    """Type parameter (``T``) -> the node's actual ``tensor(...)`` type, where known."""
    bound: dict[str, str] = {}
    for values, formals in ((node.inputs, schema.inputs), (node.outputs, schema.outputs)):
        for i, value in enumerate(values):
            if i < len(formals):
                formal = formals[i]
            elif formals and formals[-1].option.name == "Variadic":
                formal = formals[-1]
            else:
                continue
            actual = _tensor_type(value, shapes)
            if actual is not None and not formal.typeStr.startswith("tensor("):
                bound.setdefault(formal.typeStr, actual)
    return bound


def _accepts(kernel: Any, bound: dict[str, str]) -> bool:
    constraints = dict(kernel.type_constraints)
    return all(t in constraints[p] for p, t in bound.items() if p in constraints)


def _has_onnx_function(op_type: str, domain: str, opset: int) -> bool:
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:  # no schema for this op at this opset
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


class _OrtRegistry:
    """ONNX Runtime's CPU kernels and operator schemas, indexed by (domain, op_type)."""

    def __init__(self, capi: Any) -> None:
        self.kernels: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for k in capi.get_all_opkernel_def():
            if k.provider == "CPUExecutionProvider":
                self.kernels[(k.domain, k.op_name)].append(k)
        self.schemas: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for s in capi.get_all_operator_schema():
            self.schemas[(s.domain, s.name)].append(s)

    def check(
        self, node: ir.Node, opset: int | None, shapes: StaticShapes
    ) -> tuple[str | None, str | None]:
        """(reason it is unsupported or None, note on how it runs or None)."""
        domain, op = norm_domain(node.domain), node.op_type
        key = (domain, op)
        if opset is None:
            return f"domain {domain!r} is not in the model's opset imports", None
        versions = [s for s in self.schemas.get(key, []) if s.since_version <= opset]
        kernels = self.kernels.get(key, [])
        if not versions and not kernels:
            return (
                f"onnxruntime has no operator {op_key(domain, op)}: a custom op needs a "
                "kernel library registered in the session",
                None,
            )
        schema = max(versions, key=lambda s: s.since_version) if versions else None
        since = schema.since_version if schema is not None else opset
        in_range = [k for k in kernels if k.version_range[0] <= since <= k.version_range[1]]
        function = domain == "" and _has_onnx_function(op, domain, opset)
        if not in_range:
            if function:
                return None, "expanded from its ONNX function body"
            ranges = sorted({tuple(k.version_range) for k in kernels})
            return (
                f"no CPU kernel for {op} version {since} (opset {opset}); "
                f"registered version ranges: {ranges or 'none'}",
                None,
            )
        bound = _bindings(node, schema, shapes) if schema is not None else {}
        if any(_accepts(k, bound) for k in in_range):
            return None, None
        as_float = {p: "tensor(float)" if t == "tensor(float16)" else t for p, t in bound.items()}
        if as_float != bound and any(_accepts(k, as_float) for k in in_range):
            return None, "float16 runs through Casts to float32 that onnxruntime inserts"
        # ORT expands a function op only when no kernel claims its version, not on a type miss.
        return f"no CPU kernel for {op} version {since} with types {bound}", None


def check_onnxruntime(model: ir.Model, options: dict[str, Any]) -> dict[str, Any]:
    """Unsupported nodes for ONNX Runtime's CPU execution provider."""
    try:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as capi
    except ImportError as exc:
        return _unavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime")
    registry = _OrtRegistry(capi)
    shapes = infer_static_shapes(model)
    rows: list[dict[str, Any]] = []
    notes: Counter[str] = Counter()
    for node, name, opsets in _walk(model):
        opset = opsets.get(norm_domain(node.domain))
        reason, note = registry.check(node, opset, shapes)
        if reason:
            rows.append(_row(node, name, opset, reason))
        elif note:
            notes[f"{op_key(node.domain, node.op_type)}: {note}"] += 1
    newest = max(
        (s.since_version for (d, _), group in registry.schemas.items() if d == "" for s in group),
        default=0,
    )
    model_opset = norm_opsets(model).get("")
    extra_notes = [f"{text} ({n} node{'s' * (n > 1)})" for text, n in notes.items()]
    if model_opset is not None and model_opset > newest:
        extra_notes.append(
            f"model imports ai.onnx opset {model_opset}; this onnxruntime's newest ai.onnx "
            f"operator version is {newest}"
        )
    return _result(
        rows,
        extra_notes,
        version=onnxruntime.__version__,
        provider="CPUExecutionProvider",
        method="registered CPU kernels (get_all_opkernel_def) matched by op version and dtypes",
    )


# --- OpenVINO -----------------------------------------------------------------------------

_FRAMEWORK_NODE = re.compile(r"FrameworkNode$|^NotSupportedONNXNode$")
# Above this the model proto nears protobuf's 2 GB limit; big weights then go in as inputs.
_PROTO_LIMIT = 1_500_000_000
_BIG_INITIALIZER = 1 << 20


def _onnx_bytes(model: ir.Model) -> tuple[bytes, int]:
    """The model as ONNX bytes for the frontend, and how many weights became inputs.

    Weights only matter for op support through their types, so external or (in huge models)
    large initializers are passed as typed inputs instead of data.
    """
    import onnx
    import onnx.helper

    proto = ir.serde.serialize_model(model)
    huge = proto.ByteSize() > _PROTO_LIMIT
    keep, moved = [], []
    for init in proto.graph.initializer:
        external = init.data_location == onnx.TensorProto.EXTERNAL
        big = huge and len(init.raw_data) >= _BIG_INITIALIZER
        (moved if external or big else keep).append(init)
    if moved:
        inputs = {i.name for i in proto.graph.input}
        for init in moved:
            if init.name not in inputs:
                proto.graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return proto.SerializeToString(), len(moved)


def _conversion_reasons(message: str) -> tuple[set[str], dict[str, str]]:
    """Parse the frontend's report: ops with no rule, and op -> first line of its error."""
    missing: set[str] = set()
    match = re.search(r"No conversion rule found for operations: ([^\n]*)", message)
    if match:
        missing = {s.strip() for s in match.group(1).split(",") if s.strip()}
    failed: dict[str, str] = {}
    for op, text in re.findall(
        r"^-- (\S+?)-\d+ with a message:\n(.*?)(?=^-- |\Z)", message, re.M | re.S
    ):
        failed.setdefault(op, " ".join(text.split()))
    return missing, failed


def check_openvino(model: ir.Model, options: dict[str, Any]) -> dict[str, Any]:
    """Unsupported nodes for OpenVINO: the ONNX frontend, then the device plugin."""
    try:
        import openvino as ov
        from openvino.frontend import FrontEndManager
    except ImportError as exc:
        return _unavailable(f"openvino is not installed ({exc}); pip install openvino")
    device = options.get("openvino_device", "CPU")
    extra = {
        "version": ov.get_version(),
        "device": device,
        "method": "ONNX frontend convert / convert_partially, then Core.query_model",
    }
    data, moved = _onnx_bytes(model)
    notes = [f"{moved} external or large weights were passed as inputs"] if moved else []
    frontend = FrontEndManager().load_by_framework("onnx")
    opsets = norm_opsets(model)
    try:
        converted = frontend.convert(frontend.load(io.BytesIO(data)))
        message = ""
    # Broad: OpenVINO raises OpConversionFailure (its message lists every op it could not
    # convert), GeneralFailure or RuntimeError, which share no base; only OpenVINO runs here.
    except Exception as exc:
        converted, message = None, str(exc)
    if converted is None:
        try:
            partial = frontend.convert_partially(frontend.load(io.BytesIO(data)))
        except Exception as exc:  # OpenVINO's frontend errors share no base; reported as is
            return {**_result([], notes, **extra), "supported": False, "error": message or str(exc)}
        names = _display_names(model)
        missing, failed = _conversion_reasons(message)
        rows = []
        for op in partial.get_ordered_ops():
            if not _FRAMEWORK_NODE.search(op.get_type_name()):
                continue
            attrs = op.get_attributes()
            domain = norm_domain(str(attrs.get("ONNX_META_domain", "")))
            op_type = str(attrs.get("ONNX_META_type", op.get_type_name()))
            error = failed.get(op_type) or failed.get(f"{domain}.{op_type}")
            if error:
                reason = f"conversion failed: {error}"
            elif op_type in missing or f"{domain}.{op_type}" in missing:
                reason = f"no conversion rule for {op_key(domain, op_type)} in the ONNX frontend"
            else:
                reason = "left unconverted by the OpenVINO ONNX frontend"
            friendly = op.get_friendly_name()
            rows.append(
                {
                    "node": names.get(friendly, friendly),
                    "domain": domain,
                    "op_type": op_type,
                    "opset": opsets.get(domain),
                    "reason": reason[:_MAX_REASON],
                }
            )
        if not rows:
            return {
                **_result([], notes, **extra),
                "supported": False,
                "error": message[:_MAX_REASON],
            }
        return _result(rows, notes, **extra)
    try:
        placed = ov.Core().query_model(converted, device)
    except Exception as exc:  # a plugin's refusal has no common type; noted in the report
        notes.append(f"query_model on {device} failed: {str(exc)[:_MAX_REASON]}")
        return _result([], notes, **extra)
    rows = [
        {
            "node": op.get_friendly_name(),
            "domain": "openvino",
            "op_type": op.get_type_name(),
            "opset": None,
            "reason": f"the {device} plugin cannot run OpenVINO op {op.get_type_name()}",
        }
        for op in converted.get_ordered_ops()
        if op.get_friendly_name() not in placed
    ]
    return _result(rows, notes, **extra)


def _display_names(model: ir.Model) -> dict[str, str]:
    """OpenVINO names a node after the ONNX node name or its first output."""
    names: dict[str, str] = {}
    for node, display in iter_named_nodes(model.graph):
        for out in node.outputs:
            if out.name:
                names.setdefault(out.name, display)
        if node.name:
            names[node.name] = display
    return names


Checker = Callable[[ir.Model, dict[str, Any]], dict[str, Any]]

# backend -> check. One table; backends without a check report that instead of failing.
CHECKS: dict[str, Checker] = {
    "onnxruntime": check_onnxruntime,
    "openvino": check_openvino,
}


class BackendSupportPass(AnalysisPass):
    """For each backend: can it run every node, and which nodes not, with the reason."""

    name = "backend-support"

    def __init__(
        self,
        backends: tuple[str, ...] | list[str] = ("onnxruntime", "openvino"),
        openvino_device: str = "CPU",
    ) -> None:
        super().__init__()
        for b in backends:
            if b not in TARGETS:
                raise UnknownNameError("backend", b, list(TARGETS))
        self.backends = tuple(backends)
        self.options = {"openvino_device": openvino_device}

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        for backend in self.backends:
            check = CHECKS.get(backend)
            if check is None:
                facts[backend] = {
                    **_unavailable(f"no operator-support check for {backend} yet"),
                    "available": None,  # not looked for: no check to run
                }
            else:
                facts[backend] = check(model, self.options)
        return facts
