"""The planner: which optimizations pay off on this board, under the user's bounds.

The user states criteria (``OptimizationCriteria``: latency, accuracy, size and memory bounds,
an objective, the techniques allowed, a search budget). The planner

1. **proposes** candidate plans (backend x precision x pruning) from the board profile (which
   precisions it runs, which backends build here) and the model's analysis facts;
2. **predicts** each plan's latency with the roofline estimate of the analysis passes,
   corrected by the ratio measured/estimated that earlier measurements of the same backend and
   precision gave on this machine (``history``), its size from the weight bytes per precision,
   and its accuracy risk from the technique;
3. **rejects** plans that cannot meet a bound, with the reason (a size bound is a prediction
   it can trust; a latency prediction only rejects when it misses by more than its error);
4. **ranks** the rest by the objective and hands them to the search, which builds and measures
   the most promising ones and keeps the best that meets every bound, plus the Pareto front.

Every decision is a ``Decision`` with its reason; the report lists them all. This module does
no I/O and imports nothing heavy: predictions are pure functions of facts (tested on synthetic
facts), and the search (``robopt_compile.plan.search``) does the building and measuring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from robopt_compile.compile.options import parse_duration
from robopt_compile.errors import InputError
from robopt_compile.precision import PRECISIONS

OBJECTIVES = ("latency", "size", "memory")
TECHNIQUES = ("quantize", "prune", "arch")
PERCENTILES = ("p50", "p99")
PRUNE_RATIOS = (0.25, 0.5)
ARCH_RATIOS = (0.5,)  # --search-arch latency=R x of the full network (archsearch/search.py)
# A roofline estimate without a measurement to correct it can be off by this factor either way
# (measured here: ORT runs the CNN at 8-20x its roofline time on one core): never reject on it.
UNCORRECTED_ERROR = 50.0
CORRECTED_ERROR = 1.5  # after a measurement on this machine for this backend and precision


@dataclass(frozen=True)
class OptimizationCriteria:
    """What the user needs. ``None`` bounds are not checked."""

    max_latency_ms: float | None = None
    latency_percentile: str = "p50"
    max_accuracy_drop: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    objective: str = "latency"
    techniques: tuple[str, ...] = ("quantize",)
    search_budget_s: float | None = None
    precisions: tuple[str, ...] | None = None  # restrict the precisions tried

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"--objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}."
            )
        if self.latency_percentile not in PERCENTILES:
            raise InputError(f"latency percentile {self.latency_percentile!r}: choose p50 or p99.")
        bad = [t for t in self.techniques if t not in TECHNIQUES]
        if bad:
            raise InputError(
                f"--techniques {','.join(bad)}: unknown; choose from {', '.join(TECHNIQUES)}."
            )
        for name in ("max_latency_ms", "max_accuracy_drop", "max_size_mb", "max_memory_mb",
                     "search_budget_s"):  # fmt: skip
            v = getattr(self, name)
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if v is not None and not (number and math.isfinite(v) and v >= 0):
                raise InputError(f"{name.replace('_', '-')} must be a number >= 0, not {v!r}.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_budget(text: str) -> float:
    """``90s``, ``10m``, ``1.5h`` or a plain number of seconds."""
    return parse_duration(text, "--search-budget")


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str
    prune: float | None = None  # channel pruning ratio
    arch: float | None = None  # architecture search: latency ratio of the full network

    @property
    def label(self) -> str:
        p = f" + prune {self.prune:.0%}" if self.prune else ""
        a = f" + arch {self.arch:g}x" if self.arch else ""
        return f"{self.backend} {self.precision}{p}{a}"

    def key(self) -> str:
        a = f"/arch{self.arch}" if self.arch else ""
        return f"{self.backend}/{self.precision}/{self.prune or 0}{a}"

    @property
    def work(self) -> float:
        """The share of the full network's arithmetic (pruning: both channel counts) or of
        its latency (the architecture search's budget) the plan keeps."""
        if self.arch:
            return self.arch
        return (1.0 - self.prune) ** 2 if self.prune else 1.0


@dataclass
class Prediction:
    latency_ms: float
    latency_low_ms: float  # the prediction's error band
    latency_high_ms: float
    corrected: bool  # a measurement on this machine corrected the roofline
    size_mb: float
    memory_mb: float
    risk: int


@dataclass
class Decision:
    candidate: Candidate
    verdict: str  # "propose" | "reject"
    reason: str
    prediction: Prediction | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.candidate.label,
            "backend": self.candidate.backend,
            "precision": self.candidate.precision,
            "prune": self.candidate.prune,
            "arch": self.candidate.arch,
            "verdict": self.verdict,
            "reason": self.reason,
            "prediction": None if self.prediction is None else asdict(self.prediction),
        }


@dataclass
class Facts:
    """What the planner needs to know about the model (from the analysis passes)."""

    macs: float
    weight_mb: float
    peak_activation_mb: float
    roofline_ms: Mapping[str, float]  # compute precision -> roofline estimate on the target
    unsupported: Mapping[str, int] = field(default_factory=dict)  # backend -> unsupported ops
    prunable: bool = True  # channel pruning finds at least one prunable group
    conv_mac_share: float = 0.0  # Conv/ConvTranspose share of the MACs

    @classmethod
    def from_analysis(
        cls, by_precision: Mapping[str, Mapping[str, Any]], prunable: bool = True
    ) -> Facts:
        # Facts that do not depend on the precision (ops, weights, support) from fp32's
        # analysis, whatever order the dict came in.
        first_facts = by_precision.get("fp32") or next(iter(by_precision.values()))
        first = first_facts["summary"]
        by_op = (first_facts.get("flops") or {}).get("by_op", {})
        total = sum(float(v.get("macs", 0)) for v in by_op.values()) or 1.0
        conv = sum(float(by_op.get(o, {}).get("macs", 0)) for o in ("Conv", "ConvTranspose"))
        return cls(
            macs=float(first.get("macs", 0)),
            weight_mb=float(first.get("weight_mb", 0.0)),
            peak_activation_mb=float(first.get("peak_activation_mb", 0.0)),
            roofline_ms={
                p: float(f["summary"].get("estimated_latency_ms", float("nan")))
                for p, f in by_precision.items()
            },
            unsupported=dict(first.get("unsupported_ops", {})),
            prunable=prunable,
            conv_mac_share=conv / total,
        )


@dataclass
class History:
    """Earlier measurements on this machine and earlier outcomes for this model family.

    ``ratios[(backend, precision)]`` is measured latency / roofline estimate (median of the
    runs recorded); ``broke_accuracy`` lists precisions that broke the accuracy bound before
    for this model or family (tried last).
    """

    ratios: dict[tuple[str, str], float] = field(default_factory=dict)
    broke_accuracy: set[str] = field(default_factory=set)
    measured_ms: dict[str, float] = field(default_factory=dict)  # candidate key -> latency


def candidates(
    backends: Sequence[str],
    backend_precisions: Mapping[str, Sequence[str]],
    profile_precisions: Iterable[str],
    criteria: OptimizationCriteria,
) -> list[Candidate]:
    """Every (backend, precision, pruning) plan the target and the allowed techniques admit."""
    hw = set(profile_precisions)
    out = []
    for b in backends:
        for p in backend_precisions.get(b, ()):
            if p not in PRECISIONS or PRECISIONS[p].compute not in hw:
                continue
            if p != "fp32" and "quantize" not in criteria.techniques:
                continue
            if criteria.precisions is not None and p not in criteria.precisions:
                continue
            out.append(Candidate(b, p))
            if "prune" in criteria.techniques:
                out.extend(Candidate(b, p, r) for r in PRUNE_RATIOS)
            if "arch" in criteria.techniques:
                out.extend(Candidate(b, p, arch=r) for r in ARCH_RATIOS)
    return out


def predict(c: Candidate, facts: Facts, history: History) -> Prediction:
    """Latency, size, memory and accuracy risk of a plan, before building it.

    Without a measurement of the plan's own backend and precision, one of the backend's fp32
    plan corrects it (the runtime's overhead and efficiency carry over; the precision's
    arithmetic speed-up comes from the roofline).
    """
    keep = 1.0 - (c.prune or 0.0) if not c.arch else c.arch**0.5
    # Channel pruning at ratio r keeps (1-r) of both the in- and out-channels of inner layers.
    work = c.work
    compute = PRECISIONS[c.precision].compute
    roof = facts.roofline_ms.get(compute) or facts.roofline_ms.get("fp32") or float("nan")
    ratio = history.ratios.get((c.backend, c.precision))
    if ratio is None:
        ratio = history.ratios.get((c.backend, "fp32"))
    corrected = ratio is not None
    measured = history.measured_ms.get(c.key())
    if measured is not None:
        lat, err = measured, 1.1
    elif corrected:
        lat, err = roof * ratio * work, CORRECTED_ERROR
    else:
        lat, err = roof * work, UNCORRECTED_ERROR
    wb = PRECISIONS[c.precision].weight_bytes / 4.0
    size = facts.weight_mb * wb * work
    act_bytes = 1.0 if c.precision in ("int8", "int8-dynamic") else 0.5 if compute in (
        "fp16", "bf16") else 1.0  # fmt: skip
    memory = size + facts.peak_activation_mb * act_bytes * keep
    risk = (
        PRECISIONS[c.precision].risk
        + (1 if c.prune or c.arch else 0)
        + (1 if (c.prune or 0) >= 0.5 or (c.arch or 1) <= 0.5 else 0)
    )
    if c.precision in history.broke_accuracy:
        risk += 10
    return Prediction(
        latency_ms=lat,
        latency_low_ms=lat / err,
        latency_high_ms=lat * err,
        corrected=corrected or measured is not None,
        size_mb=size,
        memory_mb=memory,
        risk=risk,
    )


def _objective_value(p: Prediction, objective: str) -> float:
    return {"latency": p.latency_ms, "size": p.size_mb, "memory": p.memory_mb}[objective]


def plan(
    cands: Sequence[Candidate], facts: Facts, criteria: OptimizationCriteria, history: History
) -> list[Decision]:
    """Predict, reject what cannot meet a bound (with the reason), rank the rest.

    Proposed plans come first, best predicted objective first; among plans within 10% of each
    other on the objective, the lower accuracy risk goes first (it is likelier to pass the
    accuracy guard, so fewer builds are wasted).
    """
    proposed: list[Decision] = []
    rejected: list[Decision] = []
    for c in cands:
        if (c.prune or c.arch) and not facts.prunable:
            rejected.append(Decision(c, "reject", "no prunable channel group in this model"))
            continue
        if facts.unsupported.get(c.backend):
            n = facts.unsupported[c.backend]
            rejected.append(Decision(c, "reject", f"{n} operator(s) {c.backend} lacks"))
            continue
        if c.precision == "int8-dynamic" and facts.conv_mac_share > 0.5:
            rejected.append(Decision(c, "reject", (
                f"dynamic int8 leaves Conv in fp32 and Conv holds {facts.conv_mac_share:.0%} of "
                "the MACs (the int8-dynamic pass refuses conv nets)")))  # fmt: skip
            continue
        p = predict(c, facts, history)
        why = None
        if criteria.max_size_mb is not None and p.size_mb > criteria.max_size_mb:
            why = f"predicted size {p.size_mb:.3g} MB > --max-size-mb {criteria.max_size_mb:g}"
        elif criteria.max_memory_mb is not None and p.memory_mb > criteria.max_memory_mb:
            why = (f"predicted memory {p.memory_mb:.3g} MB > --max-memory-mb "
                   f"{criteria.max_memory_mb:g}")  # fmt: skip
        elif criteria.max_latency_ms is not None and p.latency_low_ms > criteria.max_latency_ms:
            why = (
                f"even its optimistic latency {p.latency_low_ms:.3g} ms misses --max-latency-ms "
                f"{criteria.max_latency_ms:g}"
                + (" (corrected by a measurement here)" if p.corrected else "")
            )
        if why:
            rejected.append(Decision(c, "reject", why, p))
            continue
        reason = (
            f"predicted {p.latency_ms:.3g} ms ("
            + ("corrected by measurements here" if p.corrected else "roofline, uncorrected")
            + f"), {p.size_mb:.3g} MB, accuracy risk {p.risk}"
        )
        if c.precision in history.broke_accuracy:
            reason += "; broke the accuracy bound before: tried last"
        proposed.append(Decision(c, "propose", reason, p))

    def rank(d: Decision) -> tuple[float, int, float]:
        assert d.prediction is not None
        v = _objective_value(d.prediction, criteria.objective)
        bucket = math.floor(math.log(max(v, 1e-12), 1.1))  # 10% buckets
        return (d.prediction.risk >= 10, bucket, d.prediction.risk, v)  # type: ignore[return-value]

    proposed.sort(key=rank)
    if criteria.objective == "latency":
        proposed = _baselines_first(proposed, history)
    return proposed + rejected


def _baselines_first(proposed: list[Decision], history: History) -> list[Decision]:
    """Each backend's fp32 plan first while nothing was measured on that backend.

    An uncorrected roofline cannot rank backends (it knows no runtime's overhead), and a
    backend's fp32 build is cheap and carries no accuracy risk: measuring it first corrects
    every later prediction for that backend, and it is itself often the fastest plan for a
    small model, where runtime overhead, not arithmetic, sets the latency.
    """
    known = {b for b, _ in history.ratios} | {k.split("/")[0] for k in history.measured_ms}
    first = []
    for d in proposed:
        c = d.candidate
        if c.precision == "fp32" and not c.prune and not c.arch and c.backend not in known:
            d.reason += f"; measured first: it calibrates the predictions for {c.backend}"
            first.append(d)
            known.add(c.backend)
    return first + [d for d in proposed if d not in first]


# --- choosing among measured plans -------------------------------------------------------------


@dataclass
class Measured:
    """A plan after it was built and measured."""

    candidate: Candidate
    latency_ms: dict[str, float]  # "p50", "p99"
    size_mb: float
    memory_mb: float | None
    accuracy_drop: float | None  # None: not judged (fp32)
    bundle: str | None = None
    rolled_back: bool = False  # the guard fell back to fp32: the plan did not apply
    note: str = ""
    artifact: str | None = None  # the bundle's tree in the store, when a session keeps it
    # What accuracy_drop measures: one measure for every plan of a search
    # (robopt_compile/plan/measure.py): the task's drop with --eval, else the engine's
    # relative L2 against the fp32 model on the search's reference inputs.
    accuracy_metric: str | None = None
    applied: str | None = None  # what the engine really is, when it differs from the label
    # Set when a worker of other hardware than this machine measured it (--executor): its
    # latency is shown, never compared with this machine's (docs/SCALE.md).
    measured_on: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "candidate": self.candidate.label}


def violations(m: Measured, criteria: OptimizationCriteria) -> list[str]:
    """Every bound a measured plan breaks (empty: it meets them all)."""
    out = []
    lat = m.latency_ms.get(criteria.latency_percentile)
    if criteria.max_latency_ms is not None and lat is not None and lat > criteria.max_latency_ms:
        out.append(
            f"{criteria.latency_percentile} {lat:.3g} ms > --max-latency-ms "
            f"{criteria.max_latency_ms:g}"
        )
    if (
        criteria.max_accuracy_drop is not None
        and m.accuracy_drop is not None
        and m.accuracy_drop > criteria.max_accuracy_drop
    ):
        out.append(
            f"accuracy drop {m.accuracy_drop:.3g} > --max-accuracy-drop "
            f"{criteria.max_accuracy_drop:g}"
        )
    if m.rolled_back:
        out.append("the accuracy guard rolled it back to fp32")
    if m.measured_on is not None:
        out.append(f"measured on other hardware ({m.measured_on}): not comparable")
    if criteria.max_size_mb is not None and m.size_mb > criteria.max_size_mb:
        out.append(f"size {m.size_mb:.3g} MB > --max-size-mb {criteria.max_size_mb:g}")
    if (
        criteria.max_memory_mb is not None
        and m.memory_mb is not None
        and m.memory_mb > criteria.max_memory_mb
    ):
        out.append(f"memory {m.memory_mb:.3g} MB > --max-memory-mb {criteria.max_memory_mb:g}")
    return out


def objective_of(m: Measured, criteria: OptimizationCriteria) -> float:
    if criteria.objective == "size":
        return m.size_mb
    if criteria.objective == "memory":
        return m.memory_mb if m.memory_mb is not None else float("inf")
    return m.latency_ms.get(criteria.latency_percentile, float("inf"))


def pareto(measured: Sequence[Measured], criteria: OptimizationCriteria) -> list[Measured]:
    """Plans no other plan beats on both latency and accuracy drop (and ties on neither)."""
    pct = criteria.latency_percentile

    def pt(m: Measured) -> tuple[float, float]:
        return (m.latency_ms.get(pct, float("inf")), m.accuracy_drop or 0.0)

    # A plan the guard rolled back to fp32 was not delivered: it is not on the front.
    real = [m for m in measured if not m.rolled_back and m.measured_on is None]
    out = []
    for m in real:
        a = pt(m)
        dominated = any(
            (b := pt(o))[0] <= a[0] and b[1] <= a[1] and b != a for o in real if o is not m
        )
        if not dominated:
            out.append(m)
    return sorted(out, key=pt)


def choose(
    measured: Sequence[Measured], criteria: OptimizationCriteria
) -> tuple[Measured | None, list[dict[str, Any]]]:
    """The best plan that meets every bound, and why each measured plan was kept or not."""
    feasible = []
    notes = []
    for m in measured:
        v = violations(m, criteria)
        notes.append({"plan": m.candidate.label, "meets_bounds": not v, "violations": v})
        if not v:
            feasible.append(m)
    best = min(feasible, key=lambda m: (objective_of(m, criteria), m.accuracy_drop or 0.0),
               default=None)  # fmt: skip
    return best, notes


def with_measurement(
    history: History, c: Candidate, latency_ms: float, roofline_ms: float
) -> History:
    """History after one more measurement: the plan's latency and its backend's correction."""
    ratios = dict(history.ratios)
    if roofline_ms > 0 and math.isfinite(roofline_ms):
        ratios[(c.backend, c.precision)] = latency_ms / (roofline_ms * c.work)
    return replace(history, ratios=ratios, measured_ms={**history.measured_ms, c.key(): latency_ms})
