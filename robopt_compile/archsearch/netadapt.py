"""NetAdapt-style greedy search over the architecture space (issue 21 part 3).

From the full network, each step tries every change the space allows (a group one width down,
or, with ``step_ms``, as many widths down as it takes to save that much, as NetAdapt does; or
one residual block dropped), predicts its latency with the measured table
(``latency.py``), scores it with ``score`` (an error: lower is better, e.g. the held-out
relative L2 against the original's outputs), and keeps the change that costs the least error
per millisecond saved (with a step target, milliseconds beyond the target do not count: the
proposals that meet it compete on their error alone), until the predicted latency is within
the budget (Yang et al., ECCV 2018, with the table standing in for on-device measurement of
every candidate).

NetAdapt fine-tunes every proposal briefly before comparing them. Here, with ``refine``, the
``shortlist`` cheapest moves of a step (by their error as sliced) are scored again after a
short distillation (``search.py`` gives it) and the step keeps the best of those; the others
are judged as sliced. ``score`` and ``refine`` get the move (widths, dropped blocks) and a
function that builds the sub-network, so a memo of earlier scores (``--resume``) never
builds one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import InputError, PassError

# score(widths, dropped, build) -> error; build() -> the sub-network (an ir.Model)
Score = Callable[[dict[str, int], list[str], Callable[[], ir.Model]], float]


class OutOfTime(Exception):
    """The search's deadline passed (``search.py`` turns it into the user's message)."""


@dataclass
class Move:
    kind: str  # "width", "drop" or "start"
    what: str  # the group or the block's Add
    widths: dict[str, int]
    dropped: list[str]  # Add names of the dropped blocks
    ms: float  # predicted
    error: float
    cost: float  # error added per millisecond saved
    refined: bool = False  # error measured after the short distillation
    sliced: float = 0.0  # the error as sliced, before any distillation

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.kind,
            "what": self.what,
            "predicted_ms": self.ms,
            "error": self.error,
            "refined": self.refined,
        }


@dataclass
class SearchResult:
    widths: dict[str, int]
    dropped: list[str]
    predicted_ms: float
    error: float
    model: ir.Model
    steps: list[dict[str, Any]] = field(default_factory=list)
    last_moves: list[Move] = field(default_factory=list)  # the last step's, best first
    evaluations: int = 0
    skipped: int = 0  # moves that could not be applied (a width whose group a drop changed)
    seconds: float = 0.0
    # the current network's error as sliced and as distilled (the baselines of the next step)
    base_sliced: float = 0.0
    base_tuned: float = 0.0


def smallest_ms(table: Any, space: Any) -> float:
    """The predicted latency of the narrowest sub-network with every block dropped."""
    return table.predict(
        {w.group: w.widths[0] for w in space.widths}, [n for d in space.depths for n in d.body]
    )


def check_reachable(table: Any, space: Any, budget_ms: float) -> None:
    floor = smallest_ms(table, space)
    if budget_ms < floor:
        raise InputError(
            f"a latency budget of {budget_ms:.3g} ms is out of reach: the smallest sub-network "
            f"of this space is predicted at {floor:.3g} ms (every group at its narrowest, every "
            "residual block dropped); raise the budget."
        )


def netadapt(
    model: ir.Model,
    space: Any,
    table: Any,
    budget_ms: float,
    score: Score | Callable[[ir.Model], float],
    *,
    refine: Score | None = None,
    shortlist: int = 2,
    deadline: float | None = None,  # time.perf_counter() value
    step_ms: float | None = None,  # NetAdapt's latency reduction per step (None: one notch)
    max_steps: int = 200,
    progress: Callable[[str], None] | None = None,
    start: SearchResult | None = None,
) -> SearchResult:
    """Shrink ``model`` greedily until the table predicts at most ``budget_ms`` (module doc).
    ``score`` may also be a plain ``score(model)``. ``start``: an earlier result of the same
    search (a larger budget), taken on from where it stopped; its steps are kept."""
    from robopt_compile.archsearch.space import apply

    t0 = time.perf_counter()
    check_reachable(table, space, budget_ms)
    if getattr(getattr(score, "__code__", None), "co_argcount", 3) == 1:
        plain = score
        score = lambda w, d, build: plain(build())  # noqa: E731
    bodies = {d.add: d.body for d in space.depths}

    def predicted(ws: dict[str, int], dr: list[str]) -> float:
        return table.predict(ws, [n for a in dr for n in bodies[a]])

    def builder(ws: dict[str, int], dr: list[str]) -> Callable[[], ir.Model]:
        return lambda: apply(model, space, ws, dr)

    def in_time() -> None:
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime(f"{len(result.steps)} steps, {result.evaluations} candidates")

    # Two baselines: a sliced candidate's error is compared with the current network's error
    # as sliced, a distilled one's with the current network's distilled error.
    if start is None:
        widths = {w.group: w.size for w in space.widths}
        dropped: list[str] = []
        result = SearchResult(dict(widths), [], predicted(widths, dropped), 0.0, model)
        result.error = score(widths, dropped, lambda: model)  # type: ignore[call-arg]
        result.evaluations = 1
        result.base_sliced = result.base_tuned = result.error
    else:
        result = start
        widths, dropped = dict(start.widths), list(start.dropped)
    current = result.predicted_ms
    while current > budget_ms and len(result.steps) < max_steps:
        # the last step saves only what the budget still needs (no overshoot)
        target = min(step_ms, current - budget_ms) if step_ms else None

        def credit(saved: float, cap: float = target or current - budget_ms) -> float:
            # NetAdapt compares the proposals that meet the step's target by their error
            # alone: time saved beyond the target earns nothing (a block drop that saves twice
            # the target is not half as costly), nor beyond the budget (no pay to overshoot).
            return min(saved, cap)

        options = []
        for w in space.widths:
            i = w.widths.index(widths[w.group])
            if i == 0:
                continue
            # one notch narrower; with step_ms, NetAdapt's per-step target: the widest width
            # of this group that saves step_ms (or its narrowest, if none does)
            j = i - 1
            if target:
                while j > 0 and predicted({**widths, w.group: w.widths[j]}, dropped) > (
                    current - target
                ):
                    j -= 1
            options.append(("width", w.group, {**widths, w.group: w.widths[j]}, dropped))
        options += [
            ("drop", d.add, widths, [*dropped, d.add]) for d in space.depths if d.add not in dropped
        ]
        moves: list[Move] = []
        for kind, what, ws, dr in options:
            ms = predicted(ws, dr)
            if current - ms <= 0:
                continue  # saves nothing by the table
            in_time()
            try:
                err = score(ws, dr, builder(ws, dr))  # type: ignore[call-arg]
            except PassError:  # the width no longer applies once a coupled block is gone
                result.skipped += 1
                continue
            result.evaluations += 1
            cost = (err - result.base_sliced) / credit(current - ms)
            moves.append(Move(kind, what, ws, dr, ms, err, cost, sliced=err))
        if not moves:
            break
        moves.sort(key=lambda m: m.cost)
        if refine is not None and shortlist > 0:
            for m in moves[:shortlist]:
                in_time()
                m.error = refine(m.widths, m.dropped, builder(m.widths, m.dropped))
                m.cost, m.refined = (m.error - result.base_tuned) / credit(current - m.ms), True
            moves[:shortlist] = sorted(moves[:shortlist], key=lambda m: m.cost)
        best = moves[0]
        current = best.ms
        widths, dropped = best.widths, best.dropped
        result.steps.append(best.to_json())
        result.last_moves = moves
        result.widths, result.dropped, result.predicted_ms = dict(widths), list(dropped), best.ms
        tuned = (
            best.error if best.refined else (result.base_tuned + (best.sliced - result.base_sliced))
        )
        result.base_sliced, result.base_tuned, result.error = best.sliced, tuned, best.error
        if progress is not None:
            progress(
                f"netadapt: step {len(result.steps)}: {best.kind} {best.what} -> "
                f"{best.ms:.3g} ms predicted, error {best.error:.4g}"
            )
    if current > budget_ms:
        raise InputError(
            f"the search stopped at {current:.3g} ms predicted, above the budget of "
            f"{budget_ms:.3g} ms, after {len(result.steps)} steps ({result.skipped} moves could "
            "not be applied): raise the budget."
        )
    result.model = apply(model, space, result.widths, result.dropped)
    result.seconds += time.perf_counter() - t0
    return result
