"""The resolve stage: board profile, backend and precision checked before any slow work, what
builds and runs on this machine, and the transform passes of the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robopt_compile.compile.options import CompileOptions
from robopt_compile.errors import (
    BackendUnavailableError,
    InputError,
    UnknownNameError,
)
from robopt_compile.precision import get_precision


def resolve_profile(opts: CompileOptions):
    from robopt_compile.hwprofiles import load_profile, load_profile_file

    if opts.hwprofile is not None:
        return load_profile_file(opts.hwprofile)
    return load_profile(opts.target)


def target_status(profile: Any, backend_name: str) -> dict[str, Any]:
    """Whether ``backend_name`` can build for ``profile`` here, and run (benchmark) here."""
    import platform

    from robopt_compile.targets import TARGETS, get_backend

    if backend_name not in TARGETS:
        return {"build": "no", "run": False, "reason": "not built into this robopt version"}
    backend = get_backend(backend_name)
    ok, why = backend.availability()
    host_arch = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    if not ok:
        if backend.builds_without_runtime:
            return {
                "build": "deferred",
                "run": False,
                "reason": f"{why}; the bundle carries a deferred build for the device",
            }
        return {"build": "no", "run": False, "reason": why}
    if profile.arch != host_arch:
        return {
            "build": "yes",
            "run": False,
            "reason": f"{profile.arch} engine, this machine is {host_arch}",
        }
    runs, reason = backend.runs_here(profile)
    if not runs:
        return {"build": "yes", "run": False, "reason": reason}
    return {"build": "yes", "run": True, "reason": why}  # fmt: skip


def resolve_backend(profile: Any, requested: str | None):
    """The requested backend (checked against the profile) or the first available one."""
    from robopt_compile.errors import UnknownNameError
    from robopt_compile.targets import TARGETS, get_backend

    if requested is not None:
        if requested not in TARGETS:
            raise UnknownNameError("backend", requested, list(TARGETS))
        if requested not in profile.backends:
            raise InputError(
                f"target {profile.name!r} does not support backend {requested!r}; "
                f"it supports {list(profile.backends)}."
            )
        backend = get_backend(requested)
        if not backend.builds_without_runtime:
            backend.require()
        return backend
    reasons = []
    for name in profile.backends:
        if name not in TARGETS:
            reasons.append(f"{name}: not built into this robopt version")
            continue
        backend = get_backend(name)
        ok, why = backend.availability()
        if ok or backend.builds_without_runtime:
            return backend
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(
        f"no backend for target {profile.name!r} can run here ({'; '.join(reasons)})."
    )


def fallback_backends(profile: Any, precision: str) -> list[str]:
    """The board's backends a plain compile may use, in the profile's order: available here
    (or building without their runtime) and able to build ``precision``."""
    from robopt_compile.errors import RoboptError
    from robopt_compile.targets import TARGETS, get_backend

    names = []
    for name in profile.backends:
        if name not in TARGETS:
            continue
        backend = get_backend(name)
        ok, _ = backend.availability()
        if not (ok or backend.builds_without_runtime):
            continue
        try:
            check_precision(profile, backend, precision)
        except RoboptError:
            continue
        names.append(name)
    return names


def check_precision(profile: Any, backend: Any, precision: str) -> None:
    if get_precision(precision).compute not in profile.precisions:
        raise InputError(
            f"target {profile.name!r} does not support precision {precision!r}; "
            f"it supports {list(profile.precisions)}."
        )
    backend.check_precision(precision)


def check_options(opts: CompileOptions) -> None:
    """Options that would otherwise fail only after the (slow) export."""
    if opts.threads is not None and opts.threads < 1:
        raise InputError("--threads must be >= 1.")
    if opts.simplify not in ("default", "none"):  # the tool table imports onnx-ir: only then
        from robopt_compile.passes.simplify.simplify import TOOLS

        if opts.simplify not in TOOLS:
            raise UnknownNameError("simplify tool", opts.simplify, ["default", *TOOLS])
    if opts.compress.active or opts.compress.distill or opts.compress.prune_layers:
        from robopt_compile.compile.compress import validate

        validate(opts.compress, opts.quant.calibration is not None,
                 (opts.quant.calibration or "").split(":")[0] == "task")  # fmt: skip
    if opts.dump_ir is not None and Path(opts.dump_ir).exists() and not Path(opts.dump_ir).is_dir():
        raise InputError(f"--dump-ir {opts.dump_ir} is a file; give a folder.")


def build_passes(opts: CompileOptions) -> list[Any]:
    """The transform passes of the plan (analysis runs separately, after them)."""
    from robopt_compile.passes import get_pass_class

    passes = []
    if opts.simplify != "none":
        cls = get_pass_class("simplify")
        tool = {} if opts.simplify == "default" else {"tool": opts.simplify}
        passes.append(cls(seed=opts.seed, **tool))
    return passes
