"""Compiling an OpenVLA-style model into a multi-graph bundle (docs/VLA.md).

A VLA is not one graph run once. robopt exports its graphs from the torch model
(``robopt_compile/zoo/vla.py``) and names the loop that drives them (``bench/driver.py``):

- ``vision``: ``pixel_values`` -> ``image_embeds`` (DINOv2 + SigLIP + projector);
- ``embed``: ``input_ids`` -> ``token_embeds``: the embedding table, in a graph of its own so
  that it is stored and loaded once (INT8 per row when the precision compresses weights);
- ``llm``: prefill and decode in one graph: ``inputs_embeds`` (dynamic length) and the
  key/value cache of every layer (dynamic length; empty for the prefill) -> the next token's
  action logits and the grown cache.

Each graph goes through its own passes and is built by the backend on its own terms: with
``--precision int4-weight`` the language model gets INT4 weights (ONNX Runtime
``MatMulNBits``, or NNCF's INT4 for OpenVINO), the vision encoder and the embedding table INT8
weights; with ``int8-weight`` every graph gets INT8 weights. The graphs are checked against
torch one by one, and the bundle's driver loop against the torch model's actions on held-out
observations: action-token agreement, continuous action error per dimension, gripper flips.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import CheckFailedError, InputError, install_hint

Progress = Callable[[str, str, float], None]
GRAPHS = ("vision", "embed", "llm")
DECODE = "llm-decode"  # --decode-backend: the llm built by a second runtime for the decode steps
HELDOUT_SEED = 10_000  # held-out observations: seeds from here (the export example uses 0)
HELDOUT = 8
EXPORT_TOLERANCE = {"cosine_min": 0.9999, "atol": 1e-3, "rtol": 1e-3}
# A weight-compressed graph is judged by the actions it produces; per graph only its cosine.
QUANT_TOLERANCE = {"cosine_min": 0.99, "atol": float("inf"), "rtol": 0.0}
# Weight precision of each graph per requested precision.
PLAN = {
    "fp32": {"vision": "fp32", "embed": "fp32", "llm": "fp32"},
    "int8-weight": {"vision": "int8-weight", "embed": "int8-weight", "llm": "int8-weight"},
    "int4-weight": {"vision": "int8-weight", "embed": "int8-weight", "llm": "int4-weight"},
    # OpenVINO: fp32 weights, bf16 arithmetic (AMX / AVX-512 BF16) in every graph.
    "bf16": {"vision": "bf16", "embed": "bf16", "llm": "bf16"},
    # Static INT8 for the vision encoder (calibrated on images, accuracy guard), INT8 weights
    # for the language model.
    "int8": {"vision": "int8", "embed": "int8-weight", "llm": "int8-weight"},
}
CALIB_SEED = 40_000  # observations whose images calibrate the static INT8 vision encoder
CALIB_IMAGES = 32
WEIGHT_PASS = {
    # Measured on openvla-mini here (1 thread, one run each, ms per action): 8-bit weights
    # 2399 with ORT's default compute vs 739 with accuracy_level 4 (int8 activations, VNNI/AMX;
    # the prefill is compute bound); 4-bit weights 706 by default vs 896 with level 4.
    ("onnxruntime", "int8-weight"): ("weight-only-ort", {"bits": 8, "accuracy_level": 4}),
    ("onnxruntime", "int4-weight"): ("weight-only-ort", {"bits": 4}),
    ("openvino", "int8-weight"): ("weight-only-nncf", {"bits": 8}),
    ("openvino", "int4-weight"): ("weight-only-nncf", {"bits": 4}),
}
DEFAULT_MIN_AGREEMENT = 0.95
# --decode-backend: the weight pass of the llm-decode graph. ONNX Runtime decodes with
# accuracy_level 4 (int8 activations on VNNI/AMX): measured on openvla-mini here (1 thread, one
# process, medians of 18 steps) 12.9 ms per decode step at 4 bits vs 16.2 ms at level 0, and
# 14.1 ms at 8 bits; OpenVINO's compressed FullyConnected took 20-31 ms for the same step.
DECODE_PRECISIONS = ("fp32", "int8-weight", "int4-weight")
DECODE_WEIGHT_PASS = {
    **WEIGHT_PASS,
    ("onnxruntime", "int4-weight"): ("weight-only-ort", {"bits": 4, "accuracy_level": 4}),
}
# --decode-backend auto keeps llm-decode only when its decode step takes at most this share of
# the main runtime's (it doubles the language model's weights).
DECODE_KEEP_RATIO = 0.9
DECODE_ROUNDS = 7


def choose_decode(runners: dict[str, Any], feeds: dict[str, np.ndarray],
                  rounds: int = DECODE_ROUNDS) -> dict[str, Any]:  # fmt: skip
    """Time one decode step (``feeds``: a token and the prefill's cache) on the main ``llm``
    runner and on ``llm-decode``, interleaved, one warm-up each; ``kept`` when llm-decode's
    median is at most :data:`DECODE_KEEP_RATIO` of the llm's."""
    import statistics

    ms: dict[str, list[float]] = {"llm": [], DECODE: []}
    for g in ms:
        runners[g].infer(feeds)
    for _ in range(rounds):
        for g, times in ms.items():
            t = time.perf_counter()
            runners[g].infer(feeds)
            times.append((time.perf_counter() - t) * 1e3)
    med = {g: statistics.median(v) for g, v in ms.items()}
    return {
        "ms_per_step": med,
        "rounds": rounds,
        "kept": med[DECODE] <= DECODE_KEEP_RATIO * med["llm"],
        "rule": f"llm-decode kept when its median step is <= {DECODE_KEEP_RATIO}x the llm's",
    }


def export_graphs(model: Any) -> dict[str, Any]:
    """``vision`` and ``llm`` as onnx-ir models (torch.export + ONNX; the llm's sequence and
    cache lengths are dynamic)."""
    import torch

    from robopt_compile.compile.frontend import quiet_exporter
    from robopt_compile.zoo.vla import LlmStep, prompt_embeds

    c = model.config
    ex = model.example_inputs(0)
    past = [f"past.{i}.{kv}" for i in range(c.llm_layers) for kv in "kv"]
    present = [f"present.{i}.{kv}" for i in range(c.llm_layers) for kv in "kv"]
    step = LlmStep(model)
    with torch.no_grad():
        x = prompt_embeds(model.llm.model.embed_tokens, ex["input_ids"], model.vision(
            ex["pixel_values"]))  # fmt: skip
        # Example cache of 2 (torch.export specializes lengths 0 and 1); the graph runs with 0.
        example_past = [t[:, :, :2] for t in step(x, *step.empty_cache())[1:]]
    seq = torch.export.Dim("seq", min=1, max=4096)
    cache = torch.export.Dim("cache", min=1, max=4096)
    jobs = {
        "vision": (model.vision, (ex["pixel_values"],), None, ["pixel_values"], ["image_embeds"]),
        "llm": (step, (x, *example_past), ({1: seq}, tuple({2: cache} for _ in past)),
                ["inputs_embeds", *past], ["logits", *present]),
    }  # fmt: skip
    out: dict[str, Any] = {}
    for name, (mod, args, dyn, ins, outs) in jobs.items():
        with quiet_exporter(), torch.no_grad():
            prog = torch.onnx.export(
                mod, args, dynamo=True, dynamic_shapes=dyn, input_names=ins,
                output_names=outs, optimize=True, verbose=False,
            )  # fmt: skip
        out[name] = prog.model
    return out


def embed_graph(table: np.ndarray, precision: str) -> Any:
    """The embedding lookup as its own graph: ``Gather`` on the fp32 table, or on an INT8
    table with one fp32 scale per row (symmetric) for the weight-compressing precisions."""
    import onnx_ir as ir

    ids = ir.Value(name="input_ids", type=ir.TensorType(ir.DataType.INT64),
                   shape=ir.Shape([1, "seq"]))  # fmt: skip
    out = ir.Value(name="token_embeds", type=ir.TensorType(ir.DataType.FLOAT),
                   shape=ir.Shape([1, "seq", table.shape[1]]))  # fmt: skip
    inits = []
    if precision == "fp32":
        w = ir.Value(name="embed.weight", const_value=ir.tensor(table.astype(np.float32)))
        nodes = [ir.node("Gather", [w, ids], outputs=[out])]
        inits = [w]
    else:
        scale = np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        wq = ir.Value(name="embed.weight_int8", const_value=ir.tensor(q))
        ws = ir.Value(name="embed.scale", const_value=ir.tensor(scale.astype(np.float32)))
        g1 = ir.node("Gather", [wq, ids])
        g2 = ir.node("Gather", [ws, ids])
        cast = ir.node("Cast", [g1.outputs[0]], attributes={"to": ir.DataType.FLOAT})
        mul = ir.node("Mul", [cast.outputs[0], g2.outputs[0]], outputs=[out])
        nodes, inits = [g1, g2, cast, mul], [wq, ws]
    graph = ir.Graph([ids], [out], nodes=nodes, initializers=inits, opset_imports={"": 18},
                     name="embed")  # fmt: skip
    return ir.Model(graph, ir_version=10, producer_name="robopt")


def _torch_graph_reference(model: Any, obs: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's inputs and torch outputs on one observation (for the per-graph check):
    the llm on the prefill (empty cache) and on one decode step."""
    import torch

    from robopt_compile.zoo.vla import LlmStep, prompt_embeds

    c = model.config
    step = LlmStep(model)
    embed = model.llm.model.embed_tokens
    with torch.no_grad():
        image = model.vision(obs["pixel_values"])
        x = prompt_embeds(embed, obs["input_ids"], image)
        pre = step(x, *step.empty_cache())
        tok = torch.tensor([[c.vocab_size - 256 + int(pre[0][0].argmax())]])
        e = embed(tok)
        dec = step(e, *pre[1:])
    names = [f"present.{i}.{kv}" for i in range(c.llm_layers) for kv in "kv"]

    def past(ts: Any) -> dict[str, np.ndarray]:
        return {n.replace("present", "past"): t.numpy() for n, t in zip(names, ts, strict=True)}

    def outs(r: Any) -> dict[str, np.ndarray]:
        cache = {n: t.numpy() for n, t in zip(names, r[1:], strict=True)}
        return {"logits": r[0].numpy(), **cache}

    return {
        "vision": {"in": {"pixel_values": obs["pixel_values"].numpy()},
                   "out": {"image_embeds": image.numpy()}},
        "embed": {"in": {"input_ids": obs["input_ids"].numpy()},
                  "out": {"token_embeds": embed(obs["input_ids"]).detach().numpy()}},
        "llm": {"in": {"inputs_embeds": x.numpy(), **past(step.empty_cache())}, "out": outs(pre)},
        "llm-decode": {"in": {"inputs_embeds": e.numpy(), **past(pre[1:])}, "out": outs(dec)},
    }  # fmt: skip


def heldout_observations(model: Any, n: int = HELDOUT) -> list[dict[str, Any]]:
    """Observations the export never saw (seeds from :data:`HELDOUT_SEED`)."""
    return [model.example_inputs(HELDOUT_SEED + i) for i in range(n)]


def _graph_precision(precision: str) -> dict[str, str]:
    if precision not in PLAN:
        raise InputError(
            f"--precision {precision} is not built for a VLA in this version; choose one of "
            f"{', '.join(PLAN)} (per graph: {json.dumps(PLAN['int4-weight'])} for int4-weight)."
        )
    return dict(PLAN[precision])


def _static_int8(
    graph: Any, model: Any, opts: Any, backend: Any, profile: Any, info: dict[str, Any],
    progress: Progress,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The vision graph through robopt's static INT8 path, calibrated on ``--calibration``
    (``pixel_values``) or on the images of observations the checks never use (seeds from
    :data:`CALIB_SEED`); the guard's held-out relative L2 of ``image_embeds`` (default bound
    0.01) decides, with mixed precision or a rollback to fp32."""
    import tempfile

    from robopt_compile.compile.quantize import quantize
    from robopt_compile.passes.base import PassRunner

    with tempfile.TemporaryDirectory(prefix="robopt-vla-calib-") as d:
        path = Path(d) / "images.npz"
        pixels = np.stack([model.example_inputs(CALIB_SEED + i)["pixel_values"].numpy()
                           for i in range(CALIB_IMAGES)])  # fmt: skip
        np.savez(path, pixel_values=pixels)
        # --calibration (an .npz or folder of pixel_values) when given, else the synthetic
        # observations' images.
        user = opts.quant.calibration
        q = replace(opts.quant, calibration=user or str(path), max_drop=None)
        res = quantize(graph, backend, profile, "int8", opts.threads, q, PassRunner([]))
    rolled = bool(res.report.get("rolled_back"))
    info = {**info, "pass": "static int8 (robopt_compile/compile/quantize.py)",
            "quantization": res.report, "rolled_back": rolled}  # fmt: skip
    if res.report.get("rolled_back"):
        progress(f"vision int8 rolled back to fp32: {res.report.get('rollback_reason')}",
                 "note", 0.0)  # fmt: skip
        info["precision"] = "fp32"
        return graph, info
    return res.model, info


def require_transformers() -> None:
    """The VLA is built from transformers 5 components: without them, one line naming the
    extra (exit 3), before any work."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        from robopt_compile.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "an OpenVLA-style model needs transformers 5 (DINOv2, SigLIP, Llama): "
            f"{install_hint('vla')}."
        )


# Without -b, a weight-compressed VLA gets the build measured fastest on this kind of CPU
# (docs/VLA.md, "Measured", run 3: openvla-mini int4-weight 3.03x eager with OpenVINO's bf16
# prefill and ONNX Runtime's decode, vs 1.03x on ONNX Runtime, the host's first backend).
RECIPE_PRECISIONS = ("int8-weight", "int4-weight")


def default_recipe(opts: Any, profile: Any, backend: Any) -> tuple[Any, Any, str | None]:
    """``(opts, backend, note)``: when the user named no backend and asked for a weight-only
    precision, OpenVINO (where the target lists it and it runs here), bf16 arithmetic where the
    target has it, and ``--decode-backend auto`` where ONNX Runtime is available; whatever the
    user set (``--activations``, ``--decode-backend``) is kept. Otherwise unchanged."""

    from robopt_compile.targets import get_backend

    if opts.backend is not None or opts.precision not in RECIPE_PRECISIONS:
        return opts, backend, None

    def usable(name: str) -> Any:
        if name not in profile.backends:
            return None
        b = get_backend(name)
        return b if b.availability()[0] else None

    ov = usable("openvino")
    if ov is None:
        return opts, backend, None
    acts = opts.activations or ("bf16" if "bf16" in profile.precisions else None)
    decode = opts.decode_backend or ("auto" if usable("onnxruntime") else None)
    note = (
        f"VLA {opts.precision} on {profile.name}: openvino, {acts or 'fp32'} arithmetic"
        + (", decode steps on onnxruntime if they measure faster here" if decode == "auto"
           else f", decode steps on {decode or 'openvino'}")
        + " (-b, --activations and --decode-backend choose otherwise)"
    )  # fmt: skip
    return replace(opts, backend="openvino", activations=acts, decode_backend=decode), ov, note


def validate(opts: Any, profile: Any, backend: Any) -> tuple[dict[str, str], str | None, Any]:
    """What is refused before any work (one line each): the per-graph precisions, the
    OpenVINO activation precision and the decode runtime (``--decode-backend``; returned, or
    None when the decode steps run on ``backend``)."""
    from robopt_compile.compile.multigraph.common import (
        check_activations,
        check_backend,
        multigraph_backends,
    )
    from robopt_compile.targets import get_backend

    require_transformers()
    plan = _graph_precision(opts.precision)
    check_backend(backend, "VLA")
    activations = check_activations(opts, backend, profile, opts.precision == "bf16")
    name = opts.decode_backend
    if name == "auto":  # the other runtime, when it can be built and timed here
        from robopt_compile.compile.resolve import target_status

        name = "onnxruntime" if backend.name == "openvino" else "openvino"
        other = get_backend(name)
        if (name not in profile.backends or not other.availability()[0]
                or plan["llm"] not in DECODE_PRECISIONS
                or not target_status(profile, backend.name)["run"]):  # fmt: skip
            return plan, activations, None
    if name is None or name == backend.name:
        return plan, activations, None
    if name not in multigraph_backends():
        raise InputError(
            f"--decode-backend must be one of {', '.join(multigraph_backends())}, not {name!r}."
        )
    decode = get_backend(name)
    decode.require()  # a missing runtime: one line, exit 3
    if plan["llm"] not in DECODE_PRECISIONS:
        raise InputError(
            f"--decode-backend {name} runs the language model at fp32, int8-weight or "
            f"int4-weight, not {plan['llm']}: drop --decode-backend or choose one of those."
        )
    if name not in profile.backends:
        raise InputError(
            f"target {profile.name!r} does not list {name} among its backends "
            f"({', '.join(profile.backends)}); drop --decode-backend."
        )
    return plan, activations, decode


def compile_vla(
    source: str, out: Path, opts: Any, profile: Any, backend: Any, force: bool,
    progress: Progress, timings: dict[str, float],
) -> Any:  # fmt: skip
    """Export, compress, build and check the three graphs; write the multi-graph bundle."""
    from robopt_compile import ir as rir
    from robopt_compile.bench.driver import VlaGreedyDriver
    from robopt_compile.bench.multigraph import token_fidelity
    from robopt_compile.compile import bundle
    from robopt_compile.compile.multigraph.common import (
        build_graphs,
        graph_entries,
        manifest_common,
        seal,
    )
    from robopt_compile.compile.stages import CompileResult, stage, write_report
    from robopt_compile.compile.tasks import (
        evaluate_vla_bundle,
        record_vla_calibration,
        require_adapter,
        resolve_eval_task,
    )
    from robopt_compile.numerics import judge
    from robopt_compile.passes import get_pass_class
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner, TimingInstrument
    from robopt_compile.zoo import load_vla
    from robopt_compile.zoo.vla import describe, load_folder

    plan, activations, decode = validate(opts, profile, backend)
    task_calib = (opts.quant.calibration or "").split(":")[0] == "task"
    if opts.eval is not None or task_calib:  # before any work: the model must run in a task
        require_adapter(source, "--eval" if opts.eval is not None else "--calibration task")
    f32 = activations in (None, "f32")

    def exact(g: str) -> bool:  # fp32 weights computed in fp32 reproduce torch (else a bug)
        return plan[g] == "fp32" and f32

    max_disagree = opts.quant.max_drop if opts.quant.max_drop is not None else (
        1 - DEFAULT_MIN_AGREEMENT)  # fmt: skip
    with stage(progress, "export", timings):
        if source.startswith("zoo:"):
            model = load_vla(source.removeprefix("zoo:"), seed=opts.seed)
            source_kind = "zoo"
        else:  # a local folder (robopt_compile.zoo.vla.save_folder)
            model = load_folder(source)
            source_kind = "folder"
        c = model.config
        name = c.name
        graphs = export_graphs(model)
        table = model.llm.model.embed_tokens.weight.detach().numpy()
        refs = _torch_graph_reference(model, model.example_inputs(HELDOUT_SEED + 99))
        held = heldout_observations(model)
        ref_tok, ref_act = zip(*(model.predict_action(**o) for o in held), strict=True)
        ref_tokens, ref_actions = np.stack(ref_tok), np.stack(ref_act)
    report: dict[str, Any] = {"source": source, "kind": "vla", "graphs": {}}
    if decode is not None:  # the llm again, for the decode steps on another runtime
        graphs[DECODE] = rir.clone(graphs["llm"])
    with bundle.staged_output(out, force) as tmp:
        calib_file = tmp / "calibration-task.npz"  # --calibration task: removed after use
        if task_calib and "int8" in plan.values():
            with stage(progress, "record", timings):
                report["calibration"] = record_vla_calibration(
                    opts.quant.calibration, source, model, calib_file, opts)  # fmt: skip
            opts = replace(opts, quant=replace(opts.quant, calibration=str(calib_file)))
        with stage(progress, "compress", timings):
            for g in (*GRAPHS, DECODE) if decode is not None else GRAPHS:
                p = plan["llm" if g == DECODE else g]
                runtime = decode if g == DECODE else backend
                if g == "embed":
                    graphs[g] = embed_graph(table, "fp32")
                before = rir.weight_bytes(graphs[g])
                info: dict[str, Any] = {"precision": p, "weight_bytes_fp32": before,
                                        "backend": runtime.name}  # fmt: skip
                if g == "embed" and p != "fp32":
                    graphs[g] = embed_graph(table, p)
                    info["pass"] = "int8 per-row table (robopt)"
                elif p == "int8":  # static INT8 with its accuracy guard (quantize.py)
                    graphs[g], info = _static_int8(graphs[g], model, opts, backend, profile,
                                                   info, progress)  # fmt: skip
                    if info.get("rolled_back"):
                        plan[g] = "fp32"
                elif p not in ("fp32", "bf16"):
                    pname, kw = (DECODE_WEIGHT_PASS if g == DECODE else WEIGHT_PASS)[
                        (runtime.name, p)]  # fmt: skip
                    pas = get_pass_class(pname)(**kw)
                    # Through a runner, as single graphs: PassError naming the pass, its
                    # timing in report.json, --dump-ir DIR/<graph>/.
                    timing = TimingInstrument()
                    dump = [DumpIRInstrument(Path(opts.dump_ir) / g)] if opts.dump_ir else []
                    graphs[g] = PassRunner([timing, *dump]).run([pas], graphs[g])
                    info["pass"] = pname
                    info["pass_report"] = getattr(pas, "report", {})
                    info["pass_seconds"] = round(sum(r.seconds for r in timing.records), 4)
                info["weight_bytes"] = rir.weight_bytes(graphs[g])
                report["graphs"][g] = info
        calib_file.unlink(missing_ok=True)
        with stage(progress, "build", timings):
            built = build_graphs(graphs, plan, backend, profile, opts.threads, tmp, activations)
            if decode is not None:  # computes in the graph's own precision (no bf16 hint)
                built += build_graphs(graphs, {DECODE: plan["llm"]}, decode, profile,
                                      opts.threads, tmp)  # fmt: skip
        checks: dict[str, Any] = {}
        dropped = False  # --decode-backend auto measured the second runtime no faster
        with stage(progress, "verify", timings):
            with contextlib.ExitStack() as stack:
                runners = {
                    b.name: stack.enter_context(
                        (decode if b.name == DECODE else backend).runner(b.artifact, opts.threads))
                    for b in built
                }  # fmt: skip
                if decode is not None and opts.decode_backend == "auto":  # measured here
                    choice = choose_decode(runners, refs[DECODE]["in"])
                    choice["runtimes"] = {"llm": backend.name, DECODE: decode.name}
                    report["decode_choice"] = choice
                    ms = choice["ms_per_step"]
                    verdict = (f"the decode steps run on {decode.name}" if choice["kept"]
                               else f"{decode.name}'s decode graph dropped")  # fmt: skip
                    said = (f"decode step here: {decode.name} {ms[DECODE]:.1f} ms, "
                            f"{backend.name} {ms['llm']:.1f} ms: {verdict}")  # fmt: skip
                    progress(said, "info", 0.0)
                    if not choice["kept"]:
                        dropped = True
                        del runners[DECODE]
                        built = [b for b in built if b.name != DECODE]
                        report["graphs"].pop(DECODE)
                # Each graph on the step it runs: the llm's prefill, and the decode step on
                # llm-decode when the bundle has one.
                for check in (*GRAPHS, DECODE):
                    g = check.split("-")[0]
                    got = runners.get(check, runners[g]).infer(refs[check]["in"])
                    tol = EXPORT_TOLERANCE if exact(g) else QUANT_TOLERANCE
                    checks[check] = judge(refs[check]["out"], got, tol)
                    checks[check]["tolerance"] = tol
                drv = VlaGreedyDriver(runners, c.driver_config())
                t0 = time.perf_counter()
                steps = [drv.step({k: v.numpy() for k, v in o.items()}) for o in held]
                loop_s = time.perf_counter() - t0
            if dropped:  # after its runner closed
                shutil.rmtree(tmp / "graphs" / DECODE)
            tokens = np.stack([s.tokens for s in steps])
            actions = np.stack([s.actions for s in steps])
            fid = token_fidelity(ref_tokens, ref_actions, tokens, actions)
            fid["driver_seconds"] = loop_s
            disagree = 1 - fid["token_agreement"]
            fid["max_token_disagreement"] = max_disagree
            fid["passed"] = disagree <= max_disagree + 1e-12
            if all(exact(g) for g in plan) and disagree > 0:
                raise CheckFailedError(
                    f"the fp32 {backend.name} graphs do not reproduce the torch model's action "
                    f"tokens ({fid['token_agreement']:.1%} agree); report this export problem."
                )
            if not fid["passed"]:
                raise CheckFailedError(
                    f"{opts.precision}: {fid['token_agreement']:.1%} of the action tokens agree "
                    f"with fp32 on {fid['observations']} held-out observations, below "
                    f"{1 - max_disagree:.0%} (--max-accuracy-drop {max_disagree:g} is the "
                    "allowed token disagreement); use a higher precision (int8-weight, fp32 "
                    "activations) or loosen the bound."
                )
            failed = [g for g in checks if exact(g.split("-")[0]) and not checks[g]["passed"]]
            if failed:
                raise CheckFailedError(
                    f"the {backend.name} {failed[0]} graph does not match torch: "
                    f"{checks[failed[0]]}"
                )
        obs_in = {k: np.stack([o[k].numpy() for o in held]) for k in held[0]}
        bundle.save_npz(tmp / "reference" / "inputs.npz", obs_in)
        bundle.save_npz(tmp / "reference" / "outputs.npz",
                        {"tokens": ref_tokens, "actions": ref_actions})  # fmt: skip
        report.update({
            "fidelity": fid,
            "graph_checks": checks,
            "model": describe(c),
            "stage_seconds": {k: round(v, 4) for k, v in timings.items()},
        })  # fmt: skip
        bundle.write_json(tmp / "report.json", report)
        manifest = {
            **manifest_common(
                {"name": name, "source": source, "source_kind": source_kind, "kind": "vla"},
                profile, backend, opts.precision, opts.precision, opts.threads,
                activations or "f32",
            ),
            "graphs": graph_entries(built, graphs, {**plan, DECODE: plan["llm"]}),
            "driver": {"kind": "vla-greedy", "config": c.driver_config()},
            "inputs": [{"name": "pixel_values", "shape": [1, 3, c.image_size, c.image_size],
                        "dtype": "float32"},
                       {"name": "input_ids", "shape": [1, c.prompt_tokens], "dtype": "int64"}],
            "outputs": [{"name": "actions", "shape": [c.action_dims], "dtype": "float64"}],
            "reference": {"inputs": "reference/inputs.npz", "outputs": "reference/outputs.npz",
                          "min_token_agreement": round(1 - max_disagree, 6),
                          "heldout_seed": HELDOUT_SEED},
            "parity": {"graphs": {g: {"passed": checks[g]["passed"]} for g in checks},
                       "actions": fid},
        }  # fmt: skip
        seal(tmp, manifest)
        evaluation = None
        if opts.eval is not None:  # the bundle's driver in the task vs the torch model
            with stage(progress, "evaluate", timings):
                task_name = resolve_eval_task(opts.eval, source)
                evaluation = evaluate_vla_bundle(tmp, task_name, opts, model, source, progress,
                                                 published=out)  # fmt: skip
        with stage(progress, "report", timings):  # before publishing: a bundle has its report
            write_report(tmp, progress, out)
    return CompileResult(out=out, manifest=manifest, report=report, facts={},
                         evaluation=evaluation)  # fmt: skip
