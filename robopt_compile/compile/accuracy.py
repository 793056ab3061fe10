"""The accuracy guard: how far an optimized model's outputs are from its fp32 source.

Every figure here is computed on the HELD-OUT split of the calibration data (never on samples a
quantizer calibrated on) and by running the candidate in the TARGET runtime (OpenVINO executes
Q/DQ graphs differently from ONNX Runtime), against the fp32 model's outputs on the same inputs.

The accuracy *drop* that ``--max-accuracy-drop`` bounds is, by default, the relative L2 error
of all outputs over the held-out set, ``||y_opt - y_fp32|| / ||y_fp32||``: for a policy, the
action error as a fraction of the action's magnitude. A user metric ``module:function`` can
replace it: ``fn(reference: list[dict], candidate: list[dict], inputs: list[dict]) -> float``
returns the drop (larger is worse), e.g. a task-specific action-space error.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError

Sample = dict[str, np.ndarray]
Metric = Callable[[list[Sample], list[Sample], list[Sample]], float]


def load_metric(spec: str) -> Metric:
    """Import ``module:function`` (cwd on sys.path) as a user accuracy metric."""
    from robopt_compile.compile.userimport import import_callable

    return import_callable(spec, "--metric")


def _cosine(ref: Sample, cand: Sample, names: list[str]) -> float:
    r = np.concatenate([np.asarray(ref[n], np.float64).ravel() for n in names])
    c = np.concatenate([np.asarray(cand[n], np.float64).ravel() for n in names])
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    return 1.0 if nr == nc == 0 else float(r @ c / (nr * nc)) if nr and nc else 0.0


def accuracy_figures(
    reference: Sequence[Sample],
    candidate: Sequence[Sample],
    inputs: Sequence[Sample] = (),
    metric: Metric | None = None,
    metric_name: str = "relative_l2",
) -> dict[str, Any]:
    """Cosine, max abs, relative L2, argmax agreement and the drop, over all samples/outputs."""
    names = list(reference[0]) if reference else []
    per_output: dict[str, dict[str, float | None]] = {}
    num = den = 0.0
    for name in names:
        r = np.concatenate([np.asarray(s[name], np.float64).ravel() for s in reference])
        c = np.concatenate([np.asarray(s[name], np.float64).ravel() for s in candidate])
        diff = c - r
        nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
        cosine = 1.0 if nr == nc == 0 else float(r @ c / (nr * nc)) if nr and nc else 0.0
        agree = None
        shape = np.shape(reference[0][name])
        if len(shape) >= 1 and shape[-1] >= 2:
            ra = [np.argmax(np.asarray(s[name]), axis=-1) for s in reference]
            ca = [np.argmax(np.asarray(s[name]), axis=-1) for s in candidate]
            agree = float(
                np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ra, ca, strict=True)]))
            )
        # Centred: both sides minus the fp32 mean over the samples, so the figure measures the
        # input-dependent part of the output (a constant bias makes plain cosine look perfect).
        centred = None
        if len({np.shape(x[name]) for x in reference}) == 1:  # samples of one shape only
            mean = np.mean([np.asarray(x[name], np.float64) for x in reference], axis=0).ravel()
            reps = len(reference)
            rc, cc = r - np.tile(mean, reps), c - np.tile(mean, reps)
            nrc, ncc = float(np.linalg.norm(rc)), float(np.linalg.norm(cc))
            centred = float(rc @ cc / (nrc * ncc)) if nrc and ncc else None
        per_output[name] = {
            "cosine": cosine,
            "centred_cosine": centred,
            "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
            "relative_l2": float(np.linalg.norm(diff) / nr) if nr else float(np.linalg.norm(diff)),
            "argmax_agreement": agree,
        }
        num += float(diff @ diff)
        den += float(r @ r)
    rel_l2 = (num / den) ** 0.5 if den else num**0.5
    fig: dict[str, Any] = {
        # The worst single sample (its outputs together): what a one-sample engine check sees.
        "worst_sample_cosine": min(
            (_cosine(rs, cs, names) for rs, cs in zip(reference, candidate, strict=True)),
            default=1.0,
        ),
        "samples": len(reference),
        "cosine": min((o["cosine"] for o in per_output.values()), default=1.0),
        "centred_cosine": min(
            (o["centred_cosine"] for o in per_output.values() if o["centred_cosine"] is not None),
            default=None,
        ),
        "max_abs": max((o["max_abs"] for o in per_output.values()), default=0.0),
        "relative_l2": rel_l2,
        "per_output": per_output,
        "metric": metric_name,
    }
    if metric is None:
        drop = rel_l2
    else:
        try:
            drop = float(metric(list(reference), list(candidate), list(inputs)))
        except Exception as exc:  # the user's metric may raise anything: one line
            raise InputError(
                f"--metric {metric_name} failed: {type(exc).__name__}: {str(exc)[:200]}. It must "
                "return a number (the accuracy drop) for (reference, candidate, inputs)."
            ) from exc
    # NaN/inf outputs or a NaN metric must break any bound, never pass it.
    fig["drop"] = drop if np.isfinite(drop) else float("inf")
    return fig


@dataclass
class Evaluator:
    """Runs candidate models in the target backend on held-out samples and scores them.

    ``reference`` holds the fp32 model's outputs on ``holdout`` (computed once).
    """

    backend: Any
    profile: Any
    build_options: Any
    holdout: Sequence[Sample]
    holdout_ids: Sequence[str]
    reference: Sequence[Sample]
    metric: Metric | None = None
    metric_name: str = "relative_l2"
    runs: int = 0  # how many candidates were evaluated (for the report)

    # Closed-loop task guard (evaluate.ClosedLoopGuard): when set, the drop
    # is the task's return or success drop on seeded episodes, not the output error.
    closed_loop: Any = None

    def _run(self, model: Any, closed_loop: bool) -> tuple[list[Sample], dict[str, Any] | None]:
        from robopt_compile import ir as rir

        self.runs += 1
        with tempfile.TemporaryDirectory(prefix="robopt-eval-") as tmp:
            path = Path(tmp) / "model.onnx"
            rir.save(model, path)
            art = self.backend.build(path, self.profile, self.build_options, Path(tmp) / "engine")
            with self.backend.runner(art, threads=self.build_options.threads) as r:
                got = [r.infer(s) for s in self.holdout]
                task = None
                if closed_loop and self.closed_loop is not None:
                    names = list(self.reference[0]) if self.reference else []
                    task = self.closed_loop.score(r.infer, names)
                return got, task

    def outputs(self, model: Any) -> list[Sample]:
        """The candidate's outputs on every held-out sample, from an engine built for it."""
        return self._run(model, closed_loop=False)[0]

    def score(self, model: Any) -> dict[str, Any]:
        if self.closed_loop is None:
            got, task = self.outputs(model), None
        else:
            got, task = self._run(model, closed_loop=True)
        fig = accuracy_figures(self.reference, got, self.holdout, self.metric, self.metric_name)
        fig["holdout_ids"] = list(self.holdout_ids)
        if task is not None:
            fig["output_drop"] = fig["drop"]
            fig["drop"] = task["drop"] if np.isfinite(task["drop"]) else float("inf")
            fig["metric"] = task["metric"]
            fig["closed_loop"] = task
        return fig
