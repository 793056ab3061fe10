"""Compiling a diffusion policy into a multi-graph bundle (docs/VLA.md, "Diffusion policy").

Two graphs and the DDIM loop that drives them (``bench/driver.py``, ``ddim``):

- ``encoder``: ``obs (1, n_obs_steps, obs_dim)`` -> ``global_cond``;
- ``denoiser``: ``sample (1, horizon, action_dim)``, ``timestep (1,)``, ``global_cond`` ->
  ``noise``, run once per DDIM step.

``--precision int8`` quantizes the denoiser with the static INT8 path and its accuracy guard
(``robopt_compile/compile/quantize.py``), calibrated on the denoiser's own inputs recorded while the
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
PRECISIONS = ("fp32", "int8", "bf16")  # bf16: OpenVINO, fp32 weights, bf16 arithmetic


def export_graphs(model: Any) -> dict[str, Any]:
    import torch

    from robopt_compile.compile.frontend import quiet_exporter

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
        with quiet_exporter(), torch.no_grad():
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


def validate(opts: Any, profile: Any, backend: Any) -> str | None:
    """What is refused before any work (one line each); the OpenVINO activation precision."""
    from robopt_compile.compile.multigraph.common import check_activations, check_backend

    if opts.precision not in PRECISIONS:
        raise InputError(
            f"--precision {opts.precision} is not built for a diffusion policy in this version; "
            f"choose {' or '.join(PRECISIONS)} (weight-only formats leave its convolutions "
            "untouched)."
        )
    check_backend(backend, "diffusion-policy")
    if opts.decode_backend is not None:
        raise InputError(
            "--decode-backend is for VLA bundles (token-by-token decoding); a diffusion "
            "policy has no decode steps: drop it."
        )
    return check_activations(opts, backend, profile, opts.precision == "bf16")


def compile_diffusion(
    source: str, out: Path, opts: Any, profile: Any, backend: Any, force: bool,
    progress: Progress, timings: dict[str, float],
) -> Any:  # fmt: skip
    from dataclasses import replace

    from robopt_compile import ir as rir
    from robopt_compile.bench.driver import DdimDriver
    from robopt_compile.bench.multigraph import chunk_fidelity
    from robopt_compile.compile import bundle
    from robopt_compile.compile.multigraph.common import (
        build_graphs,
        graph_entries,
        manifest_common,
        seal,
    )
    from robopt_compile.compile.quantize import quantize
    from robopt_compile.compile.stages import CompileResult, stage, write_report
    from robopt_compile.passes.base import PassRunner
    from robopt_compile.zoo.diffusion import describe, make_diffusion

    activations = validate(opts, profile, backend)
    name = source.removeprefix("zoo:")
    report: dict[str, Any] = {"source": source, "kind": "diffusion", "graphs": {}}
    with stage(progress, "export", timings):
        model = make_diffusion(name, seed=opts.seed)
        c = model.config
        graphs = export_graphs(model)
        eager = model.eager_driver()
        held = [model.example_inputs(HELDOUT_SEED + i) for i in range(HELDOUT)]
        ref_actions = np.stack([eager.step(o).actions for o in held])
    precision = {"encoder": "bf16" if opts.precision == "bf16" else "fp32",
                 "denoiser": opts.precision}  # fmt: skip
    if opts.precision == "int8":
        with tempfile.TemporaryDirectory(prefix="robopt-ddim-calib-") as calib_dir:
            with stage(progress, "record", timings):
                rec = _Recorder(eager.runners["denoiser"])
                drv = DdimDriver({**eager.runners, "denoiser": rec}, eager.config)
                for i in range(CALIB_EPISODES):
                    drv.step(model.example_inputs(CALIB_SEED + i))
                data = Path(calib_dir) / "denoiser.npz"
                np.savez(data, **{k: np.stack([f[k] for f in rec.feeds]) for k in rec.feeds[0]})
            with stage(progress, "quantize", timings):
                q = replace(opts.quant, calibration=str(data))
                res = quantize(graphs["denoiser"], backend, profile, "int8", opts.threads, q,
                               PassRunner([]))  # fmt: skip
        report["quantization"] = res.report
        if not res.report.get("rolled_back"):
            graphs["denoiser"] = res.model
        else:
            precision["denoiser"] = "fp32"
            progress(f"rolled back to fp32: {res.report.get('rollback_reason')}", "note", 0.0)
    for g in GRAPHS:
        report["graphs"][g] = {"precision": precision[g],
                               "weight_bytes": rir.weight_bytes(graphs[g])}  # fmt: skip
    quantized = precision["denoiser"] == "int8"
    # Judged like a quantized bundle when anything is not fp32 computed in fp32.
    approx = quantized or activations == "bf16" or precision["denoiser"] == "bf16"
    with bundle.staged_output(out, force) as tmp:
        with stage(progress, "build", timings):
            built = build_graphs(graphs, precision, backend, profile, opts.threads, tmp,
                                 activations)  # fmt: skip
        with stage(progress, "verify", timings), contextlib.ExitStack() as stack:
            runners = {b.name: stack.enter_context(backend.runner(b.artifact, opts.threads))
                       for b in built}  # fmt: skip
            drv = DdimDriver(runners, eager.config)
            t0 = time.perf_counter()
            fid = chunk_fidelity(ref_actions, np.stack([drv.step(o).actions for o in held]))
            fid["driver_seconds"] = time.perf_counter() - t0
        max_rel = opts.quant.max_drop if opts.quant.max_drop is not None else 0.05
        atol = 3 * fid["action_max_abs"] + 1e-4 if approx else FP32_ACTION_ATOL
        fid["passed"] = (fid["relative_l2"] <= max_rel) if approx else (
            fid["action_max_abs"] <= FP32_ACTION_ATOL)  # fmt: skip
        if not fid["passed"]:
            raise CheckFailedError(
                f"the {backend.name} {opts.precision} engines' actions "
                f"differ from the torch policy's at fixed noise: relative L2 "
                f"{fid['relative_l2']:.3g}, max abs {fid['action_max_abs']:.3g}"
                + (f" (bound {max_rel:g}, --max-accuracy-drop)" if approx else "")
                + "."
            )
        obs_in = {k: np.stack([o[k] for o in held]) for k in held[0]}
        bundle.save_npz(tmp / "reference" / "inputs.npz", obs_in)
        bundle.save_npz(tmp / "reference" / "outputs.npz", {"actions": ref_actions})
        stages = {k: round(v, 4) for k, v in timings.items()}
        report.update({"fidelity": fid, "model": describe(c), "stage_seconds": stages})
        bundle.write_json(tmp / "report.json", report)
        manifest = {
            **manifest_common(
                {"name": name, "source": source, "source_kind": "zoo", "kind": "diffusion"},
                profile, backend, "int8" if quantized else precision["denoiser"], opts.precision,
                opts.threads, activations or "f32",
            ),
            "graphs": graph_entries(built, graphs, precision),
            "driver": {"kind": "ddim", "config": eager.config},
            "inputs": [{"name": "obs", "shape": [1, c.n_obs_steps, c.obs_dim],
                        "dtype": "float32"}],
            "outputs": [{"name": "actions", "shape": [c.horizon, c.action_dim],
                         "dtype": "float32"}],
            "reference": {"inputs": "reference/inputs.npz",
                          "outputs": "reference/outputs.npz", "action_atol": atol,
                          "heldout_seed": HELDOUT_SEED},
            "parity": {"actions": fid},
        }  # fmt: skip
        seal(tmp, manifest)
        with stage(progress, "report", timings):  # before publishing: a bundle has its report
            write_report(tmp, progress, out)
    return CompileResult(out=out, manifest=manifest, report=report, facts={})
