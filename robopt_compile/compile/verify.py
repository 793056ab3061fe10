"""The verify stage: the built engine (or, where it cannot run here, the bundle's ONNX) judged
against the source model on reference inputs, and again at a second size of any dynamic
non-batch dimension. Same rule (``numerics.judge``) that ``robopt-bench`` applies on the robot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.compile.stages import Progress
from robopt_compile.errors import (
    CheckFailedError,
)


def runs_here(artifact: Any) -> bool:
    """False for an engine that cannot run on the build machine: a deferred TensorRT build or
    a library cross-compiled for another CPU."""
    return engine_runs_here(artifact.config)


def engine_runs_here(config: dict[str, Any]) -> bool:
    """``runs_here`` from an engine's config as stored in a manifest."""
    return not (config.get("deferred") or config.get("cross_compiled"))


def verify_onnx(
    path: Path, src: Any, threads: int | None, tol: dict[str, float], artifact: Any
) -> dict[str, Any]:
    """The bundle's ONNX judged in ONNX Runtime when its engine cannot run here."""
    from robopt_compile.numerics import judge, run_onnx

    verdict = judge(src.reference_outputs, run_onnx(path, src.reference_inputs, threads), tol)
    why = artifact.config.get("deferred_reason") or (
        "deferred build" if artifact.config.get("deferred") else "cross-compiled engine"
    )
    verdict["inputs"] = "bundle reference inputs (not used during export)"
    verdict["checked_in"] = "onnxruntime"
    verdict["engine_checked"] = False
    verdict["checked"] = (
        f"ONNX checked in ONNX Runtime; {artifact.backend} engine not built yet: built and "
        "checked on the device by robopt-bench"
        if artifact.config.get("deferred")
        else f"ONNX checked in ONNX Runtime; the cross-compiled {artifact.backend} engine was "
        "not run here: checked on the device by robopt-bench"
    )
    verdict["note"] = (
        f"the {artifact.backend} engine cannot run here ({why}): the bundle's ONNX was checked "
        "in ONNX Runtime instead; robopt-bench checks the engine on the device"
    )
    return verdict


DYNAMIC_CHECK_SIZE = 3  # every symbolic dim is also checked at this size, not only at 1


DYNAMIC_SEED_OFFSET = 7_000


@dataclass(frozen=True)
class DynamicReference:
    """The source model's outputs on inputs whose symbolic dims are ``DYNAMIC_CHECK_SIZE``."""

    dims: list[str]  # "input[axis]=name" of the non-batch symbolic dims
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def dynamic_reference(src: Any, seed: int, progress: Progress) -> DynamicReference | None:
    """None when only the batch dim (axis 0) is symbolic; else a warning and the reference
    outputs at the second size, so that the engine is checked where the robot may feed it.

    A source that does not itself run at that size gets a warning and the size-1 check only.
    """
    from robopt_compile import ir as rir
    from robopt_compile.numerics import random_feeds, run_onnx

    specs = rir.input_specs(src.model)
    dims = [f"{s.name}[{i}]={d}" for s in specs for i, d in enumerate(s.shape)
            if i > 0 and not isinstance(d, int)]  # fmt: skip
    if not dims:
        return None
    n = DYNAMIC_CHECK_SIZE
    feeds = random_feeds(specs, seed=seed + DYNAMIC_SEED_OFFSET, batch=n)
    try:
        outputs = run_onnx(src.model, feeds)
    except Exception as exc:  # the runtime's own error type; the dims are not really free
        progress(f"dynamic dimension(s) {', '.join(dims)}: the source model does not run with "
                 f"them at {n} ({str(exc).splitlines()[0][:160]}); the engine is checked at 1 "
                 "only. Export with fixed sizes if the robot always feeds one size.",
                 "note", 0.0)  # fmt: skip
        return None
    progress(f"dynamic dimension(s) {', '.join(dims)}: the engine is checked with every "
             f"symbolic dimension at 1 and at {n}; export with fixed sizes if the robot always "
             "feeds one size", "note", 0.0)  # fmt: skip
    return DynamicReference(dims, feeds, outputs)


def verify_dynamic(
    dyn: DynamicReference,
    backend: Any,
    artifact: Any,
    staged: Path,
    threads: int | None,
    tol: dict[str, float],
    compress_report: dict[str, Any] | None,
    progress: Progress,
) -> dict[str, Any] | None:
    """The engine (or, where it cannot run here, the bundle's ONNX) against the source at the
    second size of its dynamic dims; CheckFailedError when it differs or cannot run."""
    from robopt_compile.numerics import judge, run_onnx

    if any(not s.get("rolled_back") for s in (compress_report or {}).get("steps", [])):
        progress("dynamic dimensions: not checked at a second size after compression (the "
                 "compressed model differs from the source by design)", "note", 0.0)  # fmt: skip
        return None
    n = DYNAMIC_CHECK_SIZE
    where = f"the {backend.name} engine"
    try:
        if runs_here(artifact):
            with backend.runner(artifact, threads=threads) as r:
                got = r.infer(dyn.inputs)
        else:
            where = "the bundle's ONNX in ONNX Runtime"
            got = run_onnx(staged / "model.onnx", dyn.inputs, threads)
    except Exception as exc:  # a runtime's own error: the engine fixed the dims
        raise CheckFailedError(
            f"{where} does not run with dynamic dimension(s) {', '.join(dyn.dims)} at {n} "
            f"({str(exc).splitlines()[0][:160]}); export the model with fixed sizes."
        ) from exc
    verdict = judge(dyn.outputs, got, tol)
    verdict["inputs"] = f"seeded random inputs with every symbolic dimension at {n}"
    verdict["dims"] = dyn.dims
    if not verdict["passed"]:
        bad = verdict["outputs"][verdict["output"]]
        raise CheckFailedError(
            f"{where} does not reproduce the source model with dynamic dimension(s) "
            f"{', '.join(dyn.dims)} at {n}: output {verdict['output']!r} {bad['reason']} "
            f"(tolerance {tol}); export the model with fixed sizes."
        )
    return verdict


def verify_engine(
    backend: Any, artifact: Any, src: Any, threads: int | None, tol: dict[str, float]
) -> dict[str, Any]:
    """Run the built engine on the reference inputs and judge it against the source's outputs.

    Same rule (``numerics.judge``) and tolerance that ``robopt-bench`` applies on the robot.
    """
    from robopt_compile.numerics import judge

    with backend.runner(artifact, threads=threads) as r:
        got = r.infer(src.reference_inputs)
    verdict = judge(src.reference_outputs, got, tol)
    verdict["inputs"] = "bundle reference inputs (not used during export)"
    verdict["engine_checked"] = True
    verdict["checked"] = f"{artifact.backend} engine checked here"
    return verdict
