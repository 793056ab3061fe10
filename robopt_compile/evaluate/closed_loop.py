"""Does the optimized policy still do the task? Closed-loop and open-loop evaluation.

**Closed loop**: the engine, run through the same backend runner the benchmark harness uses,
drives a simulated task (``robopt_compile.tasks``) for N seeded episodes; the original model
runs the same seeds. The report gives each engine's mean return with a 95% t-interval and its
success rate with a Wilson interval, and, because both ran the same seeds, a *paired*
comparison: the per-seed return difference with its t-interval and a paired t-test, and the
success difference with an exact McNemar test. A drop whose interval excludes zero is
``worse``; one whose interval straddles zero is ``no detectable change`` (noise at this N).

**Open loop**: recorded observations (``episodes.npz``) go through the original and the
optimized engine; the report gives the action error per dimension, the L2 error, the largest
deviation, gripper flips (sign changes of a chosen dimension) and, for action chunks, how the
error grows along the chunk.

The original ("reference") is the unoptimized fp32 model run in ONNX Runtime: the exported ONNX
the compiler started from (``compile --eval``), the bundle's recorded source re-exported
(``evaluate``), or whatever ``--reference`` names (another bundle or a model source).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError
from robopt_compile.tasks import Episode, Policy, Task, get_task

Progress = Callable[[int], None]  # called with the number of episodes just finished

DEFAULT_EPISODES = 50
GUARD_SEED_OFFSET = 500_000  # the closed-loop accuracy guard's episodes start here


# --- specs ------------------------------------------------------------------------------------


@dataclass
class EvalSpec:
    """``--eval task:episodes=50,seed=0,name=TASK,metric=return|success``."""

    episodes: int = DEFAULT_EPISODES
    seed: int = 0
    task: str | None = None  # None: the zoo model's task
    metric: str | None = None  # None: the task's default (success for Reacher, else return)


def parse_eval_spec(spec: str, option: str = "--eval") -> EvalSpec:
    """Parse ``task[:key=value,...]``; a bad spec is one ``InputError`` line."""
    kind, _, rest = spec.partition(":")
    if kind != "task":
        raise InputError(
            f"--eval {spec!r}: only closed-loop task evaluation is supported here, e.g. "
            "--eval task:episodes=50 (open-loop datasets: robopt-compile evaluate --dataset)."
        )
    out = EvalSpec()
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            if key == "episodes":
                out.episodes = int(value)
            elif key == "seed":
                out.seed = int(value)
            elif key in ("name", "task"):
                out.task = value
            elif key == "metric":
                if value not in ("return", "success"):
                    raise ValueError
                out.metric = value
            else:
                raise ValueError
        except ValueError:
            raise InputError(
                f"{option} {spec!r}: cannot read {item!r}; keys are episodes=N, seed=N, "
                "name=TASK, metric=return|success."
            ) from None
    if out.episodes < 2:
        raise InputError(f"{option} {spec!r}: episodes must be at least 2.")
    return out


def default_metric(task: Task) -> str:
    """Reacher-like tasks are judged by success; the pybullet tasks by return."""
    return "success" if task.name.startswith("Reacher") else "return"


def task_for_manifest(manifest: dict[str, Any]) -> str | None:
    """The zoo task of a bundle's model, if its source is a trained zoo model."""
    return task_for_source(str(manifest.get("model", {}).get("source", "")))


def task_for_source(source: str) -> str | None:
    """The task of a trained zoo model (``zoo:NAME``), or of a bundle built from one."""
    from robopt_compile.zoo import ZOO

    if looks_like_bundle(source):
        import json

        return task_for_manifest(json.loads((Path(source) / "manifest.json").read_text()))
    if source.startswith("zoo:"):
        entry = ZOO.get(source.removeprefix("zoo:"))
        return entry.task if entry else None
    return None


# --- statistics -------------------------------------------------------------------------------


def _t975(df: int) -> float:
    """The 97.5% quantile of Student's t (scipy comes with the ``sim`` extra)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and 95% t-interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = _t975(n - 1) * std / math.sqrt(n) if n > 1 else float("inf")
    return {"mean": mean, "std": std, "n": int(n), "ci95": [mean - half, mean + half]}


def wilson(successes: int, n: int) -> list[float]:
    """Wilson score 95% interval for a success rate (sound at 0% and 100%)."""
    if n == 0:
        return [0.0, 1.0]
    z = 1.959963984540054
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _paired_t_p(diff: np.ndarray) -> float:
    n = diff.size
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        return 1.0 if float(diff.mean()) == 0.0 else 0.0
    from scipy import stats

    t = float(diff.mean()) / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def _mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


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
    p_return = _paired_t_p(c - r)
    p_success = _mcnemar_p(b, cc)
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


# --- policies ---------------------------------------------------------------------------------


@dataclass
class TimedPolicy:
    """Wraps feeds -> outputs, recording each call's latency (ns)."""

    fn: Callable[[dict[str, np.ndarray]], Any]
    output_names: list[str]
    latencies_ns: list[int] = field(default_factory=list)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter_ns()
        out = self.fn(feeds)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        if isinstance(out, dict):
            return [out[n] for n in self.output_names]
        return list(out)

    def latency(self) -> dict[str, float] | None:
        if not self.latencies_ns:
            return None
        ms = np.asarray(self.latencies_ns, np.float64) / 1e6
        p50, p99 = np.percentile(ms, [50, 99])
        return {"p50": float(p50), "p99": float(p99), "calls": int(ms.size)}


@contextlib.contextmanager
def onnx_policy(model: Any, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """An fp32 ONNX model (path or ``ir.Model``) in ONNX Runtime, as the reference."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="robopt-ref-") as tmp:
        path = model
        if not isinstance(model, (str, Path)):
            from robopt_compile import ir as rir

            path = Path(tmp) / "reference.onnx"
            rir.save(model, path)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        yield TimedPolicy(lambda feeds: sess.run(names, feeds), names)


@contextlib.contextmanager
def bundle_policy(bundle_dir: str | Path, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """A bundle's engine through the harness's runner (the backend runs it as on the robot)."""
    from robopt_compile.bench.harness import _enter_runner, _open_bundle

    b = _open_bundle(bundle_dir, verify=True)
    names = [o["name"] for o in b.manifest["outputs"]]
    with contextlib.ExitStack() as stack:
        runner = _enter_runner(stack, b, threads)
        # The runner's unchecked call, as in the harness's timed loop: the task builds feeds
        # of the right names, shapes and dtypes, so per-step checks would only add overhead.
        yield TimedPolicy(runner._infer, names)


@contextlib.contextmanager
def source_policy(source: str, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """A model source (zoo:NAME, .onnx, .pt2, module:factory) exported to fp32 ONNX."""
    from robopt_compile.compile.frontend import load_source

    src = load_source(source, check_parity=False)
    with onnx_policy(src.model, threads) as p:
        yield p


def looks_like_bundle(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


@contextlib.contextmanager
def any_policy(spec: str | Path, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """A bundle folder or a model source."""
    if looks_like_bundle(spec):
        with bundle_policy(spec, threads) as p:
            yield p
    else:
        with source_policy(str(spec), threads) as p:
            yield p


def check_policy_fits(task: Task, manifest_inputs: Sequence[dict[str, Any]], what: str) -> None:
    names = [i["name"] for i in manifest_inputs]
    if list(task.input_names) != names:
        raise InputError(
            f"{what} takes inputs {names} but task {task.name} feeds {list(task.input_names)}; "
            "pick the task the model was trained for (--task)."
        )
    shapes = getattr(task, "feed_shapes", None) or {}
    for spec in manifest_inputs:
        want = shapes.get(spec["name"])
        got = list(spec.get("shape", [])[1:])
        fixed = got and all(isinstance(d, int) for d in got)
        if want is not None and fixed and tuple(got) != tuple(want):
            raise InputError(
                f"{what} takes {spec['name']} of shape {['B', *got]} but task {task.name} "
                f"feeds {['B', *want]}; pick the task the model was trained for (--task)."
            )


# --- closed loop ------------------------------------------------------------------------------


def run_episodes(
    task: Task,
    policy: Policy,
    seeds: Sequence[int],
    progress: Progress | None = None,
    record: bool = False,
) -> list[Episode]:
    out = []
    for s in seeds:
        out.append(task.episode(policy, int(s), record=record))
        if progress:
            progress(1)
    return out


def seeds_for(episodes: int, seed: int) -> list[int]:
    """Episode seeds: ``seed, seed+1, ...``; different from the calibration recordings."""
    return list(range(seed, seed + episodes))


def _meta(policy: TimedPolicy, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "latency_ms": policy.latency()}


def bundle_meta(bundle_dir: str | Path) -> dict[str, Any]:
    import json

    m = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    return {
        "bundle": str(Path(bundle_dir).resolve()),
        "precision": m.get("precision"),
        "backend": m.get("backend"),
        "target": m.get("target", {}).get("profile"),
    }


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
) -> dict[str, Any]:
    """Run the reference and every candidate on the same seeds; figures and paired tests.

    ``candidates`` are ``(label, policy, meta)``; meta (precision, backend, bundle) is copied
    into the candidate's entry. Criteria are checked against the first candidate.
    """
    metric = metric or default_metric(task)
    seeds = seeds_for(episodes, seed)
    t0 = time.perf_counter()
    ref = summarize(
        reference_label,
        "reference",
        run_episodes(task, reference, seeds, progress),
        _meta(reference, {"precision": "fp32", "backend": "onnxruntime", **(reference_meta or {})}),
    )
    engines = [ref]
    pairs = []
    for label, pol, meta in candidates:
        cand = summarize(
            label, "candidate", run_episodes(task, pol, seeds, progress), _meta(pol, meta)
        )
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


# --- open loop --------------------------------------------------------------------------------


def load_dataset(path: str | Path, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """An episodes .npz: one array per model input, stacked over time steps along axis 0.

    Optional keys: ``actions`` (the recorded actions, for reporting the reference's own error
    against them) and ``episode`` (the episode index of every step).
    """
    from robopt_compile.compile.frontend import load_npz_inputs

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such dataset file; give an .npz of recorded observations.")
    data = load_npz_inputs(p, "dataset file")
    missing = [n for n in input_names if n not in data]
    if missing:
        raise InputError(
            f"{p}: lacks arrays for the model inputs {missing} (has {sorted(data)}); store one "
            "array per input, steps along axis 0."
        )
    steps = {data[n].shape[0] for n in input_names}
    if len(steps) != 1:
        raise InputError(f"{p}: the input arrays have different step counts {sorted(steps)}.")
    return data


def _outputs_over(
    policy: TimedPolicy, data: dict[str, np.ndarray], names: Sequence[str], dtypes: dict[str, Any]
) -> np.ndarray:
    n = data[names[0]].shape[0]
    acts = []
    for i in range(n):
        feeds = {k: np.asarray(data[k][i : i + 1], dtype=dtypes.get(k, np.float32)) for k in names}
        acts.append(np.asarray(policy(feeds)[0], np.float64)[0])
    return np.stack(acts)


def action_error(
    ref: np.ndarray, cand: np.ndarray, gripper_dim: int | None = None
) -> dict[str, Any]:
    """Open-loop error of candidate actions against reference actions, per step.

    Shapes are ``(steps, action_dim)`` or ``(steps, chunk, action_dim)`` for action chunks.
    """
    diff = cand - ref
    per_step = diff.reshape(diff.shape[0], -1)
    l2 = np.linalg.norm(per_step, axis=1)
    ref_l2 = np.linalg.norm(ref.reshape(ref.shape[0], -1), axis=1)
    flat_d = diff.reshape(-1, diff.shape[-1])
    out: dict[str, Any] = {
        "per_dim": {
            "mae": np.abs(flat_d).mean(axis=0).tolist(),
            "rmse": np.sqrt((flat_d**2).mean(axis=0)).tolist(),
            "max_abs": np.abs(flat_d).max(axis=0).tolist(),
        },
        "l2": {
            "mean": float(l2.mean()),
            "p95": float(np.percentile(l2, 95)),
            "max": float(l2.max()),
            "relative_mean": float(l2.mean() / max(float(ref_l2.mean()), 1e-12)),
        },
        "max_deviation": float(np.abs(diff).max()),
        "gripper_flips": None,
        "chunk_divergence": None,
    }
    if gripper_dim is not None:
        g_ref = np.sign(ref[..., gripper_dim]).reshape(-1)
        g_c = np.sign(cand[..., gripper_dim]).reshape(-1)
        out["gripper_flips"] = int((g_ref != g_c).sum())
    if diff.ndim == 3:  # (steps, chunk, dim): error by position in the chunk
        by_pos = np.linalg.norm(diff, axis=2).mean(axis=0)
        out["chunk_divergence"] = {
            "l2_by_position": by_pos.tolist(),
            "first": float(by_pos[0]),
            "last": float(by_pos[-1]),
            "growth": float(by_pos[-1] / by_pos[0]) if by_pos[0] > 0 else None,
        }
    return out


def open_loop(
    dataset: str | Path,
    reference: TimedPolicy,
    candidates: Sequence[tuple[str, TimedPolicy, dict[str, Any]]],
    input_names: Sequence[str],
    dtypes: dict[str, Any] | None = None,
    gripper_dim: int | None = None,
) -> dict[str, Any]:
    """Run recorded observations through the reference and the candidates; action errors."""
    data = load_dataset(dataset, input_names)
    dtypes = dtypes or {}
    ref_act = _outputs_over(reference, data, input_names, dtypes)
    engines = []
    recorded = data.get("actions")
    if recorded is not None and recorded.shape == ref_act.shape:
        engines.append(
            {
                "label": "reference vs recorded actions",
                "role": "reference",
                **action_error(np.asarray(recorded, np.float64), ref_act, gripper_dim),
            }
        )
    for label, pol, meta in candidates:
        act = _outputs_over(pol, data, input_names, dtypes)
        engines.append(
            {
                "label": label,
                "role": "candidate",
                **meta,
                "latency_ms": pol.latency(),
                **action_error(ref_act, act, gripper_dim),
            }
        )
    return {
        "kind": "open_loop",
        "dataset": str(Path(dataset).resolve()),
        "samples": int(ref_act.shape[0]),
        "engines": engines,
    }


def record_episodes(
    task: Task, policy: Policy, seeds: Sequence[int], out: str | Path
) -> dict[str, Any]:
    """Record the observations and actions of ``policy`` on ``task`` into an episodes .npz."""
    eps = run_episodes(task, policy, seeds, record=True)
    arrays = {name: np.concatenate([e.feeds[name] for e in eps]) for name in task.input_names}
    arrays["actions"] = np.concatenate([e.actions for e in eps if e.actions is not None])
    arrays["episode"] = np.concatenate(
        [np.full(e.steps, i, dtype=np.int32) for i, e in enumerate(eps)]
    )
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return {"episodes": len(eps), "steps": int(arrays["actions"].shape[0]), "path": str(out)}


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
        if self._ref is None:
            seeds = self.seeds()
            with onnx_policy(model, threads) as pol:
                eps = run_episodes(self.task, pol, seeds)
                self._ref = summarize(
                    "original fp32 (onnxruntime)",
                    "reference",
                    eps,
                    _meta(pol, {"precision": "fp32"}),
                )
        return self._ref

    def score(self, infer: Callable[[dict[str, np.ndarray]], Any], names: list[str]) -> dict:
        if self._ref is None:
            raise RuntimeError("set_reference first")
        pol = TimedPolicy(infer, names)
        seeds = self.seeds()
        cand = summarize(
            "candidate", "candidate", run_episodes(self.task, pol, seeds), _meta(pol, {})
        )
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
