"""``.onnx`` sources: loaded (external data beside the file), checked, old files brought up
to date (``legacy_onnx.py``, then checked against the original file), and their reference
outputs taken from ONNX Runtime on the unmodified file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robopt_compile import ir as rir
from robopt_compile.compile.source import (
    PARITY_TOLERANCE,
    REFERENCE_SEED_OFFSET,
    SourceModel,
    check_model,
    parity_failed,
)
from robopt_compile.errors import ModelLoadError
from robopt_compile.feeds import check_feeds_match


def load_onnx(source: str, seed: int, given: dict[str, np.ndarray] | None) -> SourceModel:
    """The ``SourceModel`` of an ``.onnx`` file (module doc)."""
    from robopt_compile import numerics
    from robopt_compile.compile import legacy_onnx
    from robopt_compile.numerics import random_feeds, run_onnx

    original = rir.load(source)
    check_model(original, source)
    model, legacy_notes, parity_fig = original, [], {}
    if legacy_onnx.needs_modernizing(original):
        model, legacy_notes, changes = legacy_onnx.modernize(original, source)
        check_model(model, f"{source} (modernized)")
    specs = rir.input_specs(model)
    if given is not None:
        check_feeds_match(given, specs, "--reference-inputs")
        feeds = given
    else:
        feeds = random_feeds(specs, seed=seed + REFERENCE_SEED_OFFSET)
    try:
        # the original file in ONNX Runtime is the reference, also for a modernized model
        outputs = run_onnx(original, feeds)
    except Exception as exc:  # onnxruntime's errors share no base class: one line
        what = "the given reference inputs" if given is not None else "random inputs"
        raise ModelLoadError(
            f"{source}: ONNX Runtime cannot run the model on {what} "
            f"({str(exc).splitlines()[0][:200]}). If the model needs valid values (indices, "
            "masks), pass real samples with --reference-inputs FILE.npz."
        ) from exc
    if legacy_notes:
        parity_fig = numerics.judge(outputs, run_onnx(model, feeds), PARITY_TOLERANCE)
        parity_fig["modernized"] = changes
        if not parity_fig["passed"]:
            parity_failed(parity_fig, source, "the original file in ONNX Runtime after "
                          f"{'; '.join(legacy_notes)}", f"Re-export the model at opset "
                          f"{legacy_onnx.TARGET_OPSET}.")  # fmt: skip
    return SourceModel(
        model=model,
        name=Path(source).stem,
        source=source,
        kind="onnx",
        exporter=None,
        reference_inputs=feeds,
        reference_outputs=outputs,
        parity={"modernize": parity_fig} if parity_fig else {},
        notes=[
            *legacy_notes,
            "reference outputs come from ONNX Runtime on the unmodified input ONNX"
            + (
                ""
                if given is not None
                else " (random inputs: pass --reference-inputs with "
                "real samples for meaningful fidelity)"
            ),
        ],
    )
