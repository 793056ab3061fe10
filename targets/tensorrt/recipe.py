"""The TensorRT build recipe: the pre-flight check plus everything the build will do, as data.

``make_recipe`` checks the ONNX (``check.py``) and turns a build request and a hardware profile
into ``build.json``: precision, network and builder flags (STRONGLY_TYPED, SPARSE_WEIGHTS only
for a 2:4 model on a GPU with sparse tensor cores, GPU_FALLBACK for DLA), the optimization
profile, workspace, the TensorRT version it was checked against, and the target profile and SM.
``trtexec_command`` is the same build as one trtexec line. The recipe is what both the builder
here (``build.py``) and a deferred build on the device (``deferred.py``, ``robopt-bench``) read.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError, InputError
from robopt_compile.jsonutil import sha256_file
from robopt_compile.targets.base import BuildOptions
from robopt_compile.targets.tensorrt.support import MIN_TRT, OPERATOR_TABLE, TARGET_TRT

RECIPE_VERSION = 1
RECIPE_FILE = "build.json"
TRTEXEC_FILE = "trtexec.sh"
ONNX_FILE = "model.onnx"
DEFAULT_WORKSPACE_MIB = 1024


def _sm(value: Any) -> str | None:
    """A compute capability in any usual spelling (8.7, "8.7", (8, 7), "sm_87", 87, "sm_110",
    "11.0") -> ``sm_87`` / ``sm_110``; None if it is none of these."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple | list) and len(value) == 2:
        return "sm_{}{}".format(*value)
    text = str(value).strip().lower()
    if m := re.fullmatch(r"(\d+)\.(\d)", text):
        return f"sm_{m.group(1)}{m.group(2)}"
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})[a-z]?", text)
    return f"sm_{m.group(1)}" if m else None


def _value(x: Any) -> Any:
    """A profile fact's value (profiles wrap facts as ``Fact(value, source)``) or ``x`` itself."""
    return getattr(x, "value", x)


def _options(profile: Any) -> dict[str, Any]:
    opts = getattr(profile, "backend_options", None) or {}
    return dict(opts.get("tensorrt", {}) or {})


def _target(profile: Any) -> dict[str, Any]:
    """What the recipe records about the target board; every field is read defensively."""
    gpu = getattr(profile, "gpu", None)
    sm = _value(getattr(gpu, "sm", None)) or _value(getattr(gpu, "compute_capability", None))
    return {
        "profile": getattr(profile, "name", None),
        "gpu": getattr(gpu, "name", None) or None,
        "sm": _sm(sm or _options(profile).get("sm")),
        "sparse_tensor_cores": _value(getattr(gpu, "sparse_tensor_cores", None)) is True,
    }


def _dla_request(profile: Any, requested: int | None) -> int | None:
    """The DLA core to use: the backend's ``dla_core`` or the profile's ``tensorrt.dla_core``,
    checked against the profile's ``tensorrt.dla_cores`` (how many the board has)."""
    opts = _options(profile)
    core = requested if requested is not None else opts.get("dla_core")
    if core is None:
        return None
    cores = opts.get("dla_cores") or _value(getattr(profile, "dla_count", None)) or 0
    name = getattr(profile, "name", "?")
    if isinstance(core, bool) or not isinstance(core, int) or core < 0:
        raise InputError(f"DLA core must be an integer >= 0, got {core!r}.")
    if core >= cores:
        raise InputError(
            f"DLA core {core} was requested but target {name!r} has "
            f"{cores or 'no'} DLA core(s) (backend_options.tensorrt.dla_cores)."
        )
    return core


def _external_files(model: Any, model_path: Path) -> list[str]:
    """External data files the ONNX refers to (relative to its folder); all must exist."""
    names = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    missing = sorted(n for n in names if not (model_path.parent / n).is_file())
    if missing:
        raise BuildError(
            f"{model_path} refers to external data {missing} that is not next to it; keep the "
            ".onnx file next to its data file."
        )
    return sorted(names)


def make_recipe(
    model_path: Path, profile: Any, options: BuildOptions, dla_core: int | None = None
) -> dict[str, Any]:
    """Pre-flight the ONNX and describe the whole build; raises on any blocking finding.

    Raises:
        BuildError: a blocking pre-flight finding (one line: first node, reason, count).
        InputError: a bad ``dynamic_batch`` or DLA request.
    """
    # the checker loads to make a recipe, not to run an engine
    from robopt_compile.targets.tensorrt.check import (
        check_dynamic_batch,
        check_model,
        load_model,
        require_buildable,
    )

    dynamic_batch = check_dynamic_batch(options.dynamic_batch)
    core = _dla_request(profile, dla_core)
    model = load_model(model_path)
    external = _external_files(model, model_path)
    findings = check_model(
        model,
        precision=options.precision,
        dynamic_batch=dynamic_batch,
        dla_core=core,
        trt_version=TARGET_TRT,
        base_dir=model_path.parent,
    )
    require_buildable(findings)

    target = _target(profile)
    sparsity = {p.key: p.value for p in model.metadata_props}.get("robopt.sparsity")
    sparse = sparsity == "2:4" and target["sparse_tensor_cores"]
    if sparsity != "2:4":
        why = "the model is not 2:4 sparse (no robopt.sparsity = 2:4 metadata)"
    elif sparse:
        why = "2:4 sparse model and the target GPU has sparse tensor cores"
    else:
        why = "2:4 sparse model, but the target profile does not list sparse tensor cores"
    shapes = None
    if dynamic_batch is not None:
        shapes = {}
        for v in model.graph.input:
            dims = v.type.tensor_type.shape.dim
            if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
                rest = [d.dim_value for d in dims[1:]]
                lo, opt, hi = dynamic_batch
                shapes[v.name] = {"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]}
    fallback = core is not None and _options(profile).get("gpu_fallback", True) is not False
    flags = (["SPARSE_WEIGHTS"] if sparse else []) + (["GPU_FALLBACK"] if fallback else [])
    recipe: dict[str, Any] = {
        "recipe_version": RECIPE_VERSION,
        "backend": "tensorrt",
        "onnx": ONNX_FILE,
        "onnx_sha256": sha256_file(model_path),
        "onnx_external_data": external,
        "precision": options.precision,
        "strongly_typed": True,
        "network_flags": ["STRONGLY_TYPED"],
        "builder_flags": flags,
        "cleared_builder_flags": ["TF32"],
        "sparsity": {"model": sparsity, "sparse_weights": sparse, "why": why},
        "dla": None if core is None else {"core": core, "gpu_fallback": fallback},
        "dynamic_batch": list(dynamic_batch) if dynamic_batch else None,
        "optimization_profile": shapes,
        "workspace_mib": int(_options(profile).get("workspace_mib", DEFAULT_WORKSPACE_MIB)),
        "timing_cache": "$ROBOPT_CACHE/tensorrt/timing-<gpu>-sm<cc>-trt<version>.cache",
        "tensorrt": {
            "checked_against": TARGET_TRT,
            "min_version": ".".join(map(str, MIN_TRT)),
            "operator_table": OPERATOR_TABLE,
            "note": "TensorRT 11 reads the same recipe: strong typing is always on there",
        },
        "target": target,
        "preflight": [f.to_json() for f in findings],
    }
    recipe["trtexec"] = trtexec_command(recipe)
    return recipe


def _shape_spec(shapes: dict[str, dict[str, list[int]]], which: str) -> str:
    def name(n: str) -> str:  # trtexec: names with separators go in single quotes
        return f"'{n}'" if re.search(r"[:,']", n) else n

    return ",".join(f"{name(n)}:{'x'.join(map(str, s[which]))}" for n, s in shapes.items())


def trtexec_command(
    recipe: dict[str, Any], engine: str = "model.engine", timing_cache: str = "timing.cache"
) -> str:
    """The trtexec line that builds what ``build_engine`` builds from ``recipe``."""
    args = [
        "trtexec",
        f"--onnx={recipe['onnx']}",
        f"--saveEngine={engine}",
        "--stronglyTyped",
        "--noTF32",
        f"--memPoolSize=workspace:{recipe['workspace_mib']}",
    ]
    if recipe["sparsity"]["sparse_weights"]:
        args.append("--sparsity=enable")
    if recipe["dla"] is not None:
        args.append(f"--useDLACore={recipe['dla']['core']}")
        if recipe["dla"]["gpu_fallback"]:
            args.append("--allowGPUFallback")
    shapes = recipe["optimization_profile"]
    if shapes:
        args += [f"--{w}Shapes={_shape_spec(shapes, w)}" for w in ("min", "opt", "max")]
    args += [f"--timingCacheFile={timing_cache}", "--skipInference"]
    return " ".join(shlex.quote(a) for a in args)
