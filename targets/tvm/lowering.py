"""ONNX to a TVM library's module: the Relax import and the CPU lowering passes.

``import_onnx`` runs ``tvm.relax.frontend.onnx.from_onnx`` with the ONNX input shapes (weights
become constants); an operator the frontend lacks is a one-line ``BuildError``. ``lower`` fuses
the kernels (``fuse_passes``, the same passes tuning extracts its tasks after), applies tuning
records if any, and runs the CPU lowering pipeline. ``register_cpu_tensor_intrinsics`` keeps
``import tvm.s_tir.tensor_intrin`` cheap (see docs/TVM.md). ``tvm`` and ``onnx`` are imported
inside the functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BuildError


def _onnx_io(model: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Graph inputs (name, static shape, dtype) in graph order, and output names."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if symbolic:
            raise BuildError(
                f"the tvm backend builds static shapes; input {vi.name!r} has symbolic dim(s) "
                f"{symbolic}: export with a fixed batch (no --dynamic-batch)."
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        inputs.append({"name": vi.name, "shape": dims, "dtype": dtype})
    return inputs, [o.name for o in model.graph.output]


def import_onnx(model_path: Path) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """ONNX -> Relax IRModule with the weights bound as constants."""
    import onnx
    from google.protobuf import json_format, message, text_format
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    # OSError; each serialization's parse error (.onnx protobuf, .json, .textproto, .onnxtxt);
    # ValueError for an unknown format; onnx's ValidationError for missing external data
    unreadable = (
        OSError,
        ValueError,
        message.Error,
        json_format.Error,
        text_format.Error,
        onnx.parser.ParseError,
        onnx.checker.ValidationError,
    )
    try:
        model = onnx.load(str(model_path))
    except unreadable as exc:
        raise BuildError(f"cannot read ONNX model {model_path}: {first_line(exc)}.") from exc
    inputs, outputs = _onnx_io(model)
    try:
        mod = from_onnx(model, shape_dict={i["name"]: i["shape"] for i in inputs})
    except NotImplementedError as exc:  # tvm.error.OpNotImplemented lists the missing ops
        ops = str(exc).split(":")[-1].strip()
        raise BuildError(
            f"TVM's Relax ONNX frontend has no converter for operator(s) {ops}; "
            "use --backend onnxruntime or openvino for this model."
        ) from exc
    # Broad on purpose: the Relax frontend's converters raise any type (TVMError, ValueError,
    # KeyError, AssertionError) on a model they cannot convert.
    except Exception as exc:
        raise BuildError(f"TVM could not import the ONNX model: {first_line(exc)}.") from exc
    mod = relax.transform.DecomposeOpsForInference()(mod)
    return relax.transform.CanonicalizeBindings()(mod), inputs, outputs


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


# --------------------------------------------------------------------------- compile


def fuse_passes(target: Any) -> list[Any]:
    """Legalize and fuse: tuning tasks are extracted after these, and applied after them too."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline

    return [
        *pipeline.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def lower(mod: Any, target: Any, database: Any = None) -> Any:
    """Relax IRModule -> the module ``relax.build`` turns into code (kernels scheduled or not)."""
    import tvm
    from tvm import relax

    # TVM 0.27's relax.pipeline.dataflow_lower_passes names a function its cpu_generic package
    # does not export: take the CPU pipeline's module directly (only LLVM CPU targets come here).
    from tvm.relax.backend.cpu_generic import pipeline

    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(fuse_passes(target))(mod)
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return tvm.transform.Sequential(
            pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
        )(mod)


def register_cpu_tensor_intrinsics(arch: str) -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` cheap: register only this CPU's intrinsics.

    The package's ``__init__`` builds every CUDA/ROCm/Hexagon intrinsic (~40 s); MetaSchedule
    imports it in the tuner and in each builder worker, whose 30 s build timeout it overruns.
    CPU schedule rules use only the x86 (VNNI/AMX) or Arm (NEON dot product) ones.
    """
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        sys.modules[name] = importlib.util.module_from_spec(spec)
    importlib.import_module(f"{name}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")
