"""Open-loop evaluation on recorded observations: action error, gripper flips, chunk divergence.

An episodes ``.npz`` (one array per model input, steps along axis 0; optionally ``actions`` and
``episode``) goes through the original and each engine step by step; ``record_episodes``
writes such a file from the original driving its task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError
from robopt_compile.evaluate.episodes import run_episodes
from robopt_compile.evaluate.policies import TimedPolicy
from robopt_compile.tasks import Policy, Task


def load_dataset(
    path: str | Path, input_names: Sequence[str], specs: Sequence[dict[str, Any]] | None = None
) -> dict[str, np.ndarray]:
    """An episodes .npz: one array per model input, stacked over time steps along axis 0.

    Optional keys: ``actions`` (the recorded actions, for reporting the reference's own error
    against them) and ``episode`` (the episode index of every step). With ``specs`` (the
    model's inputs: name, shape, dtype) every array is checked against them: each step is the
    input's shape, with or without its batch axis of 1, as in calibration files.
    """
    from robopt_compile.feeds import load_npz_inputs

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
    steps = {data[n].shape[0] if data[n].ndim else 0 for n in input_names}
    if len(steps) != 1:
        raise InputError(f"{p}: the input arrays have different step counts {sorted(steps)}.")
    for spec in specs or ():
        _check_steps(p, data[spec["name"]], spec)
    return data


def _check_steps(p: Path, a: np.ndarray, spec: dict[str, Any]) -> None:
    """Steps on axis 0, then the input's shape, with or without its batch axis of 1 (the
    convention of calibration files and reference inputs); InputError (one line) otherwise."""
    shape = list(spec["shape"])
    fits = lambda want: len(want) == a.ndim - 1 and all(  # noqa: E731
        isinstance(d, str) or d == n for d, n in zip(want, a.shape[1:], strict=True))  # fmt: skip
    batch_like = bool(shape) and (shape[0] == 1 or isinstance(shape[0], str))
    if fits(shape) or (batch_like and fits(shape[1:])):
        return
    dims = lambda d: ", ".join(map(str, d))  # noqa: E731
    ways = f"(steps, {dims(shape[1:])}) or (steps, {dims(shape)})" if batch_like else (
        f"(steps, {dims(shape)})")  # fmt: skip
    raise InputError(
        f"{p}: array {spec['name']!r} has shape {list(a.shape)}; the model takes {shape} per "
        f"step, so store {ways}."
    )


def _outputs_over(
    policy: TimedPolicy, data: dict[str, np.ndarray], names: Sequence[str], dtypes: dict[str, Any],
    ranks: dict[str, int] | None = None,
) -> np.ndarray:  # fmt: skip
    n = data[names[0]].shape[0]
    ranks = ranks or {}
    acts = []
    for i in range(n):
        # a step stored with its batch axis is taken as is, one without it gets one
        feeds = {k: np.asarray(data[k][i] if data[k].ndim - 1 == ranks.get(k) else
                               data[k][i : i + 1], dtype=dtypes.get(k, np.float32))
                 for k in names}  # fmt: skip
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
    specs: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run recorded observations through the reference and the candidates; action errors."""
    data = load_dataset(dataset, input_names, specs)
    dtypes = dtypes or {}
    ranks = {s["name"]: len(s["shape"]) for s in specs or ()}
    ref_act = _outputs_over(reference, data, input_names, dtypes, ranks)
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
        act = _outputs_over(pol, data, input_names, dtypes, ranks)
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
    arrays = {name: np.concatenate([e.feeds[name] for e in eps]) for name in eps[0].feeds}
    arrays["actions"] = np.concatenate([e.actions for e in eps if e.actions is not None])
    arrays["episode"] = np.concatenate(
        [np.full(e.steps, i, dtype=np.int32) for i, e in enumerate(eps)]
    )
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return {"episodes": len(eps), "steps": int(arrays["actions"].shape[0]), "path": str(out)}
