"""The one table of precision facts: what each ``--precision`` computes in, stores, risks and needs.

Every other place reads it: the compile checks (is this precision known, does the board have
its number format), the roofline and the planner (compute format, bytes per weight, accuracy
risk), the quantizer (calibration data, mixed precision by graph surgery), the engine check
(tolerance) and recipe validation. Which *backend* builds a precision, and with which pass, is a
backend fact: ``Backend.precisions`` and ``Backend.quantizers`` in ``targets/``.

Standard library only, so hardware profiles and passes can read it without the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robopt_compile.errors import UnknownNameError

# The engine must reproduce the source model's outputs this closely on the reference inputs
# (a quantized engine is held instead to the tolerance its measured quality earned).
EXACT = {"cosine_min": 0.9999, "atol": 1e-3, "rtol": 1e-3}
# bf16 keeps 8 mantissa bits: ~0.4% relative error per op, accumulating over layers.
BF16 = {"cosine_min": 0.995, "atol": 5e-2, "rtol": 5e-2}


@dataclass(frozen=True, slots=True)
class Precision:
    """One ``--precision`` value.

    Attributes:
        name: as the user types it.
        compute: the hardware number format it computes in (what a board profile lists, what
            the roofline assumes); weight-only formats dequantize to fp32.
        weight_bytes: bytes per weight as stored (weight-only int4 packs two per byte plus
            scales).
        risk: accuracy risk order (the planner tries riskier plans later).
        calibrated: its quantizer reads calibration data (static int8).
        mixed: its Q/DQ graph allows per-layer mixed precision by graph surgery.
        tolerance: what the engine check holds it to before any measured tolerance.
    """

    name: str
    compute: str
    weight_bytes: float
    risk: int
    calibrated: bool = False
    mixed: bool = False
    tolerance: dict[str, float] = field(default_factory=lambda: dict(EXACT))


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "fp32", 4.0, 0),
        Precision("fp16", "fp16", 2.0, 1),
        Precision("bf16", "bf16", 2.0, 1, tolerance=dict(BF16)),
        Precision("int8", "int8", 1.0, 2, calibrated=True, mixed=True),
        Precision("int8-dynamic", "int8", 1.0, 2),
        Precision("int8-weight", "fp32", 1.05, 1),
        Precision("int4-weight", "fp32", 0.55, 3),
    )
}

# Number formats robopt computes in, and those a board may list (fp8/fp4: hardware has them,
# robopt does not produce them yet; int4: compute peaks some boards quote).
COMPUTE_FORMATS = (*dict.fromkeys(p.compute for p in PRECISIONS.values()), "int4")
HARDWARE_FORMATS = (*COMPUTE_FORMATS, "fp8", "fp4")


def get_precision(name: str) -> Precision:
    """The table entry for ``name``.

    Raises:
        UnknownNameError: not a robopt precision (the message lists them).
    """
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UnknownNameError("precision", name, list(PRECISIONS)) from None
