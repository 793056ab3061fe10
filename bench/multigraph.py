"""Benchmarking a multi-graph bundle: one control step is the driver loop over its engines.

``run_benchmark`` hands a bundle whose manifest has ``graphs`` to :func:`run_graph_benchmark`.
Latency is the time of a whole control step (for a VLA: vision, prefill and six decode steps,
one 7-dimensional action); fidelity is judged in action terms against the fp32 torch model's
tokens and actions stored in the bundle (``reference/outputs.npz``), on the held-out
observations in ``reference/inputs.npz``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, RoboptError
from robopt_compile.paths import member, relative
from robopt_compile.targets import Artifact, get_backend

from .control import paced_loop
from .driver import make_driver
from .stats import control_loop_stats, latency_stats


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def token_fidelity(
    ref_tokens: np.ndarray, ref_actions: np.ndarray, tokens: np.ndarray, actions: np.ndarray,
    min_agreement: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A VLA's (N x 7) action tokens and actions against the reference: token agreement (all,
    first, whole actions), action error per dimension and in L2, gripper (last dimension)
    flips; with ``min_agreement``, ``passed`` when the agreement holds."""
    ref_tokens, tokens = np.asarray(ref_tokens), np.asarray(tokens)
    diff = np.asarray(actions, np.float64) - np.asarray(ref_actions, np.float64)
    l2 = np.linalg.norm(diff, axis=1)
    grip, ref_grip = np.asarray(actions)[:, -1] > 0.5, np.asarray(ref_actions)[:, -1] > 0.5
    out: dict[str, Any] = {
        "observations": int(ref_tokens.shape[0]),
        "token_agreement": float(np.mean(ref_tokens == tokens)),
        "first_token_agreement": float(np.mean(ref_tokens[:, 0] == tokens[:, 0])),
        "all_tokens_equal": float(np.mean(np.all(ref_tokens == tokens, axis=1))),
        "action_mae_per_dim": np.mean(np.abs(diff), axis=0).round(6).tolist(),
        "action_l2": {"mean": float(l2.mean()), "max": float(l2.max())},
        "gripper_flips": int(np.sum(grip != ref_grip)),
    }
    if min_agreement is not None:
        out["min_token_agreement"] = min_agreement
        out["passed"] = out["token_agreement"] >= min_agreement - 1e-12
    return out


def chunk_fidelity(ref: np.ndarray, got: np.ndarray, atol: float | None = None) -> dict[str, Any]:
    """Continuous action chunks (a diffusion policy's, N x horizon x dim, at fixed noise)
    against the reference: error per dimension, max, L2 and relative L2; with ``atol``,
    ``passed`` when every element is within it."""
    diff = np.asarray(got, np.float64) - np.asarray(ref, np.float64)
    l2 = np.linalg.norm(diff.reshape(len(diff), -1), axis=1)
    out: dict[str, Any] = {
        "observations": int(diff.shape[0]),
        "action_mae_per_dim": np.mean(np.abs(diff), axis=(0, 1)).round(6).tolist(),
        "action_max_abs": float(np.max(np.abs(diff))),
        "action_l2": {"mean": float(l2.mean()), "max": float(l2.max())},
        "relative_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-12)),
    }
    if atol is not None:
        out["action_atol"] = atol
        out["passed"] = out["action_max_abs"] <= atol
    return out


def driver_fidelity(
    driver: Any, obs: dict[str, np.ndarray], want: dict[str, np.ndarray],
    ref: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``driver`` on every reference observation (``obs``, stacked) and judge its actions
    against the stored ones (``want``): token fidelity for a VLA, chunk fidelity otherwise;
    with the manifest's ``ref``, ``passed`` against its bound."""
    n = next(iter(obs.values())).shape[0]
    steps = [driver.step({k: v[i] for k, v in obs.items()}) for i in range(n)]
    actions = np.stack([s.actions for s in steps])
    if "tokens" in want:
        bound = None if ref is None else float(ref.get("min_token_agreement", 1.0))
        return token_fidelity(want["tokens"], want["actions"],
                              np.stack([s.tokens for s in steps]), actions, bound)  # fmt: skip
    atol = None if ref is None else float(ref.get("action_atol", 1e-3))
    return chunk_fidelity(want["actions"], actions, atol)


def open_driver(
    root: Path, manifest: dict[str, Any], threads: int | None, stack: contextlib.ExitStack
) -> Any:
    """The bundle's driver over a runner per graph; the runners live as long as ``stack``."""
    backends = {}
    runners = {}
    for g in manifest["graphs"]:
        name = g.get("backend", manifest["backend"])  # llm-decode may run on another runtime
        if name not in backends:
            backends[name] = get_backend(name)
            backends[name].require()
        backend = backends[name]
        eng = g["engine"]  # checked by load_manifest; each runner checks its engine file
        edir = root / relative(eng["dir"], f"graphs[{g['name']}].engine.dir")
        art = Artifact.from_json({"backend": name, **eng}, edir)
        try:
            runners[g["name"]] = stack.enter_context(backend.runner(art, threads))
        except RoboptError:
            raise
        except Exception as exc:  # each runtime raises its own types (ORT, OpenVINO, TRT, TVM)
            raise BackendUnavailableError(
                f"{backend.name} could not load graph {g['name']!r}: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from exc
    return make_driver(manifest["driver"]["kind"], runners, manifest["driver"]["config"])


def run_graph_benchmark(
    root: Path,
    manifest: dict[str, Any],
    runs: int,
    warmup: int,
    threads: int | None,
    control_rate: float | None = None,
    progress: Any = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Fidelity of the driver loop on the reference observations, then ``runs`` timed steps."""
    from .machine import memory_summary, rss_bytes

    ref = manifest["reference"]
    obs = load_arrays(member(root, ref["inputs"], "manifest.json: reference.inputs"))
    want = load_arrays(member(root, ref["outputs"], "manifest.json: reference.outputs"))
    n = next(iter(obs.values())).shape[0]
    rss0 = rss_bytes()
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        driver = open_driver(root, manifest, threads, stack)
        load_ms = (time.perf_counter() - t0) * 1e3
        rss_loaded = rss_bytes()
        t0 = time.perf_counter()
        fid = driver_fidelity(driver, obs, want, ref)
        first_ms = (time.perf_counter() - t0) * 1e3 / n
        first = {k: v[0] for k, v in obs.items()}
        for _ in range(warmup):
            driver.step(first)
        samples, graph_ms = [], {g["name"]: [] for g in manifest["graphs"]}
        for _ in range(runs):
            t = time.perf_counter_ns()
            r = driver.step(first)
            samples.append(time.perf_counter_ns() - t)
            for k, v in r.graph_ms.items():
                graph_ms.setdefault(k, []).append(v)
            if progress is not None:
                progress(1)
        rss_runs = rss_bytes()
        paced = None
        if control_rate is not None:
            paced = paced_loop(lambda: driver.step(first), control_rate, runs, lambda: None)
    lat = latency_stats(samples, "ns", 1)
    if keep_samples:
        lat["samples_ms"] = [s / 1e6 for s in samples]
    return {
        "result_version": 1,
        "bundle": str(root.resolve()),
        "model": manifest.get("model", {}).get("name"),
        "backend": manifest["backend"],
        "precision": manifest.get("precision"),
        "target": manifest.get("target", {}).get("profile"),
        "driver": manifest["driver"]["kind"],
        "settings": {
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "control_rate_hz": control_rate,
        },
        "timing": {"engine_load_ms": load_ms, "first_step_ms": first_ms},
        "latency": lat,
        "actions_per_s": 1e3 / lat["p50_ms"] if lat.get("p50_ms") else None,
        "graph_ms_p50": {k: float(np.median(v)) for k, v in graph_ms.items() if v},
        "control": None
        if control_rate is None
        else {**control_loop_stats(samples, control_rate), "paced": paced},
        "fidelity": fid,
        # every engine of the bundle in one process (both runtimes, if two)
        "memory": memory_summary(rss0, rss_loaded, rss_runs),
        "weight_bytes": {g["name"]: g.get("weight_bytes") for g in manifest["graphs"]},
    }
