"""Compiling a diffusion policy into a multi-graph bundle (docs/VLA.md, "Diffusion policy").

Two graphs and the DDIM loop that drives them (``bench/driver.py``, ``ddim``):

- ``encoder``: ``obs (1, n_obs_steps, obs_dim)`` -> ``global_cond``;
- ``denoiser``: ``sample (1, horizon, action_dim)``, ``timestep (1,)``, ``global_cond`` ->
  ``noise``, run once per DDIM step.

``--precision int8`` quantizes the denoiser with the static INT8 path and its accuracy guard
(``robopt_compile/quantize.py``), calibrated on the denoiser's own inputs recorded while the
fp32 torch policy samples actions for observations the check never uses; the small encoder
stays fp32. The bundle is judged by the actions: the driver with the engines against the
torch policy on held-out observations at fixed initial noise (action error per dimension,
max and L2).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import CheckFailedError, InputError

Progress = Callable[[str, str, float], None]
GRAPHS = ("encoder", "denoiser")
HELDOUT_SEED = 20_000  # held-out observations and noise
CALIB_SEED = 30_000  # the observations whose denoiser inputs calibrate int8
HELDOUT = 8
CALIB_EPISODES = 16  # x DDIM steps denoiser inputs
FP32_ACTION_ATOL = 1e-3
PRECISIONS = ("fp32", "int8")


def export_graphs(model: Any) -> dict[str, Any]:
    import warnings

    import torch

    c = model.config
    ex = model.example_inputs(0)
    obs = torch.from_numpy(ex["obs"])
    cond = model.encoder(obs).detach()
    den_args = (torch.from_numpy(ex["noise"]), torch.tensor([c.train_steps - 1]), cond)
    jobs = {
        "encoder": (model.encoder, (obs,), ["obs"], ["global_cond"]),
        "denoiser": (model.denoiser, den_args, ["sample", "timestep", "global_cond"], ["noise"]),
    }
    out = {}
    for name, (mod, args, ins, outs) in jobs.items():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(mod, args, dynamo=True, input_names=ins, output_names=outs,
                                     optimize=True, verbose=False)  # fmt: skip
        out[name] = prog.model
    return out


class _Recorder:
    """Wraps the eager denoiser runner and keeps every input it sees (calibration data)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.feeds = inner, []

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.inner.infer(feeds)


def action_fidelity(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    diff = np.asarray(got, np.float64) - np.asarray(ref, np.float64)  # (N, horizon, dim)
    l2 = np.linalg.norm(diff.reshape(diff.shape[0], -1), axis=1)
    return {
        "observations": int(diff.shape[0]),
        "action_mae_per_dim": np.mean(np.abs(diff), axis=(0, 1)).round(6).tolist(),
        "action_max_abs": float(np.max(np.abs(diff))),
        "action_l2": {"mean": float(l2.mean()), "max": float(l2.max())},
        "relative_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-12)),
    }


def compile_diffusion(
    source: str, out: Path, opts: Any, profile: Any, backend: Any, force: bool,
    progress: Progress, timings: dict[str, float],
) -> Any:  # fmt: skip
    from dataclasses import replace

    from robopt_compile import bundle
    from robopt_compile import ir as rir
    from robopt_compile.bench.driver import DdimDriver
    from robopt_compile.passes.base import PassRunner
    from robopt_compile.pipeline import CompileResult, _stage, write_report
    from robopt_compile.quantize import quantize
    from robopt_compile.targets import BuildOptions
    from robopt_compile.zoo.diffusion import describe, make_diffusion

    if opts.precision not in PRECISIONS:
        raise InputError(
            f"--precision {opts.precision} is not built for a diffusion policy in this version; "
            f"choose {' or '.join(PRECISIONS)} (weight-only formats leave its convolutions "
            "untouched)."
        )
    if backend.name not in ("onnxruntime", "openvino"):
        raise InputError(
            f"a diffusion-policy bundle is built with onnxruntime or openvino in this version, "
            f"not {backend.name!r}; pass -b onnxruntime or -b openvino."
        )
    name = source.removeprefix("zoo:")
    report: dict[str, Any] = {"source": source, "kind": "diffusion", "graphs": {}}
    with _stage(progress, "export", timings):
        model = make_diffusion(name, seed=opts.seed)
        c = model.config
        graphs = export_graphs(model)
        eager = model.eager_driver()
        held = [model.example_inputs(HELDOUT_SEED + i) for i in range(HELDOUT)]
        ref_actions = np.stack([eager.step(o).actions for o in held])
    calib_dir = None
    try:
        precision = {"encoder": "fp32", "denoiser": opts.precision}
        if opts.precision == "int8":
            with _stage(progress, "record", timings):
                rec = _Recorder(eager.runners["denoiser"])
                drv = DdimDriver({**eager.runners, "denoiser": rec}, eager.config)
                for i in range(CALIB_EPISODES):
                    drv.step(model.example_inputs(CALIB_SEED + i))
                calib_dir = Path(tempfile.mkdtemp(prefix="robopt-ddim-calib-"))
                arrays = {k: np.stack([f[k] for f in rec.feeds]) for k in rec.feeds[0]}
                np.savez(calib_dir / "denoiser.npz", **arrays)
            with _stage(progress, "quantize", timings):
                q = replace(opts.quant, calibration=str(calib_dir / "denoiser.npz"))
                res = quantize(graphs["denoiser"], backend, profile, "int8", opts.threads, q,
                               PassRunner([]))  # fmt: skip
                report["quantization"] = res.report
                if not res.report.get("rolled_back"):
                    graphs["denoiser"] = res.model
                else:
                    precision["denoiser"] = "fp32"
                    progress(f"rolled back to fp32: {res.report.get('rollback_reason')}",
                             "note", 0.0)  # fmt: skip
        for g in GRAPHS:
            report["graphs"][g] = {"precision": precision[g],
                                   "weight_bytes": rir.weight_bytes(graphs[g])}  # fmt: skip
        with bundle.staged_output(out, force) as tmp:
            entries = []
            with _stage(progress, "build", timings):
                for g in GRAPHS:
                    gdir = tmp / "graphs" / g
                    files = rir.save(graphs[g], gdir / "model.onnx")
                    bp = "int8" if precision[g] == "int8" else "fp32"
                    art = backend.build(gdir / "model.onnx", profile,
                                        BuildOptions(precision=bp, threads=opts.threads),
                                        gdir / "engine")  # fmt: skip
                    entries.append((g, files, art))
            with _stage(progress, "verify", timings), contextlib.ExitStack() as stack:
                runners = {g: stack.enter_context(backend.runner(a, opts.threads))
                           for g, _, a in entries}  # fmt: skip
                drv = DdimDriver(runners, eager.config)
                t0 = time.perf_counter()
                got = np.stack([drv.step(o).actions for o in held])
                fid = action_fidelity(ref_actions, got)
                fid["driver_seconds"] = time.perf_counter() - t0
            quantized = precision["denoiser"] == "int8"
            max_rel = opts.quant.max_drop if opts.quant.max_drop is not None else 0.05
            atol = 3 * fid["action_max_abs"] + 1e-4 if quantized else FP32_ACTION_ATOL
            fid["passed"] = (fid["relative_l2"] <= max_rel) if quantized else (
                fid["action_max_abs"] <= FP32_ACTION_ATOL)  # fmt: skip
            if not fid["passed"]:
                raise CheckFailedError(
                    f"the {backend.name} {'int8' if quantized else 'fp32'} engines' actions "
                    f"differ from the torch policy's at fixed noise: relative L2 "
                    f"{fid['relative_l2']:.3g}, max abs {fid['action_max_abs']:.3g}"
                    + (f" (bound {max_rel:g}, --max-accuracy-drop)" if quantized else "")
                    + "."
                )
            obs_in = {k: np.stack([o[k] for o in held]) for k in held[0]}
            bundle.save_npz(tmp / "reference" / "inputs.npz", obs_in)
            bundle.save_npz(tmp / "reference" / "outputs.npz", {"actions": ref_actions})
            stages = {k: round(v, 4) for k, v in timings.items()}
            report.update({"fidelity": fid, "model": describe(c), "stage_seconds": stages})
            bundle.write_json(tmp / "report.json", report)
            manifest = {
                "schema_version": bundle.SCHEMA_VERSION,
                "robopt_version": bundle.tool_versions()["robopt"],
                "created_utc": bundle.utc_now(),
                "model": {"name": name, "source": source, "source_kind": "zoo",
                          "kind": "diffusion"},
                "target": {"profile": profile.name, "arch": profile.arch,
                           "description": profile.description},
                "backend": backend.name,
                "precision": "int8" if quantized else "fp32",
                "requested_precision": opts.precision,
                "graphs": [{
                    "name": g, "precision": precision[g],
                    "model_files": [f"graphs/{g}/{f.name}" for f in files],
                    "engine": {"dir": f"graphs/{g}/engine", **art.to_json()},
                    "inputs": [s.to_json() for s in rir.input_specs(graphs[g])],
                    "outputs": [s.to_json() for s in rir.output_specs(graphs[g])],
                    "weight_bytes": report["graphs"][g]["weight_bytes"],
                } for g, files, art in entries],
                "driver": {"kind": "ddim", "config": eager.config},
                "inputs": [{"name": "obs", "shape": [1, c.n_obs_steps, c.obs_dim],
                            "dtype": "float32"}],
                "outputs": [{"name": "actions", "shape": [c.horizon, c.action_dim],
                             "dtype": "float32"}],
                "reference": {"inputs": "reference/inputs.npz",
                              "outputs": "reference/outputs.npz", "action_atol": atol,
                              "heldout_seed": HELDOUT_SEED},
                "parity": {"actions": fid},
                "build": {"threads": opts.threads},
                "tool_versions": bundle.tool_versions(),
            }  # fmt: skip
            manifest["files"] = bundle.hash_tree(tmp)
            bundle.write_json(tmp / bundle.MANIFEST, manifest)
    finally:
        if calib_dir is not None:
            import shutil

            shutil.rmtree(calib_dir, ignore_errors=True)
    with _stage(progress, "report", timings):
        write_report(out, progress)
    return CompileResult(out=out, manifest=manifest, report=report, facts={})
