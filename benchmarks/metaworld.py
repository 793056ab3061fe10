"""``make bench`` section ``metaworld``: the speed claim on a trained policy of real size.

``zoo:metaworld-resnet18`` (ResNet-18, 1.1 GMAC at 168x168, trained here on four Meta-World
tasks) is built by robopt and by the vendor tools' own recipes, and every engine drives the
task for the SAME seeded episodes as the fp32 reference, one thread per runtime:

- ``ONNX Runtime fp32``: the reference (robopt's fp32 bundle: ONNX Runtime's default).
- ``OpenVINO default``: ``compile_model`` of the fp32 ONNX with no options (it computes in
  bf16 where the CPU has AVX512-BF16 or AMX).
- ``OpenVINO + NNCF int8``: ``nncf.quantize(model, Dataset(calibration))``, default preset.
- ``ORT QDQ int8``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ).
- ``robopt planner``: ``--objective latency --techniques quantize,prune --calibration task
  --eval task --max-accuracy-drop D``: pruned plans are distilled on the task recordings and
  every plan is judged by the task on the guard's own seeds.

Seeds, never shared: training 20,000,000..; calibration recordings 1,000,000.. (robopt's
``--calibration task``; the vendor tools calibrate on the same file); the planner's guard
500,000..; held-out observations for the output error 2,000,000..; the claim's episodes
3,000,000.. Latency: p50 of interleaved rounds on recorded observations, 1 thread. Episodes
run in two worker processes (one thread each): success does not depend on timing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = "zoo:metaworld-resnet18"
TASK = "metaworld-suite"
CALIB = "task:episodes=16"
GUARD_EPISODES = 12  # 3 per task: the planner's guard; the claim itself uses --metaworld-episodes
HOLDOUT_SEED = 2_000_000
EVAL_SEED = 3_000_000
MAX_DROP = 0.09  # success drop on the guard's 12 episodes: at most one net loss
CHUNK = 10  # episodes per worker job
# The planner searches OpenVINO only (the fastest CPU runtime here at every precision in the
# base section) within MAX_BUILDS builds: each plan records, distils and drives the task.
# Each pruned plan distils for minutes at 1 thread, so the search is held to fp32 (the plan
# that calibrates the predictions) and int8 with 50% and 25% pruning: a plan whose pruning
# the task guard rolls back is then plain int8 (the table says "built as").
BACKENDS = ("openvino",)
PRECISIONS = ("fp32", "int8")
MAX_BUILDS = 4


def _open(kind: str, path: str | bytes) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """An engine as feeds -> [action, ...], one thread."""
    if kind == "ov":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1})
        req = compiled.create_infer_request()
        return lambda feeds: [np.array(v) for v in req.infer(feeds).values()]
    if kind == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)
    import contextlib

    from robopt_compile.bench.harness import enter_runner, open_bundle

    stack = contextlib.ExitStack()  # lives as long as the worker process
    runner = enter_runner(stack, open_bundle(path, verify=True), 1)
    return lambda feeds: list(runner.infer(feeds).values())


def _episodes(kind: str, path: str, seeds: list[int]) -> list[tuple[int, float, bool, int]]:
    """Worker: the engine drives the suite for ``seeds``; (seed, return, success, steps)."""
    from robopt_compile.tasks import get_task

    fn = _open(kind, path)
    with get_task(TASK) as task:
        eps = [task.episode(fn, s) for s in seeds]
    return [(e.seed, e.ret, bool(e.success), e.steps) for e in eps]


def _closed_loop(
    engines: dict[str, tuple[str, str]], episodes: int, log: Callable,
    worker: Callable[..., list[tuple[int, float, bool, int]]] | None = None,
    section: str = "metaworld",
) -> dict:  # fmt: skip
    """Every engine drives the suite for the same seeds (``worker(kind, path, seeds)``, a
    module-level function, in two spawned processes); the first engine is the reference."""
    from robopt_compile.evaluate import paired, summarize
    from robopt_compile.executor.processes import ProcessExecutor
    from robopt_compile.tasks import Episode

    seeds = list(range(EVAL_SEED, EVAL_SEED + episodes))
    jobs = [(label, seeds[i : i + CHUNK]) for label in engines
            for i in range(0, episodes, CHUNK)]  # fmt: skip
    got: dict[str, list[Any]] = {label: [] for label in engines}
    t0, done, total = time.perf_counter(), [0], episodes * len(engines)

    def tick(_i: int, rows: list[Any]) -> None:
        done[0] += len(rows)
        left = (time.perf_counter() - t0) / done[0] * (total - done[0])
        log(f"[bench] {section}: {done[0]}/{total} episodes, about {left / 60:.0f} min left")

    ex = ProcessExecutor(2)  # the pool the compile's own episodes use
    try:
        rows = ex.map(worker or _episodes, [(*engines[label], chunk) for label, chunk in jobs],
                      progress=tick)  # fmt: skip
    finally:
        ex.close()
    for (label, _), part in zip(jobs, rows, strict=True):
        got[label].extend(part)
    summaries = {}
    for label, rows in got.items():
        eps = [Episode(seed=s, ret=r, success=ok, steps=n) for s, r, ok, n in sorted(rows)]
        role = "reference" if label == next(iter(engines)) else "candidate"
        summaries[label] = summarize(label, role, eps)
    ref = next(iter(summaries.values()))
    pairs = [paired(ref, s, "success") for s in list(summaries.values())[1:]]
    return {"engines": list(summaries.values()), "paired": pairs, "seeds": [seeds[0], seeds[-1]]}


def _record(episodes: int, seed: int, reference: Path, path: Path) -> Path:
    """Observations of the fp32 policy driving the suite (``episodes`` from ``seed``)."""
    from robopt_compile.evaluate import onnx_policy
    from robopt_compile.tasks import get_task

    with get_task(TASK) as task, onnx_policy(reference, 1) as pol:
        eps = [task.episode(pol, s, record=True) for s in range(seed, seed + episodes)]
    arrays = {k: np.concatenate([e.feeds[k] for e in eps]) for k in ("image", "state")}
    keep = np.linspace(0, len(arrays["state"]) - 1, 128).astype(int)
    np.savez(path, **{k: a[keep][:, None] for k, a in arrays.items()})
    return path


def _samples(npz: Path) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as d:
        return [{k: d[k][i] for k in d.files} for i in range(len(d["state"]))]


def _vendor(fp32: Path, calib: Path, work: Path, log: Callable) -> dict[str, tuple[str, str]]:
    """The vendor tools' own recipes on the same fp32 ONNX and calibration observations."""
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    data = _samples(calib)
    out = {"OpenVINO default": ("ov", str(fp32))}
    log("[bench] metaworld: NNCF int8 (default preset) ...")
    q = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(data))
    ov.save_model(q, str(work / "nncf-int8.xml"))
    out["OpenVINO + NNCF int8"] = ("ov", str(work / "nncf-int8.xml"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self) -> Any:
            return next(self.it, None)

    log("[bench] metaworld: ONNX Runtime QDQ int8 (quantize_static defaults) ...")
    quantize_static(str(fp32), str(work / "ort-qdq.onnx"), Reader())
    out["ORT QDQ int8"] = ("ort", str(work / "ort-qdq.onnx"))
    return out


def _planner(work: Path, log: Callable, max_builds: int) -> dict[str, Any]:
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.evaluate import EvalSpec
    from robopt_compile.plan.planner import OptimizationCriteria
    from robopt_compile.plan.search import plan_and_search

    crit = OptimizationCriteria(max_accuracy_drop=MAX_DROP, techniques=("quantize", "prune"),
                                precisions=PRECISIONS)  # fmt: skip
    base = CompileOptions(threads=1, quant=QuantOptions(calibration=CALIB, max_drop=MAX_DROP),
                          eval=EvalSpec(episodes=GUARD_EPISODES))  # fmt: skip
    t0 = time.perf_counter()
    r = plan_and_search(SOURCE, work / "planner", base, crit, force=True, max_builds=max_builds,
                        backends=BACKENDS, log=lambda m: log(f"[bench]   {m}"))  # fmt: skip
    return {"result": r.to_json(), "seconds": time.perf_counter() - t0,
            "bundle": None if r.best is None else str(work / "planner")}  # fmt: skip


def bench_metaworld(
    work: Path, log: Callable[[str], None], episodes: int = 100, rounds: int = 15,
    per_round: int = 20, max_builds: int = MAX_BUILDS,
) -> dict[str, Any]:  # fmt: skip
    from benchmarks.run import interleaved_median_ms
    from robopt_compile.compile.accuracy import accuracy_figures
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    work = Path(work) / "metaworld"
    work.mkdir(parents=True, exist_ok=True)
    log("[bench] metaworld: fp32 reference bundle ...")
    compile_model(SOURCE, work / "fp32", CompileOptions(threads=1, backend="onnxruntime"),
                  force=True)  # fmt: skip
    fp32 = work / "fp32" / "model.onnx"
    log("[bench] metaworld: calibration and held-out recordings ...")
    from robopt_compile.compile.tasks import CALIBRATION_SEED_OFFSET

    calib = _record(16, CALIBRATION_SEED_OFFSET, fp32, work / "calib.npz")
    holdout = _samples(_record(8, HOLDOUT_SEED, fp32, work / "holdout.npz"))
    engines: dict[str, tuple[str, str]] = {"ONNX Runtime fp32": ("bundle", str(work / "fp32"))}
    engines.update(_vendor(fp32, calib, work, log))
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    ov_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    log("[bench] metaworld: robopt planner search ...")
    planner = _planner(work, log, max_builds)
    if planner["bundle"]:
        best = planner["result"]["best"]
        engines[f"robopt planner ({best.get('applied') or best['candidate']})"] = (
            "bundle", planner["bundle"])  # fmt: skip
    log("[bench] metaworld: latency, interleaved rounds ...")
    fns, outs = {}, {}
    for label, (kind, path) in engines.items():
        fn = _open(kind, path)
        feeds = holdout[0]
        fns[label] = lambda fn=fn, feeds=feeds: fn(feeds)
        outs[label] = [{"action": fn(s)[0]} for s in holdout]
    lat = interleaved_median_ms(fns, rounds, per_round)
    ref_out = outs["ONNX Runtime fp32"]
    errors = {label: accuracy_figures(ref_out, o, holdout)["relative_l2"]
              for label, o in outs.items()}  # fmt: skip
    profile = None
    if planner["bundle"]:
        from robopt_compile.errors import RoboptError
        from robopt_compile.report.layers import profile_layers

        try:  # where robopt's engine spends its time (the backend's own profiler)
            prof = profile_layers(planner["bundle"], runs=20, threads=1)
            keep = ("name", "op_type", "ms", "share", "exec_type")
            top = [{k: x.get(k) for k in keep} for x in prof["layers"][:10]]
            profile = {"run_ms": prof["run_ms"], "by_op_type": prof["by_op_type"], "top": top}
        except RoboptError as exc:
            log(f"[bench] metaworld: per-layer profile failed: {exc}")
    log(f"[bench] metaworld: {episodes} paired episodes x {len(engines)} engines ...")
    loop = _closed_loop(engines, episodes, log)
    for e in loop["engines"]:
        e["p50_ms"] = lat[e["label"]]
        e["holdout_relative_l2"] = errors[e["label"]]
    return {"episodes": episodes, "rounds": rounds, "per_round": per_round, "planner": planner,
            "openvino_default_precision": ov_precision, "profile": profile, **loop}  # fmt: skip


def _rate(e: dict[str, Any]) -> str:
    s = e["success"]
    return f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"


def claim(m: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal, judged from the rows: robopt's p50 against the fastest vendor recipe
    whose success is within 2 points of fp32 with no detectable paired drop."""
    ref = m["engines"][0]
    pairs = {p["candidate"]: p for p in m["paired"]}

    def keeps(e: dict[str, Any]) -> bool:
        p = pairs.get(e["label"])
        return p is None or (
            e["success"]["rate"] >= ref["success"]["rate"] - 0.02 and p["verdict"] != "worse"
        )

    vendors = [e for e in m["engines"][1:] if not e["label"].startswith("robopt") and keeps(e)]
    ours = [e for e in m["engines"] if e["label"].startswith("robopt") and keeps(e)]
    best_v = min(vendors, key=lambda e: e["p50_ms"], default=None)
    best_r = min(ours, key=lambda e: e["p50_ms"], default=None)
    ratio = None if best_v is None or best_r is None else best_v["p50_ms"] / best_r["p50_ms"]
    return {"vendor": best_v and best_v["label"], "robopt": best_r and best_r["label"],
            "speedup": ratio, "met": ratio is not None and ratio >= 2.0}  # fmt: skip


def short(label: str | None) -> str:
    """A plan's "built as" label without the guard's whole sentence: ``openvino int8 (pruning
    rolled back: held-out task:success 0.5833 ...)`` -> ``openvino int8 (pruning rolled back,
    guard drop 0.5833)``."""
    if not label or " (" not in label:
        return label or ""
    outer = "robopt planner ("
    if label.startswith(outer) and label.endswith(")"):
        return outer + short(label[len(outer) : -1]) + ")"
    head, why = label.split(" (", 1)
    drop = re.search(r"held-out [\w:]+ ([\d.]+)", why)
    what = why.split(":")[0].rstrip(")")
    return f"{head} ({what}" + (f", guard drop {drop.group(1)})" if drop else ")")


def report_lines(m: dict[str, Any]) -> list[str]:
    ref = m["engines"][0]
    pairs = {p["candidate"]: p for p in m["paired"]}
    c = claim(m)
    lines = [
        "## The claim on a trained policy: metaworld-resnet18 on four Meta-World tasks",
        "",
        f"`zoo:metaworld-resnet18` (ResNet-18, 1.1 GMAC per step, trained here by behaviour "
        f"cloning, docs/METAWORLD.md) drives `metaworld-suite` (reach, push, button-press-topdown, "
        f"drawer-open in turn) for the same {m['episodes']} seeded episodes per engine (seeds "
        f"{m['seeds'][0]:,}..{m['seeds'][1]:,}: never used for training, calibration, "
        "distillation or the planner's guard). Success: rate [95% Wilson]; paired: per-seed "
        "success difference against fp32 [95% t-interval], exact McNemar p. p50: interleaved "
        f"rounds ({m['rounds']} x {m['per_round']}), 1 thread, on recorded observations. "
        "Output error: relative L2 of the action against fp32 on 128 held-out observations "
        f"(seeds from 2,000,000). OpenVINO's default precision here: "
        f"{m['openvino_default_precision']}.",
        "",
        "| engine | p50 ms | speed-up vs fp32 | success | paired success diff | lost/gained | "
        "p | verdict | output rel. L2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in m["engines"]:
        p = pairs.get(e["label"])
        if p is None:
            diff, lg, pv, verdict = "", "", "", "reference"
        else:
            d = p["success_diff"]
            diff = f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
            lg, pv, verdict = f"{d['lost']}/{d['gained']}", f"{p['p_value']:.3g}", p["verdict"]
        lines.append(
            f"| {short(e['label'])} | {e['p50_ms']:.2f} | {ref['p50_ms'] / e['p50_ms']:.2f}x | "
            f"{_rate(e)} | {diff} | {lg} | {pv} | {verdict} | {e['holdout_relative_l2']:.4f} |"
        )
    goal = "met" if c["met"] else "NOT met"
    lines += [
        "",
        f"**Goal (>= 2x lower p50 than the best vendor recipe at success within 2 points of fp32, "
        f"no detectable paired drop): {goal}.** Fastest vendor recipe that keeps success: "
        f"{c['vendor']}; fastest robopt engine that keeps it: {short(c['robopt'])}"
        + (f"; ratio {c['speedup']:.2f}x." if c["speedup"] else "."),
        "",
    ]
    r = m["planner"]["result"]
    lines += [
        f"The planner's search ({m['planner']['seconds'] / 60:.0f} min, "
        f"{len(r['measured'])} plans measured, {len(r['failed'])} failed; accuracy measure: "
        f"{r.get('accuracy_measure')}):",
        "",
        "| plan | built as | p50 ms | drop (guard) |",
        "|---|---|---|---|",
        *[
            f"| {x['candidate']} | {short(x.get('applied')) or 'as planned'} | "
            f"{x['latency_ms']['p50']:.2f} | {x['accuracy_drop']:.3f} |"
            for x in r["measured"]
        ],
        *[f"| {f['plan']} | failed: {f['error'][:120]} | | |" for f in r["failed"]],
        "",
    ]
    lines += agreement_lines(m)
    prof = m.get("profile")
    if prof:
        ops = sorted(prof["by_op_type"].items(), key=lambda kv: -kv[1]["ms"])[:6]
        lines += [
            f"Where robopt's engine spends its time (OpenVINO's profiler, 20 runs, 1 thread, "
            f"{prof['run_ms']:.2f} ms per run): "
            + ", ".join(f"{op} {v['share']:.0%}" for op, v in ops)
            + ". Slowest layers:",
            "",
            "| layer | type | kernel | ms | share |",
            "|---|---|---|---|---|",
            *[
                f"| {x['name'][:60]} | {x['op_type']} | {x.get('exec_type') or ''} | "
                f"{x['ms']:.3f} | {x['share']:.0%} |"
                for x in prof["top"]
            ],
            "",
        ]
    return lines


def agreement_lines(m: dict[str, Any], bound: float = 0.01) -> list[str]:
    """The output metric (what a guard without --eval bounds) against the task's verdict."""
    pairs = {p["candidate"]: p for p in m["paired"]}
    rows, agree = [], 0
    for e in m["engines"][1:]:
        by_output = e["holdout_relative_l2"] <= bound
        by_task = pairs[e["label"]]["verdict"] != "worse"
        agree += by_output == by_task
        rows.append(f"| {short(e['label'])} | {e['holdout_relative_l2']:.4f} | "
                    f"{'accept' if by_output else 'reject'} | "
                    f"{'accept' if by_task else 'reject'} |")  # fmt: skip
    return [
        f"Guard metric vs task metric: would the output bound (relative L2 <= {bound}, robopt's "
        "default --max-accuracy-drop) have accepted each engine, and does the task accept it "
        "(no detectable paired success drop)?",
        "",
        "| engine | output rel. L2 | output guard | task |",
        "|---|---|---|---|",
        *rows,
        "",
        f"They agree on {agree} of {len(rows)} engines.",
        "",
    ]
