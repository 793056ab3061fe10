"""Closed-loop evaluation: engines drive a simulated task on the same seeds, and the paired
comparison against the original decides ``worse``, ``better`` or ``no detectable change``.

``closed_loop`` runs the original and every candidate for N seeded episodes and reports each
engine's figures (``summarize``) and each candidate's per-seed comparison with the original
(``paired``); ``Criteria`` bound the drop for CI. ``ClosedLoopGuard`` is the same measurement as
the quantizer's accuracy guard, on seeds of its own. The statistics are in ``stats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopt_compile.evaluate.episodes import Progress, run_episodes
from robopt_compile.evaluate.policies import TimedPolicy
from robopt_compile.evaluate.spec import DEFAULT_EPISODES, EvalSpec, default_metric
from robopt_compile.evaluate.stats import mcnemar_p, mean_ci, paired_t_p, wilson
from robopt_compile.tasks import Episode, Task, get_task

# (engine index: 0 the reference, policy, seeds, progress) -> that engine's episodes in order
Runner = Callable[[int, TimedPolicy, Sequence[int], Progress | None], list[Episode]]

GUARD_SEED_OFFSET = 500_000  # the closed-loop accuracy guard's episodes start here


def seeds_for(episodes: int, seed: int) -> list[int]:
    """Episode seeds: ``seed, seed+1, ...``; different from the calibration recordings."""
    return list(range(seed, seed + episodes))


def _meta(policy: TimedPolicy, extra: dict[str, Any]) -> dict[str, Any]:
    """An engine's metadata with the latency its policy measured inside the loop."""
    return {**extra, "latency_ms": policy.latency()}


def summarize(
    label: str, role: str, episodes: Sequence[Episode], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One engine's closed-loop figures (schema in docs/EVALUATION.md)."""
    rets = [e.ret for e in episodes]
    succ = [bool(e.success) for e in episodes]
    k = sum(succ)
    return {
        "label": label,
        "role": role,
        **(meta or {}),
        "return": mean_ci(rets),
        "success": {"rate": k / len(succ), "count": k, "ci95": wilson(k, len(succ))},
        "per_seed": {
            "seed": [e.seed for e in episodes],
            "return": rets,
            "success": succ,
            "steps": [e.steps for e in episodes],
        },
    }


def paired(ref: dict[str, Any], cand: dict[str, Any], metric: str) -> dict[str, Any]:
    """Per-seed paired comparison of a candidate against the reference."""
    if ref["per_seed"]["seed"] != cand["per_seed"]["seed"]:
        raise ValueError("paired comparison needs the same seeds in the same order")
    r = np.asarray(ref["per_seed"]["return"], np.float64)
    c = np.asarray(cand["per_seed"]["return"], np.float64)
    rs = np.asarray(ref["per_seed"]["success"], bool)
    cs = np.asarray(cand["per_seed"]["success"], bool)
    rdiff = mean_ci(c - r)
    sdiff = mean_ci(cs.astype(np.float64) - rs.astype(np.float64))
    b, cc = int((rs & ~cs).sum()), int((~rs & cs).sum())
    p_return = paired_t_p(c, r)
    p_success = mcnemar_p(b, cc)
    d = rdiff if metric == "return" else sdiff
    lo, hi = d["ci95"]
    verdict = "worse" if hi < 0 else "better" if lo > 0 else "no detectable change"
    scale = abs(ref["return"]["mean"]) or 1.0
    return {
        "candidate": cand["label"],
        "reference": ref["label"],
        "metric": metric,
        "return_diff": rdiff,
        "relative_return_diff": rdiff["mean"] / scale,
        "success_diff": {**sdiff, "lost": b, "gained": cc},
        "p_value": p_return if metric == "return" else p_success,
        "p_value_return": p_return,
        "p_value_success": p_success,
        "verdict": verdict,
    }


def task_drop(ref: dict[str, Any], cand: dict[str, Any], metric: str) -> float:
    """The accuracy drop a closed-loop guard bounds: relative return drop or success drop."""
    if metric == "success":
        return float(ref["success"]["rate"] - cand["success"]["rate"])
    scale = abs(ref["return"]["mean"]) or 1.0
    return float((ref["return"]["mean"] - cand["return"]["mean"]) / scale)


def evaluation_drop(result: dict[str, Any] | None) -> tuple[float, str] | None:
    """(task drop of the first candidate against the reference, "task:METRIC") from a
    ``closed_loop`` result, or None without one: how the planner judges a plan by its task."""
    engines = (result or {}).get("engines") or []
    if len(engines) < 2:
        return None
    metric = str(result.get("metric") or "return")  # type: ignore[union-attr]
    return task_drop(engines[0], engines[1], metric), f"task:{metric}"


@dataclass
class Criteria:
    """Bounds on the optimized engine's closed-loop figures against the reference."""

    max_return_drop: float | None = None  # fraction of the reference mean return
    max_success_drop: float | None = None  # success-rate points, 0..1

    def check(self, ref: dict[str, Any], cand: dict[str, Any]) -> dict[str, Any] | None:
        if self.max_return_drop is None and self.max_success_drop is None:
            return None
        rd = task_drop(ref, cand, "return")
        sd = task_drop(ref, cand, "success")
        failures = []
        if self.max_return_drop is not None and rd > self.max_return_drop:
            failures.append(f"return dropped {rd:.1%} > {self.max_return_drop:.1%}")
        if self.max_success_drop is not None and sd > self.max_success_drop:
            failures.append(
                f"success dropped {sd * 100:.1f} points > {self.max_success_drop * 100:.1f}"
            )
        return {
            "max_return_drop": self.max_return_drop,
            "max_success_drop": self.max_success_drop,
            "return_drop": rd,
            "success_drop": sd,
            "passed": not failures,
            "failures": failures,
        }


def closed_loop(
    task: Task,
    reference: TimedPolicy,
    candidates: Sequence[tuple[str, TimedPolicy, dict[str, Any]]],
    episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    metric: str | None = None,
    reference_label: str = "original fp32 (onnxruntime)",
    reference_meta: dict[str, Any] | None = None,
    criteria: Criteria | None = None,
    progress: Progress | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run the reference and every candidate on the same seeds; figures and paired tests.

    ``candidates`` are ``(label, policy, meta)``; meta (precision, backend, bundle) is copied
    into the candidate's entry. Criteria are checked against the first candidate. ``runner``
    (engine index, policy, seeds, progress) -> episodes runs them elsewhere
    (``distributed.episodes_runner``); by default they run here, one after another.
    """
    metric = metric or default_metric(task)
    seeds = seeds_for(episodes, seed)
    t0 = time.perf_counter()

    def run(i: int, pol: TimedPolicy) -> list[Episode]:
        if runner is not None:
            return runner(i, pol, seeds, progress)
        return run_episodes(task, pol, seeds, progress)

    ref = summarize(
        reference_label,
        "reference",
        run(0, reference),
        _meta(reference, {"precision": "fp32", "backend": "onnxruntime", **(reference_meta or {})}),
    )
    engines = [ref]
    pairs = []
    for k, (label, pol, meta) in enumerate(candidates, start=1):
        cand = summarize(label, "candidate", run(k, pol), _meta(pol, meta))
        engines.append(cand)
        pairs.append(paired(ref, cand, metric))
    crit = (criteria or Criteria()).check(ref, engines[1]) if len(engines) > 1 else None
    return {
        "kind": "closed_loop",
        "task": task.describe(),
        "metric": metric,
        "episodes": episodes,
        "seeds": seeds,
        "engines": engines,
        "paired": pairs,
        "criteria": crit,
        "seconds": time.perf_counter() - t0,
    }


class ClosedLoopGuard:
    """Closed-loop task figures as the accuracy guard's metric (``--eval`` with a bound).

    The reference episodes (the fp32 model the quantizer started from, in ONNX Runtime) run
    once; each candidate engine then runs the same seeds and its drop is the relative return
    drop or the success-rate drop (``metric``).
    """

    def __init__(self, task_name: str, spec: EvalSpec) -> None:
        self.task_name = task_name
        self.spec = spec
        self._task: Task | None = None
        self._ref: dict[str, Any] | None = None

    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = get_task(self.task_name)
        return self._task

    @property
    def metric(self) -> str:
        return self.spec.metric or default_metric(self.task)

    def seeds(self) -> list[int]:
        # Seeds of their own: the episodes that pick the quantization are never the ones the
        # final evaluation (seeds from ``spec.seed``) reports.
        return seeds_for(self.spec.episodes, GUARD_SEED_OFFSET + self.spec.seed)

    def set_reference(self, model: Any, threads: int | None = 1) -> dict[str, Any]:
        """The fp32 ONNX model's episodes (on this machine's cores: ``pooled_episodes``)."""
        if self._ref is None:
            eps = self._onnx_episodes(model, threads)
            self._ref = summarize(
                "original fp32 (onnxruntime)", "reference", eps, {"precision": "fp32"}
            )
        return self._ref

    def score_onnx(self, model: Any, threads: int | None = 1) -> dict[str, Any]:
        """``score`` of an fp32 ONNX model (ONNX Runtime), its episodes on this machine's
        cores (``pooled_episodes``)."""
        self._need_reference()
        eps = self._onnx_episodes(model, threads)
        return self._judge(summarize("candidate", "candidate", eps, {}))

    def _onnx_episodes(self, model: Any, threads: int | None) -> list[Episode]:
        from robopt_compile.evaluate.pooled import pooled_episodes

        return pooled_episodes(self.task_name, model, self.seeds(), threads, task=self.task)

    def score(self, infer: Callable[[dict[str, np.ndarray]], Any], names: list[str]) -> dict:
        self._need_reference()
        pol = TimedPolicy(infer, names)
        eps = run_episodes(self.task, pol, self.seeds())
        return self._judge(summarize("candidate", "candidate", eps, _meta(pol, {})))

    def _need_reference(self) -> None:
        if self._ref is None:
            raise RuntimeError("set_reference first")

    def _judge(self, cand: dict[str, Any]) -> dict[str, Any]:
        assert self._ref is not None
        pair = paired(self._ref, cand, self.metric)
        return {
            "drop": task_drop(self._ref, cand, self.metric),
            "metric": f"task:{self.metric}",
            "task": self.task_name,
            "episodes": self.spec.episodes,
            "reference_return": self._ref["return"]["mean"],
            "return": cand["return"]["mean"],
            "reference_success": self._ref["success"]["rate"],
            "success": cand["success"]["rate"],
            "verdict": pair["verdict"],
            "p_value": pair["p_value"],
        }

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None
