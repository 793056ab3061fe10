"""The report's verdict: the pass/fail criteria found in a bundle and its results.

Both reports open with ``verdict``: FAIL when a check failed, PENDING when the engine itself has
not been checked yet (``pending_engine_check``), else PASS; warnings never fail a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from robopt_compile.report.data import BundleData, bench_results, control_results
from robopt_compile.report.format import dicts, dig, fnum, isnum, pct, x100


@dataclass
class Check:
    """One criterion of the verdict and how the bundle fared."""

    name: str
    ok: bool | None  # None: a warning, not a failure
    detail: str


def _checks(d: BundleData) -> list[Check]:
    """Pass/fail criteria found in the bundle and its results (warnings have ok=None)."""
    checks: list[Check] = []
    eng = dig(d.manifest, "parity.engine", {})
    if isinstance(eng.get("passed"), bool):
        checked = eng.get("engine_checked", True)
        where = "engine" if checked else "ONNX in ONNX Runtime (the engine was not run)"
        checks.append(Check("engine fidelity at compile time" if checked
                            else "ONNX fidelity at compile time", eng["passed"],
                            f"{where}: cosine {fnum(eng.get('cosine'), '.6f')}, "
                            f"max abs {fnum(eng.get('max_abs'), '.2e')}"))  # fmt: skip
    for name, r in bench_results(d):
        if isinstance(dig(r, "fidelity.passed"), bool):
            checks.append(Check(f"fidelity on {name}", r["fidelity"]["passed"],
                                f"cosine {fnum(dig(r, 'fidelity.cosine'), '.6f')} on "
                                f"{dig(r, 'machine.cpu_model', '?')}"))  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        crit = r.get("criteria")
        if isinstance(crit, dict) and isinstance(crit.get("passed"), bool):
            detail = "; ".join(str(f) for f in crit.get("failures") or []) or (
                f"return drop {pct(crit.get('return_drop'))} (max "
                f"{pct(crit.get('max_return_drop'))}), success drop "
                f"{fnum(x100(crit.get('success_drop')), '.1f')} points"
            )
            checks.append(Check(f"closed loop {name}", crit["passed"], detail))
        for p in dicts(r.get("paired")):
            if p.get("verdict") == "worse":
                checks.append(Check(f"closed loop {name}", None,
                                    f"{p.get('candidate')} is worse than {p.get('reference')} "
                                    f"(p = {fnum(p.get('p_value'), '.3g')})"))  # fmt: skip
    acts = dig(d.manifest, "parity.actions", {})
    if isinstance(acts.get("passed"), bool):
        detail = (f"{pct(acts.get('token_agreement'))} agree with the fp32 torch model on "
                  f"{acts.get('observations')} held-out observations")  # fmt: skip
        checks.append(Check("action tokens at compile time", acts["passed"], detail))
    q = dig(d.report, "quantization")
    if isinstance(q, dict) and q.get("rolled_back"):
        checks.append(Check("quantization", None, str(q.get("rollback_reason", "rolled back"))))
    if isinstance(q, dict) and dig(q, "data.random"):
        checks.append(Check("quantization", None, "calibrated on random data"))
    for name, c in control_results(d):
        if isnum(c.get("misses")) and c["misses"] > 0:
            checks.append(Check(f"control loop {name}", None,
                                f"{c['misses']} deadline misses in "
                                f"{c.get('ticks', c.get('runs', '?'))} ticks at "
                                f"{fnum(c.get('rate_hz'), 'g')} Hz"))  # fmt: skip
    return checks


def pending_engine_check(d: BundleData) -> str | None:
    """What is left to check on the device: the compile could not run the engine (a deferred
    TensorRT build, a cross-compiled library) and no device result has checked it since."""
    eng = dig(d.manifest, "parity.engine", {})
    if eng.get("engine_checked", True) is not False:
        return None
    if any(isinstance(dig(r, "fidelity.passed"), bool) for _, r in bench_results(d)):
        return None  # robopt-bench checked the engine on the device since (results/)
    return str(eng.get("checked") or "ONNX checked in ONNX Runtime; engine not run here: "
               "checked on the device by robopt-bench")  # fmt: skip


def verdict(d: BundleData) -> tuple[str, str, list[Check]]:
    """(status, one-line verdict without markup, checks). Status is FAIL when a check failed,
    PENDING when none failed but the engine itself was not checked yet, else PASS."""
    checks = _checks(d)
    failed = [c for c in checks if c.ok is False]
    warnings = [c for c in checks if c.ok is None]
    m = d.manifest
    head = (
        f"{dig(m, 'model.name', '?')} on {dig(m, 'target.profile', '?')} "
        f"({m.get('backend', '?')} {m.get('precision', '?')})"
    )
    if failed:
        bits = ["failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)]
    else:
        n = sum(1 for c in checks if c.ok)
        bits = [f"{n} check(s) passed" if n else "no pass/fail criteria"]
    bench = bench_results(d)
    if bench:
        bits.append(f"p50 {fnum(dig(bench[0][1], 'latency.p50_ms'), '.3g')} ms ({bench[0][0]})")
    if warnings:
        bits.append(f"{len(warnings)} warning(s)")
    pending = None if failed else pending_engine_check(d)
    if pending:
        bits.insert(0, pending)
    status = "FAIL" if failed else "PENDING" if pending else "PASS"
    return status, f"{status} — {head}: " + "; ".join(bits), checks
