"""On-policy distillation (``--distill ...,onpolicy=R``): DAgger with the original model as
the expert.

Distilling a pruned policy on the original's own recorded episodes teaches it the states the
original visits; once the student drifts off them in closed loop it meets states it never
trained on, and its errors compound (Ross et al., AISTATS 2011). Here the student itself
drives the task: after the first distillation, each of R rounds lets the current student run
E episodes (seeds ``ONPOLICY_SEED_OFFSET + seed + 1000 r ...``, never the calibration's,
the guard's or an evaluation's), adds every second observation it saw to the data, and
distils again (without the mixup augmentation of a plain ``--distill``); the targets of
every observation are the original model's outputs, computed by the distiller as for the
recorded ones. Nothing else is labelled: no expert, no rewards.

Measured on zoo:metaworld-resnet18 pruned to 50% of its channels (docs/METAWORLD.md): the
student's own success over the rounds was 28%, 28%, 47%, 72% (32 episodes each, 600 steps of
batch 16 per round), where distillation on 40 recorded episodes alone gave 15%; through the
CLI with 5 rounds, 19% -> 72%, and 72% vs fp32's 89% on 100 held-out episodes (the loss is
almost all in push-v3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

ONPOLICY_SEED_OFFSET = 1_500_000
EVERY = 2  # keep every second step of the student's episodes (neighbours are near-duplicates)
# With a time budget: the share of a round its episodes are assumed to take until one has run
# (the ninth measurement, docs/ARCHSEARCH.md: 5 rounds of 32 episodes took 327 s of a 1,204 s
# recovery on metaworld-resnet18's searched network, 27%; afterwards each round's own time).
EPISODE_SHARE = 0.3


def student_samples(
    model: Any, task_name: str, seeds: list[int], threads: int | None
) -> tuple[list[dict[str, np.ndarray]], float]:
    """The observations ``model`` (ONNX, in ONNX Runtime) sees driving ``task_name`` on
    ``seeds`` (every ``EVERY``-th step, batch axis 1) and its success rate there; the
    episodes run on the build machine's cores (``evaluate.pooled_episodes``)."""
    from robopt_compile.evaluate.pooled import pooled_episodes

    eps = pooled_episodes(task_name, model, seeds, threads or 1, record=True)
    samples = [{n: e.feeds[n][i : i + 1] for n in e.feeds}
               for e in eps for i in range(0, e.steps, EVERY)]  # fmt: skip
    return samples, float(np.mean([e.success for e in eps])) if eps else 0.0


def distill_on_policy(
    student: Any,
    teacher: Any,
    samples: list[dict[str, np.ndarray]],
    dist: dict[str, Any],
    task_name: str | None,
    seed: int,
    threads: int | None,
    note: Callable[[str, str, float], None],
) -> tuple[Any, dict[str, Any]]:
    """Distil ``student`` on ``samples``, then ``dist["onpolicy"]`` rounds of student
    episodes + distillation; returns the trained model and the report (the last round's
    distillation figures, plus ``onpolicy``: one entry per round)."""
    from robopt_compile.distill import distill
    from robopt_compile.errors import InputError

    dist = dict(dist)
    rounds = int(dist.pop("onpolicy", 0))
    episodes = int(dist.pop("episodes", 32))
    budget = dist.pop("seconds", None)
    t0 = time.perf_counter()
    round_s: list[float] = []  # what each round's episodes took

    def share(calls_left: int) -> float | None:
        """The next distillation's seconds: what is left of the budget, less the episodes
        still to run (as long as the last round's; before any, ``EPISODE_SHARE`` of a
        round), split evenly over the calls left."""
        if budget is None:
            return None
        left = budget - (time.perf_counter() - t0)
        per_round = round_s[-1] if round_s else EPISODE_SHARE * left / calls_left
        return max(0.0, left - per_round * (calls_left - 1)) / calls_left

    if rounds and task_name is None:
        raise InputError(
            "--distill onpolicy=R lets the student drive the task: it needs --calibration "
            "task (the recordings' task)."
        )
    data = list(samples)
    total = dist["steps"] * (rounds + 1)
    if rounds:
        # No mixup: the student's own states are the data's spread, and the blend of two
        # camera frames is no state the robot sees (the measurement above ran without it).
        dist["augment"] = False

    def ticker(done: int) -> Callable[[int, int, float], None]:
        def tick(step: int, steps: int, loss: float) -> None:
            frac = (time.perf_counter() - t0) / budget if budget else (done + step) / total
            of = f"{step}/{steps} of this round's" if budget else f"{done + step}/{total}"
            note(f"distill step {of}, loss {loss:.4g}", "tick", min(1.0, frac))

        return tick

    labels: dict[int, dict[str, np.ndarray]] = {}  # the teacher's, by position in data
    res = distill(student, teacher, data, seed=seed, progress=ticker(0), label_cache=labels,
                  seconds=share(rounds + 1), **dist)  # fmt: skip
    fitted = [res.report["steps"]]
    rows: list[dict[str, Any]] = []
    seconds = float(res.report.get("seconds", 0.0))
    for r in range(rounds):
        assert task_name is not None
        seeds = list(range(ONPOLICY_SEED_OFFSET + seed + 1000 * r,
                           ONPOLICY_SEED_OFFSET + seed + 1000 * r + episodes))  # fmt: skip
        note(f"on-policy round {r + 1}/{rounds}: the student drives {episodes} episodes", "line",
             0.0)  # fmt: skip
        t_round = time.perf_counter()
        new, success = student_samples(res.model, task_name, seeds, threads)
        round_s.append(time.perf_counter() - t_round)
        data += new
        res = distill(res.model, teacher, data, seed=seed + r + 1, label_cache=labels,
                      progress=ticker(sum(fitted)), seconds=share(rounds - r),
                      **dist)  # fmt: skip
        fitted.append(res.report["steps"])
        seconds += float(res.report.get("seconds", 0.0))
        rows.append({"round": r + 1, "seeds": [seeds[0], seeds[-1]], "student_success": success,
                     "samples_added": len(new), "samples": len(data),
                     "episode_seconds": round(round_s[-1], 1),
                     "final_loss": res.report["final_loss"]})  # fmt: skip
    report = {**res.report, "seconds": round(seconds, 3)}
    if budget is not None:
        report["time_budget"] = {
            "seconds": round(budget, 1),
            "used": round(time.perf_counter() - t0, 1),
            "steps_per_call": fitted,
            "steps_asked": dist["steps"],
        }
    if rounds:
        report["onpolicy"] = {"rounds": rows, "episodes_per_round": episodes, "task": task_name,
                              "every": EVERY, "initial_samples": len(samples)}  # fmt: skip
    return res.model, report
