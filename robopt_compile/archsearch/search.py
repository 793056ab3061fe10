"""``--search-arch``: search a policy's widths and depth under a latency budget (issue 21).

One search, as the compress stage runs it (``compile/compress.py``), before the recovery
distillation (``--distill``) and quantization:

1. the space on the ONNX graph (``space.py``) and the latency table measured in ONNX Runtime
   on this machine (``latency.py``), its entries kept in the store's build cache;
2. the budget: ``latency=0.5x`` of the full network as the table measured it, or
   ``latency-ms=3``; out of reach -> one line with the smallest sub-network's prediction;
3. NetAdapt's greedy steps (``netadapt.py``): every one-notch move scored by the held-out
   relative L2 of its outputs against the original's, the ``shortlist`` cheapest re-scored
   after ``tune`` steps of distillation on the search's training share of the calibration
   data; scored on the search's own validation share, never the stage's held-out samples;
4. finalists (``finalists.py``): the ``finalists`` best moves of the last step that meet the
   budget, each distilled ``4 x tune`` steps, timed whole and, with ``--eval task``, driven
   through the accuracy guard's episodes; the winner times within the budget and has the best
   task success (then the least error). When every finalist times whole over the budget, the
   table is aimed lower by the measured ratio and NetAdapt goes on from where it stopped (at
   most twice); the trajectory and all finalists make the report's latency / error / success
   front.

Every scored candidate is kept in the store's build cache (stage ``arch-candidate``, keyed by
the model, the data, the move and the settings), so a search killed at any point, rerun
(``--resume``), scores nothing it had finished; ``--search-budget`` bounds the time and says
so in one line when it runs out.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopt_compile.errors import InputError

KEYS = {"latency", "latency-ms", "tune", "shortlist", "finalists", "lr", "batch", "steps"}


@dataclass(frozen=True)
class ArchSpec:
    ratio: float | None = None  # of the full network's measured latency
    ms: float | None = None
    tune: int = 30  # distillation steps for each shortlisted candidate (0: scored as sliced)
    shortlist: int = 2
    finalists: int = 3
    lr: float = 3e-4
    batch: int = 16
    steps: int = 8  # NetAdapt's steps: each saves 1/steps of (full - budget); 0: one notch each

    def budget_ms(self, full_ms: float) -> float:
        return self.ms if self.ms is not None else float(self.ratio or 1.0) * full_ms


def parse_arch_spec(text: str) -> ArchSpec:
    """``latency=0.5x`` | ``latency-ms=3``, then ``,tune=30,shortlist=2,finalists=3,...``."""
    kv = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        k, eq, v = item.partition("=")
        if not eq or k.strip() not in KEYS:
            raise InputError(
                f"--search-arch {text!r}: {item!r} is not one of "
                f"{sorted(KEYS)}=VALUE; e.g. latency=0.5x or latency-ms=3."
            )
        kv[k.strip()] = v.strip()
    if ("latency" in kv) == ("latency-ms" in kv):
        raise InputError(
            "--search-arch needs one budget: latency=0.5x (of the full network) or latency-ms=3."
        )

    def num(key: str, cast: Callable[[str], Any] = float) -> Any:
        try:
            return cast(kv[key].removesuffix("x") if key == "latency" else kv[key])
        except ValueError:
            raise InputError(f"--search-arch: {key}={kv[key]!r} is not a number.") from None

    out: dict[str, Any] = {}
    if "latency" in kv:
        out["ratio"] = num("latency")
        if not 0 < out["ratio"] < 1:
            raise InputError("--search-arch latency=R needs 0 < R < 1 (e.g. 0.5x).")
    else:
        out["ms"] = num("latency-ms")
        if out["ms"] <= 0:
            raise InputError("--search-arch latency-ms must be > 0.")
    for key, cast, low in (
        ("tune", int, 0),
        ("shortlist", int, 0),
        ("finalists", int, 1),
        ("lr", float, 1e-9),
        ("batch", int, 1),
        ("steps", int, 0),
    ):
        if key in kv:
            out[key] = num(key, cast)
            if out[key] < low:
                raise InputError(f"--search-arch {key}={kv[key]} is out of range.")
    return ArchSpec(**out)


@dataclass
class ArchOutcome:
    model: Any  # the chosen sub-network (distilled as a finalist)
    report: dict[str, Any]


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else a)
    return h.hexdigest()


def relative_l2(
    ref: Sequence[dict[str, np.ndarray]], got: Sequence[dict[str, np.ndarray]]
) -> float:
    num = sum(
        float(np.sum((g[k].astype(np.float64) - r[k]) ** 2))
        for r, g in zip(ref, got, strict=True)
        for k in r
    )
    den = sum(float(np.sum(r[k].astype(np.float64) ** 2)) for r in ref for k in r)
    return float(np.sqrt(num / max(den, 1e-30)))


def search_arch(
    model: Any,
    spec: ArchSpec,
    samples: Sequence[dict[str, np.ndarray]],
    threads: int | None,
    *,
    cache: Any = None,
    guard: Any = None,
    seed: int = 0,
    budget_s: float | None = None,
    progress: Callable[[str, str, float], None] | None = None,
) -> ArchOutcome:
    """Run the search (module doc) on ``model`` with ``samples`` (the calibration share of
    the compress stage's data); ``guard``: an ``evaluate.ClosedLoopGuard`` or None."""
    from robopt_compile import ir as rir
    from robopt_compile.archsearch.finalists import Run, choose
    from robopt_compile.archsearch.latency import build_table
    from robopt_compile.archsearch.netadapt import OutOfTime, check_reachable, netadapt
    from robopt_compile.archsearch.space import arch_space
    from robopt_compile.numerics import run_onnx_many

    note = progress or (lambda *a: None)
    t0 = time.perf_counter()
    deadline = t0 + budget_s if budget_s else None
    threads = threads or 1
    space = arch_space(model)
    if not space.widths and not space.depths:
        why = "; ".join(f"{g}: {r}" for g, r in list(space.fixed.items())[:3])
        raise InputError(
            "--search-arch: this model has no channel group or residual block to "
            f"search ({why or 'no Conv, Gemm or MatMul layer with weights'})."
        )
    if len(samples) < 4:
        raise InputError("--search-arch needs at least 4 calibration samples (--calibration).")
    n_val = min(32, max(2, len(samples) // 4))
    train, val = list(samples[:-n_val]), list(samples[-n_val:])
    reference = run_onnx_many(model, val, threads=threads)
    memo_lut = memo = None
    if cache is not None:
        from robopt_compile.store.cache import UnitMemo

        memo_lut = UnitMemo(cache, "latency-lut", reuse=True)
        memo = UnitMemo(cache, "arch-candidate", reuse=True)
    note("arch search: latency table", "start", 0.0)
    try:
        table = build_table(model, space, val[0], threads, memo=memo_lut, deadline=deadline,
                            progress=lambda m: note(m, "tick", 0.0))  # fmt: skip
    except OutOfTime as exc:
        raise _out_of_time(t0, str(exc), None, cache) from None
    budget_ms = spec.budget_ms(table.full_ms)
    check_reachable(table, space, budget_ms)
    if table.full_ms <= budget_ms:
        raise InputError(
            f"--search-arch: the full network already runs in {table.full_ms:.3g} ms, within "
            f"the budget of {budget_ms:.3g} ms: nothing to search; lower the budget or drop it."
        )
    base = {
        "model": _digest(rir.to_proto(model).SerializeToString()),
        "data": _digest(*(a for s in samples for a in s.values())),
        "threads": threads,
        "seed": seed,
        "n_val": n_val,
    }
    counts = {"scored": 0, "reused": 0}
    guard_id = None
    if guard is not None:  # what the finalists' task figures depend on
        from dataclasses import asdict

        guard_id = [guard.task_name, guard.metric, asdict(guard.spec)]

    def memoized(kind: str, ws: dict[str, int], dr: list[str], run: Callable[[], dict]) -> dict:
        parts = {
            **base,
            "guard": guard_id if kind == "finalist" else None,
            "kind": kind,
            "widths": sorted(ws.items()),
            "dropped": sorted(dr),
            "tune": spec.tune,
            "lr": spec.lr,
            "batch": spec.batch,
        }
        hit = memo.get(parts) if memo is not None else None
        if hit is not None:
            counts["reused"] += 1
            return hit
        out = run()
        counts["scored"] += 1
        if memo is not None:
            memo.put(parts, out)
        return out

    def distilled(sub: Any, steps: int) -> Any:
        from robopt_compile.distill import distill

        return distill(
            sub,
            model,
            train,
            steps=steps,
            lr=spec.lr,
            batch_size=spec.batch,
            seed=seed,
        ).model

    def error(m: Any) -> float:
        return relative_l2(reference, run_onnx_many(m, val, threads=threads))

    def score(ws: dict[str, int], dr: list[str], build: Callable[[], Any]) -> float:
        return memoized("sliced", ws, dr, lambda: {"error": error(build())})["error"]

    def refine(ws: dict[str, int], dr: list[str], build: Callable[[], Any]) -> float:
        run = lambda: {"error": error(distilled(build(), spec.tune))}  # noqa: E731
        return memoized("tuned", ws, dr, run)["error"]

    full_ms = table.predict({w.group: w.size for w in space.widths})

    def step_note(msg: str) -> None:
        done = (full_ms - float(msg.split("-> ")[1].split(" ms")[0])) / max(
            full_ms - budget_ms, 1e-9
        )
        note(msg, "tick", min(1.0, done))

    def adapt(aim_ms: float, start: Any = None) -> Any:
        return netadapt(
            model,
            space,
            table,
            aim_ms,
            score,
            refine=refine if spec.tune > 0 else None,
            shortlist=spec.shortlist,
            deadline=deadline,
            step_ms=(table.full_ms - budget_ms) / spec.steps if spec.steps else None,
            progress=step_note,
            start=start,
        )

    try:
        result = adapt(budget_ms)
        ctx = Run(model, space, spec, budget_ms, distilled, error, val[0], threads, guard,
                  memoized, deadline, note)  # fmt: skip
        # every finalist timed whole over the budget: NetAdapt goes on to a lower aim
        finalists, retargets = choose(result, ctx, lambda r, aim: adapt(aim, start=r))
    except OutOfTime as exc:
        raise _out_of_time(t0, str(exc), budget_ms, cache) from None
    winner = finalists[0]
    # Picked by the table's prediction, the finalists can still time whole over the budget
    # (metaworld-resnet18: 13.46 ms for 13.06, predicted 12.84); after the retargets, a miss
    # left is said in the report and the compile's output, never silently.
    over = winner["measured_ms"] / budget_ms - 1.0
    if over > 0:
        winner["over_budget"] = round(over, 4)
    report = {
        "totals": {
            **{f"{k}_before": v for k, v in _size(model).items()},
            **{f"{k}_after": v for k, v in _size(winner["model"]).items()},
        },
        "spec": {k: v for k, v in vars(spec).items() if v is not None},
        "space": {
            "width_groups": len(space.widths),
            "blocks": len(space.depths),
            "fixed": space.fixed,
            "sub_networks": space.size(),
        },
        "table": {
            "runtime": "onnxruntime",
            "threads": threads,
            "full_ms": table.full_ms,
            "narrow_ms": table.narrow_ms,
            "scale": table.scale,
            "rest_ms": table.rest_ms,
            "entries": table.measured + table.reused,
            "measured": table.measured,
            "reused": table.reused,
            "seconds": table.seconds,
        },
        "budget_ms": budget_ms,
        "steps": result.steps,
        "candidates": {
            "scored": counts["scored"],
            "from_store": counts["reused"],
            "skipped": result.skipped,
        },
        "score": "relative L2 of the outputs on the search's validation share "
        f"({n_val} samples), short distillation on the other {len(train)}",
        "finalists_by": f"task:{guard.metric}" if guard is not None else "relative L2",
        "finalists": [{k: v for k, v in f.items() if k != "model"} for f in finalists],
        "retargets": retargets,
        "chosen": {k: v for k, v in winner.items() if k != "model"},
        "seconds": time.perf_counter() - t0,
    }
    miss = (
        f"; {over:.1%} over the budget of {budget_ms:.3g} ms, which the table predicted it "
        f"would meet ({winner['predicted_ms']:.3g} ms) after {len(retargets)} retarget(s): "
        f"a tighter budget (latency-ms={budget_ms / (1 + over):.3g}) asks for the difference"
        if over > 0
        else ""
    )
    note(
        f"arch search: {len(result.steps)} steps, {counts['scored']} candidates scored "
        f"({counts['reused']} from the store), chosen {winner['measured_ms']:.3g} ms measured "
        f"of {table.full_ms:.3g} ms{miss}",
        "done",
        report["seconds"],
    )
    return ArchOutcome(winner["model"], report)


def _out_of_time(t0: float, where: str, budget_ms: float | None, cache: Any) -> InputError:
    kept = ("every finished candidate is kept: rerun with --resume SESSION (robopt-compile "
            "store sessions) or a larger --search-budget") if cache is not None else (
            "nothing is kept without the build cache: give a larger --search-budget")  # fmt: skip
    goal = f" before the search met {budget_ms:.3g} ms" if budget_ms else " (latency table)"
    return InputError(
        f"--search-budget ran out after {time.perf_counter() - t0:.0f} s ({where}){goal}; {kept}."
    )


def _size(m: Any) -> dict[str, int]:
    from robopt_compile.passes.analysis.flops import cost_totals, node_costs

    params = sum(
        int(np.prod(v.const_value.shape))
        for v in m.graph.initializers.values()
        if v.const_value is not None
    )
    return {"macs": cost_totals(node_costs(m)[0])["macs"], "params": params}
