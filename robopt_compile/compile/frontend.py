"""Frontend: turn what the user passed into a checked ONNX model held as ``onnx_ir``.

Sources: ``zoo:NAME``, a ``.onnx`` file (external data resolved beside it), a ``.pt2`` saved
``torch.export`` program, ``package.module:factory`` returning ``(module, example_inputs)``,
or a module in memory with its example inputs (:class:`ModuleSource`, from the Python API).

Torch sources are exported with the dynamo exporter first and the TorchScript exporter as a
fallback. Every result is checked before anything else touches it: the ONNX checker, shape
inference, and numerical parity against the source on fresh inputs that the export never saw.
Those inputs and the source's outputs become the bundle's reference data, so the engine on the
robot is judged against the *original* model, not against an intermediate.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robopt_compile import ir as rir
from robopt_compile.compile.source import (
    PARITY_TOLERANCE,
    REFERENCE_SEED_OFFSET,
    SourceModel,
    check_model,
    parity_failed,
)
from robopt_compile.errors import ExportError, InputError, ModelLoadError
from robopt_compile.feeds import check_feeds_match, load_npz_inputs

if TYPE_CHECKING:
    import onnx_ir as ir


class ModuleSource(str):
    """A ``torch.nn.Module`` in memory with its example inputs, passed where a source string goes.

    The string is a label (``<module NAME>``: no path, no colon, so nothing mistakes it for a
    file or a factory) that manifests, reports and sessions record; every stage that only names
    the source works unchanged, and :func:`load_source` exports the module itself through the
    factory route. The build cache keys it by its content (``identity.source_identity``).
    """

    module: Any
    example_inputs: Any
    model_name: str

    def __new__(cls, module: Any, example_inputs: Any, name: str | None = None) -> ModuleSource:
        model_name = name or type(module).__name__
        obj = super().__new__(cls, f"<module {model_name}>")
        obj.module, obj.example_inputs, obj.model_name = module, example_inputs, model_name
        return obj


def source_kind(source: str) -> str:
    if isinstance(source, ModuleSource):
        return "module"
    if source.startswith("zoo:"):
        return "zoo"
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    from robopt_compile.compile.tf_frontend import tf_kind

    tf = tf_kind(source)
    if tf is not None:
        return tf
    if suffix in (".pt2", ".ep"):
        return "pt2"
    mod, sep, fn = source.partition(":")
    if sep and mod and fn.isidentifier() and all(p.isidentifier() for p in mod.split(".")):
        return "factory"
    if Path(source).is_dir():
        raise InputError(
            f"{source} is a folder without config.json or saved_model.pb; a model folder "
            "holds config.json and model.safetensors (robopt_compile.zoo.vla.save_folder "
            "writes one), a TensorFlow SavedModel saved_model.pb."
        )
    if suffix in (".pt", ".pth") and Path(source).is_file():
        from robopt_compile.compile.ptfile import advice

        raise InputError(advice(Path(source)))
    if Path(source).exists():
        raise InputError(
            f"{source}: unsupported model file type {suffix or '(none)'}; give an .onnx file, "
            "a .pt2 torch.export program, a TensorFlow SavedModel folder, .keras or .tflite "
            "file, zoo:NAME or package.module:factory."
        )
    raise ModelLoadError(
        f"{source}: no such file, and not zoo:NAME or package.module:factory. Check the path."
    )


def load_source(
    source: str,
    *,
    dynamic_batch: bool = False,
    opset: int | None = None,
    seed: int = 0,
    check_parity: bool = True,
    reference_inputs: str | Path | None = None,
) -> SourceModel:
    """Load and check ``source``; raises a ``RoboptError`` with an actionable message.

    ``reference_inputs`` is an .npz of real samples keyed by input name (batch as exported);
    without it, reference inputs are seeded random data shaped like the model's inputs.
    """
    kind = source_kind(source)
    given = load_npz_inputs(reference_inputs) if reference_inputs is not None else None
    if kind == "onnx":
        from robopt_compile.compile.onnx_frontend import load_onnx

        return load_onnx(source, seed, given)
    if kind in ("savedmodel", "keras", "tflite"):
        from robopt_compile.compile.tf_frontend import load_tf

        return load_tf(source, kind, dynamic_batch=dynamic_batch, opset=opset, seed=seed,
                       check_parity=check_parity, given=given)  # fmt: skip
    if kind == "module":
        assert isinstance(source, ModuleSource)
        return _from_torch(
            source.module, source.example_inputs, str(source), source.model_name, kind,
            dynamic_batch, opset, seed, check_parity, given,
        )  # fmt: skip
    from robopt_compile.zoo import zoo_kind

    if kind == "zoo" and zoo_kind(source) == "keras":
        from robopt_compile.compile.tf_frontend import load_tf

        zoo = source.removeprefix("zoo:")
        sm = load_tf(source, "keras", dynamic_batch=dynamic_batch, opset=opset, seed=seed,
                     check_parity=check_parity, given=given, zoo=zoo)  # fmt: skip
        sm.kind = "zoo"
        return sm
    if kind == "zoo":
        from robopt_compile.zoo import load_zoo

        name = source.removeprefix("zoo:")
        module, inputs = load_zoo(name, seed=seed)
        return _from_torch(
            module, inputs, source, name, kind, dynamic_batch, opset, seed, check_parity, given
        )
    if kind == "pt2":
        return _load_pt2(source, dynamic_batch, opset, seed, check_parity, given)
    module, inputs = _call_factory(source)
    name = source.partition(":")[2]
    return _from_torch(
        module, inputs, source, name, kind, dynamic_batch, opset, seed, check_parity, given
    )


def load_fp32(source: str) -> Any:
    """``source`` exported to its fp32 ONNX model, parity not enforced (the original that an
    evaluation compares an optimized engine with)."""
    return load_source(source, check_parity=False).model


# --------------------------------------------------------------------------- torch sources


def _call_factory(source: str) -> tuple[Any, Any]:
    from robopt_compile.compile.userimport import import_callable

    fn = import_callable(source, "factory", ModelLoadError)
    try:
        result = fn()
    except Exception as exc:  # the user's factory may raise anything: one line
        raise ModelLoadError(
            f"factory {source} raised {type(exc).__name__}: {str(exc)[:200]}. Fix the factory."
        ) from exc
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ModelLoadError(
            f"factory {source} must return (torch.nn.Module, example_inputs), "
            f"got {type(result).__name__}."
        )
    return result[0], result[1]


def _normalise_inputs(module: Any, inputs: Any, source: str) -> dict[str, Any]:
    """Example inputs as an ordered name -> tensor dict (names from forward's signature)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{source}: expected a torch.nn.Module, got {type(module).__name__}.")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(module, torch.jit.ScriptModule):  # TorchScript: its schema names them
        params = [a.name for a in module.forward.schema.arguments[1:]]
    else:
        sig = inspect.signature(module.forward).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig):
            raise ModelLoadError(
                f"{source}: forward() takes *args/**kwargs; robopt names ONNX inputs after "
                "forward's parameters, so give it explicitly named tensor parameters (wrap the "
                "module)."
            )
        params = [p.name for p in sig if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(inputs, dict):
        named = dict(inputs)
        unknown = [k for k in named if k not in params]
        if unknown:
            raise ModelLoadError(
                f"{source}: example input(s) {unknown} are not parameters of "
                f"forward{tuple(params)}."
            )
    elif isinstance(inputs, tuple | list):
        if len(inputs) > len(params):
            raise ModelLoadError(
                f"{source}: {len(inputs)} example inputs but forward{tuple(params)} takes "
                f"{len(params)}."
            )
        named = dict(zip(params[: len(inputs)], inputs, strict=True))
    else:
        raise ModelLoadError(
            f"{source}: example inputs must be a tensor, a tuple of tensors or a dict, "
            f"got {type(inputs).__name__}."
        )
    bad = [k for k, v in named.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{source}: example inputs {bad} are not tensors.")
    return named


def _output_names(module: Any, n: int, keys: list[str] | None = None) -> list[str]:
    """The module's ``output_names`` attribute, else the keys of the dict its forward
    returned, else ``output`` / ``output_0``, ``output_1`` ..."""
    names = getattr(module, "output_names", None)
    if names and len(names) == n:
        return list(names)
    if keys and len(keys) == n and all(isinstance(k, str) and k for k in keys):
        return list(keys)
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _torch_outputs(module: Any, named: dict[str, Any], keys: list[str] | None = None
                   ) -> list[Any]:  # fmt: skip
    """The forward's outputs as a list; a dict's keys are appended to ``keys`` when given."""
    import torch

    try:
        with torch.no_grad():
            out = module(**named)
    except Exception as exc:  # the user's forward may raise anything: one line
        raise ModelLoadError(
            f"the model's forward() raised {type(exc).__name__} on the example inputs: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}. Check the example inputs' "
            "shapes and dtypes."
        ) from exc
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    if isinstance(out, dict):
        if keys is not None:
            keys.extend(out)
        return list(out.values())
    raise ModelLoadError(
        f"the model returns {type(out).__name__}; robopt needs a tensor, a tuple of tensors or "
        "a dict of tensors."
    )


def _fresh_like(named: dict[str, Any], seed: int, batch: int | None = None) -> dict[str, Any]:
    """Inputs shaped like ``named`` (optionally re-batched) drawn from a separate seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    fresh = {}
    for k, v in named.items():
        shape = tuple(v.shape)
        if batch is not None and shape:
            shape = (batch, *shape[1:])
        if v.dtype.is_floating_point:
            lo, hi = float(v.min()), float(v.max())
            if lo >= 0.0 and hi <= 1.0:  # keep images in [0, 1]
                t = torch.rand(shape, generator=g)
            else:
                t = torch.randn(shape, generator=g) * max(float(v.std()), 1e-3) + float(v.mean())
            fresh[k] = t.to(v.dtype)
        elif v.dtype == torch.bool:
            fresh[k] = torch.rand(shape, generator=g) > 0.5
        else:
            lo, hi = int(v.min()), int(v.max())
            fresh[k] = torch.randint(lo, hi + 1, shape, generator=g, dtype=v.dtype)
    return fresh


@contextlib.contextmanager
def quiet_exporter():
    """The exporters print progress and warnings; keep the user's terminal clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = logging.getLogger("torch")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logger.setLevel(level)


def export_torch(
    module: Any,
    named: dict[str, Any],
    output_names: list[str],
    *,
    dynamic_batch: bool = False,
    opset: int | None = None,
) -> tuple[ir.Model, str, list[str]]:
    """Export with dynamo, falling back to TorchScript. Returns (model, exporter, notes)."""
    import onnx
    import torch

    notes: list[str] = []
    example = dict(named)
    if dynamic_batch:
        # torch.export specialises a size-1 dim: export with batch 2 so the dim stays symbolic.
        example = {k: torch.cat([v, v]) if v.dim() else v for k, v in named.items()}
    input_names = list(example)
    errors = []
    try:
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            kwargs["dynamic_shapes"] = {
                k: ({0: batch} if v.dim() else None) for k, v in example.items()
            }
        if opset is not None:
            kwargs["opset_version"] = opset
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args=(),
                kwargs=example,
                dynamo=True,
                verbose=False,
                input_names=input_names,
                output_names=output_names,
                optimize=True,
                **kwargs,
            )
        return program.model, "dynamo", notes
    except Exception as exc:  # the exporter fails in many ways on user code: fall back
        errors.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        notes.append(f"dynamo exporter failed ({errors[-1]}); used the TorchScript exporter")
    try:
        buf = io.BytesIO()
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module,
                tuple(example.values()),
                buf,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset or 17,
                dynamic_axes=(
                    {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
                ),
            )
        return rir.from_proto(onnx.load_from_string(buf.getvalue())), "torchscript", notes
    except Exception as exc:  # any failure here ends in the ExportError below, with both causes
        errors.append(f"torchscript: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise ExportError(
        "both ONNX exporters failed (" + "; ".join(errors) + "). Simplify the forward() "
        "(no data-dependent Python control flow) or export to ONNX yourself and pass the .onnx."
    )


def parity(
    model: ir.Model, module: Any, feeds_t: dict[str, Any], threads: int = 1
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Compare the torch module and the ONNX model on ``feeds_t``.

    Returns (figures, numpy inputs, torch outputs by ONNX output name).
    """
    from robopt_compile import numerics

    feeds = {k: v.detach().cpu().numpy() for k, v in feeds_t.items()}
    ref_list = _torch_outputs(module, feeds_t)
    out_names = [o.name for o in model.graph.outputs]
    ref = {n: t.detach().cpu().numpy() for n, t in zip(out_names, ref_list, strict=True)}
    got = numerics.run_onnx(model, feeds, threads=threads)
    return numerics.judge(ref, got, PARITY_TOLERANCE), feeds, ref


def _check_parity(fig: dict[str, Any], what: str) -> None:
    if not fig["passed"]:
        parity_failed(fig, what, "the torch model")


def _from_torch(
    module: Any,
    inputs: Any,
    source: str,
    name: str,
    kind: str,
    dynamic_batch: bool,
    opset: int | None,
    seed: int,
    check_parity: bool,
    given: dict[str, np.ndarray] | None = None,
) -> SourceModel:
    named = _normalise_inputs(module, inputs, source)
    module.eval()
    keys: list[str] = []
    out_names = _output_names(module, len(_torch_outputs(module, named, keys)), keys)
    model, exporter, notes = export_torch(
        module, named, out_names, dynamic_batch=dynamic_batch, opset=opset
    )
    check_model(model, source)
    ref_t, what = _reference_tensors(model, named, seed, given)
    figures, feeds, ref = parity(model, module, ref_t)
    figures["inputs"] = what
    result = {"export": figures}
    if dynamic_batch:
        fig3, _, _ = parity(model, module, _fresh_like(named, seed + REFERENCE_SEED_OFFSET + 1, 3))
        fig3["inputs"] = "fresh random inputs at batch 3 (dynamic batch check)"
        result["export_batch3"] = fig3
    if check_parity:
        for key, fig in result.items():
            _check_parity(fig, f"{source} ({key})")
    return SourceModel(
        model=model,
        name=name,
        source=source,
        kind=kind,
        exporter=exporter,
        reference_inputs=feeds,
        reference_outputs=ref,
        parity=result,
        notes=notes,
    )


def _reference_tensors(
    model: ir.Model, named: dict[str, Any], seed: int, given: dict[str, np.ndarray] | None
) -> tuple[dict[str, Any], str]:
    """The user's reference samples (checked against the exported inputs) or fresh random."""
    import torch

    if given is None:
        fresh = _fresh_like(named, seed + REFERENCE_SEED_OFFSET)
        return fresh, "fresh random inputs (seed offset 1000), not the export's examples"
    check_feeds_match(given, rir.input_specs(model), "--reference-inputs")
    return {k: torch.from_numpy(given[k]) for k in named}, "user-supplied --reference-inputs"


def _load_pt2(
    source: str,
    dynamic_batch: bool,
    opset: int | None,
    seed: int,
    check_parity: bool,
    given: dict[str, np.ndarray] | None = None,
) -> SourceModel:
    import torch

    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}. Check the path.")
    try:
        with quiet_exporter():
            ep = torch.export.load(str(path))
    except Exception as exc:  # torch.export.load raises many types on a bad file
        from robopt_compile.compile.ptfile import kind_of, pt2_advice

        if kind_of(path)[0] in ("torchscript", "state_dict", "module"):  # torch.save'd
            raise ModelLoadError(pt2_advice(path)) from exc
        why = f"{type(exc).__name__}: {str(exc)[:160]}"
        if "check the warnings above" in str(exc):  # torch logged the cause, which we hide
            why = "a zip archive, but not one torch.export.save wrote"
        raise ModelLoadError(
            f"{path} is not a loadable torch.export program ({why}). Save it with "
            "torch.export.save()."
        ) from exc
    args, kwargs = ep.example_inputs or ((), {})
    if not args and not kwargs:
        raise ModelLoadError(
            f"{path} carries no example inputs; save it from torch.export.export(model, args)."
        )
    names = list(ep.graph_signature.user_inputs)
    named = dict(zip(names, args, strict=False)) | dict(kwargs)
    module = ep.module()
    out_list = _torch_outputs_positional(module, args, kwargs)
    # A program whose forward returned a dict keeps its keys in the output pytree spec; the
    # graph's own output names (``tanh``, ``getitem_1``) say nothing to the user.
    spec = getattr(getattr(ep, "call_spec", None), "out_spec", None)
    keys = spec.context if spec is not None and spec.type is dict else None
    out_names = _output_names(None, len(out_list), list(keys) if keys else None)
    notes: list[str] = []
    if dynamic_batch:
        notes.append(
            "a .pt2 program keeps the shapes it was exported with; --dynamic-batch "
            "applies only where the program itself has a dynamic batch dim"
        )
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                ep,
                args=tuple(args),
                kwargs=dict(kwargs),
                dynamo=True,
                verbose=False,
                input_names=names,
                output_names=out_names,
                optimize=True,
                **({"opset_version": opset} if opset else {}),
            )
    except Exception as exc:  # the TorchScript exporter fails in many ways: one line
        raise ExportError(
            f"{path}: the dynamo exporter failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). A .pt2 program cannot fall back to TorchScript; "
            "pass the module through a factory instead."
        ) from exc
    model = program.model
    check_model(model, source)
    ref_t, what = _reference_tensors(model, named, seed, given)

    class _Call(torch.nn.Module):
        """Calls the unlifted program with keyword inputs mapped back to positions."""

        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, **kw: Any) -> Any:
            return self.m(*[kw[n] for n in names[: len(args)]], **{k: kw[k] for k in kwargs})

    figures, feeds, ref = parity(model, _Call(), ref_t)
    figures["inputs"] = what
    if check_parity:
        _check_parity(figures, source)
    return SourceModel(
        model=model,
        name=path.stem,
        source=source,
        kind="pt2",
        exporter="dynamo",
        reference_inputs=feeds,
        reference_outputs=ref,
        parity={"export": figures},
        notes=notes,
    )


def _torch_outputs_positional(module: Any, args: Any, kwargs: Any) -> list[Any]:
    import torch

    try:
        with torch.no_grad():
            out = module(*args, **kwargs)
    except Exception as exc:  # the program's forward may raise anything: one line
        raise ModelLoadError(
            f"the saved program raised {type(exc).__name__} on its own example inputs: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}."
        ) from exc
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out.values()) if isinstance(out, dict) else list(out)
