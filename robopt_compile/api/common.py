"""What every API call shares: the callback types, the source argument, compile options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robopt_compile.errors import InputError

if TYPE_CHECKING:
    from robopt_compile.compile.options import CompileOptions

Progress = Callable[[str, str, float], None]  # (stage, "start"|"done"|"note"|"info"|"tick", s)
Log = Callable[[str], None]
Warn = Callable[[str], None]
StorePath = str | Path | None  # a folder, a .db file or sqlite:///path; None: $ROBOPT_STORE


def quiet(*_: Any) -> None:
    pass


def source_of(source: Any, example_inputs: Any) -> str:
    """A source string; a ``torch.nn.Module`` becomes a ``frontend.ModuleSource``."""
    torch = sys.modules.get("torch")  # a module object means torch is imported already
    if torch is not None and isinstance(source, torch.nn.Module):
        if example_inputs is None:
            raise InputError(
                "a torch.nn.Module source needs example_inputs: a tensor, a tuple of tensors "
                "or a dict name -> tensor."
            )
        from robopt_compile.compile.frontend import ModuleSource

        return ModuleSource(source, example_inputs)
    if example_inputs is not None:
        raise InputError(
            "example_inputs go with a torch.nn.Module source; a string source brings its own."
        )
    if isinstance(source, str | Path):
        return str(source)
    raise InputError(
        f"a source is zoo:NAME, an .onnx or .pt2 file, package.module:factory, a model folder "
        f"or a torch.nn.Module, not {type(source).__name__}."
    )


_PATHS = ("hwprofile", "dump_ir", "reference_inputs")


def compile_options(base: CompileOptions | None = None, **option_fields: Any) -> CompileOptions:
    """``CompileOptions`` from ``base`` (default: all defaults) with fields replaced by name.

    Any field of ``CompileOptions`` (``backend``, ``precision``, ``threads``, ``eval`` as a
    spec string such as ``"task:episodes=20"`` ...), of its ``QuantOptions`` (``calibration``,
    ``max_drop``, ``strict`` ...) or of its ``CompressOptions`` (``prune``, ``low_rank``,
    ``distill``, ``search_arch``, ``search_budget_s`` ...). ``seed`` seeds both the export
    and the quantizer, as ``--seed`` does. None values are ignored (the base's stands).

    Raises:
        InputError: an unknown field.
    """
    from robopt_compile.compile.options import CompileOptions, CompressOptions, QuantOptions

    given = {k: v for k, v in option_fields.items() if v is not None}
    classes = (CompileOptions, QuantOptions, CompressOptions)
    internal = {"closed_loop", "arch_guard", "task"}  # set by the pipeline, not the user
    groups = [{f.name for f in fields(cls)} - internal for cls in classes]
    unknown = sorted(k for k in given if not any(k in g for g in groups))
    if unknown:
        known = sorted(set().union(*groups) - {"quant", "compress"})
        raise InputError(f"unknown compile option(s) {unknown}; known: {', '.join(known)}.")
    top = {k: v for k, v in given.items() if k in groups[0]}
    quant = {k: v for k, v in given.items() if k in groups[1] and k not in groups[0]}
    compress = {k: v for k, v in given.items() if k in groups[2]}
    for k in _PATHS:
        if isinstance(top.get(k), str):
            top[k] = Path(top[k])
    if isinstance(top.get("eval"), str):
        from robopt_compile.evaluate import parse_eval_spec

        top["eval"] = parse_eval_spec(top["eval"])
    if "seed" in top:
        quant["seed"] = top["seed"]
    for k in ("prune", "prune_layers"):
        if isinstance(compress.get(k), str):
            compress[k] = (compress[k],)
        elif k in compress:
            compress[k] = tuple(compress[k])
    opts = replace(base or CompileOptions(), **top)
    return replace(
        opts, quant=replace(opts.quant, **quant), compress=replace(opts.compress, **compress)
    )
