"""Old ONNX files brought to the form every later stage expects (issue 22).

Files from public model zoos often predate IR version 4: every initializer is also listed as a
graph input, and their opsets (7-12) lack what the quantizers and simplifiers rely on (an
optional Gemm bias, per-channel QDQ, Resize's modern signature). ``modernize`` gives such a
model

- IR >= 4 semantics: a graph input that has an initializer is a constant, not something to
  feed (ONNX Runtime otherwise asks for it as a "missing input" once a pass rewrites it);
- an opset of at least ``MIN_OPSET``, converted with ONNX's own version converter.

The caller (``onnx_frontend.load_onnx``) takes its reference outputs from ONNX Runtime on the
original file and checks the modernized model against them (exit 4 when they differ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robopt_compile import ir as rir
from robopt_compile.errors import ModelLoadError

if TYPE_CHECKING:
    import onnx_ir as ir

MIN_OPSET = 13  # per-channel QDQ and an optional Gemm bias; what robopt's passes are tested at
TARGET_OPSET = 17  # robopt's own export opset
MIN_IR_FOR_TARGET = 8


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) or 0)


def constant_inputs(model: ir.Model) -> list[str]:
    """Graph inputs that also have an initializer (IR < 4 files list every weight so)."""
    inits = model.graph.initializers
    return [v.name for v in model.graph.inputs if v.name in inits]


def needs_modernizing(model: ir.Model) -> bool:
    return bool(constant_inputs(model)) or 0 < default_opset(model) < MIN_OPSET


def modernize(model: ir.Model, source: str) -> tuple[ir.Model, list[str], dict[str, Any]]:
    """(the model with constant inputs and a current opset, notes, what changed)."""
    import onnx
    from onnx import version_converter

    consts = constant_inputs(model)
    old_opset, old_ir = default_opset(model), model.ir_version
    proto = rir.to_proto(model)
    if consts:
        keep = [i for i in proto.graph.input if i.name not in set(consts)]
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        proto.ir_version = max(proto.ir_version, 4)  # initializers need not be inputs from 4
    notes = []
    if consts:
        notes.append(
            f"{len(consts)} graph input(s) with initializers treated as constants (IR version "
            f"{old_ir} semantics): {', '.join(consts[:4])}{', ...' if len(consts) > 4 else ''}"
        )
    new_opset = old_opset
    if 0 < old_opset < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, TARGET_OPSET)
            onnx.checker.check_model(proto)
        except Exception as exc:  # the converter raises several C++ error types: one line
            raise ModelLoadError(
                f"{source}: opset {old_opset} is older than robopt's passes support "
                f"({MIN_OPSET}+) and ONNX's version converter could not upgrade it "
                f"({str(exc).splitlines()[0][:160]}); re-export the model at opset "
                f"{TARGET_OPSET}."
            ) from exc
        new_opset = TARGET_OPSET
        notes.append(f"opset {old_opset} upgraded to {TARGET_OPSET} (onnx.version_converter)")
    proto.ir_version = max(proto.ir_version, MIN_IR_FOR_TARGET)
    changes = {
        "ir_version": [old_ir, proto.ir_version],
        "opset": [old_opset, new_opset],
        "constant_inputs": consts,
    }
    return rir.from_proto(proto), notes, changes
