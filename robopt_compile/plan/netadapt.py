"""NetAdapt-style greedy search over the architecture space (issue 21 part 3, first cut).

From the full network, each step tries every one-notch change the space allows (a group one
width down, or one residual block dropped), predicts its latency with the measured table
(``latency_lut.py``), scores it with ``score`` (an error: lower is better, e.g. the held-out
relative L2 against the original's outputs), and keeps the change that costs the least error
per millisecond saved, until the predicted latency is within the budget (Yang et al., ECCV
2018, with the table standing in for on-device measurement of every candidate).

Not yet: NetAdapt's short fine-tune of each candidate (here candidates are scored as sliced,
before any distillation), closed-loop scoring of the finalists, and ``--search-arch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import InputError, PassError


@dataclass
class SearchResult:
    widths: dict[str, int]
    dropped: list[str]  # Add names of the dropped blocks
    predicted_ms: float
    error: float
    model: ir.Model
    steps: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    skipped: int = 0  # moves that could not be applied (a width whose group a drop changed)
    seconds: float = 0.0


def smallest_ms(table: Any, space: Any) -> float:
    """The predicted latency of the narrowest sub-network with every block dropped."""
    return table.predict({w.group: w.widths[0] for w in space.widths},
                         [n for d in space.depths for n in d.body])  # fmt: skip


def netadapt(
    model: ir.Model,
    space: Any,
    table: Any,
    budget_ms: float,
    score: Callable[[ir.Model], float],
    *,
    max_steps: int = 200,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Shrink ``model`` greedily until the table predicts at most ``budget_ms`` (module doc)."""
    from robopt_compile.plan.archspace import apply

    t0 = time.perf_counter()
    floor = smallest_ms(table, space)
    if budget_ms < floor:
        raise InputError(
            f"a latency budget of {budget_ms:.3g} ms is out of reach: the smallest sub-network "
            f"of this space is predicted at {floor:.3g} ms (every group at its narrowest, every "
            "residual block dropped); raise the budget."
        )
    bodies = {d.add: d.body for d in space.depths}
    widths = {w.group: w.size for w in space.widths}
    dropped: list[str] = []

    def predicted(ws: dict[str, int], dr: list[str]) -> float:
        return table.predict(ws, [n for a in dr for n in bodies[a]])

    current = predicted(widths, dropped)
    result = SearchResult(dict(widths), [], current, score(model), model)
    result.evaluations = 1
    while current > budget_ms and len(result.steps) < max_steps:
        moves = []
        for w in space.widths:
            i = w.widths.index(widths[w.group])
            if i > 0:  # one notch narrower
                moves.append(("width", w.group, {**widths, w.group: w.widths[i - 1]}, dropped))
        moves += [("drop", d.add, widths, [*dropped, d.add]) for d in space.depths
                  if d.add not in dropped]  # fmt: skip
        best: _Move | None = None
        for kind, what, ws, dr in moves:
            ms = predicted(ws, dr)
            if current - ms <= 0:
                continue  # saves nothing by the table
            try:
                sub = apply(model, space, ws, dr)
            except PassError:  # the width no longer applies once a coupled block is gone
                result.skipped += 1
                continue
            err = score(sub)
            result.evaluations += 1
            move = _Move(kind, what, ws, dr, ms, err, sub, (err - result.error) / (current - ms))
            if best is None or move.cost < best.cost:
                best = move
        if best is None:
            break
        current = best.ms
        widths, dropped = best.widths, best.dropped
        result.steps.append({"change": best.kind, "what": best.what, "predicted_ms": best.ms,
                             "error": best.error})  # fmt: skip
        result.widths, result.dropped, result.predicted_ms = dict(widths), list(dropped), best.ms
        result.error, result.model = best.error, best.model
        if progress is not None:
            progress(f"netadapt: step {len(result.steps)}: {best.kind} {best.what} -> "
                     f"{best.ms:.3g} ms predicted, error {best.error:.4g}")  # fmt: skip
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class _Move:
    kind: str  # "width" or "drop"
    what: str  # the group or the block's Add
    widths: dict[str, int]
    dropped: list[str]
    ms: float  # predicted
    error: float
    model: ir.Model
    cost: float  # error added per millisecond saved
