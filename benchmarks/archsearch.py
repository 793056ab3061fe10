"""``make bench`` section ``archsearch``: the searched sub-network against uniform pruning at
the same measured latency on the trained ResNet policy (issue 21 part 5).

``zoo:metaworld-resnet18`` (trained, docs/METAWORLD.md) is compressed to about half its
latency in ONNX Runtime (1 thread) three ways, each recovered by the SAME distillation
(``--distill DISTILL``: on the same ``--calibration task`` recordings, with on-policy rounds,
within the same time: what ``--search-budget SEARCH_BUDGET`` left the searched one):

- ``--search-arch latency=0.5x`` (robopt's search, finalists judged on the guard's episodes);
- ``--prune channels:R``, R the uniform ratio whose measured latency is closest to the
  searched sub-network's (measured here before distillation, 60 calls each);
- NVIDIA Model Optimizer's FastNAS at the searched sub-network's FLOPs ratio, with its
  defaults and no distillation (``benchmarks/fastnas.py``; a row that says why when it
  cannot run).

Every engine then drives ``metaworld-suite`` for the same seeded episodes as the fp32
reference (seeds 3,000,000.., never used for training, calibration, distillation, the search
or its finalists); latency: interleaved rounds, 1 thread, on recorded observations. The
searched sub-network is also built as robopt's OpenVINO int8 engine beside the vendor's best
recipe (OpenVINO + NNCF int8 of the fp32 model) for the speed claim of issue 17.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metaworld import EVAL_SEED, HOLDOUT_SEED, SOURCE, TASK, _closed_loop, _open

CALIB = "task:episodes=40"
# Issue 21's 30 minutes: ``--search-budget`` covers the search and its recovery, whose steps
# are fitted to what the search leaves (at most ``steps`` a round); 27 min leaves the
# recording and the build in the 30. With 600 steps a round and 7 rounds unbounded the
# compile took 48.3 min (eighth measurement, docs/ARCHSEARCH.md: 84% vs fp32 89% at 0.493x).
SEARCH_BUDGET = "27m"
DISTILL = "steps=600,batch=16,lr=3e-4,onpolicy=5,episodes=32"
SEARCH = "latency=0.5x,tune=10,shortlist=2,finalists=2,steps=6"
FINALIST_EPISODES = 12
# The held-out relative-L2 bound of robopt's int8 build of the searched sub-network. The
# default (0.01) rolled every layer back to fp32 (int8 measured 0.11 on the searched network),
# so the fourth run's "robopt OpenVINO int8" row was an fp32 engine under an int8 label.
# 0.15: what int8 costs on this policy's outputs (the vendor's own NNCF int8 of the fp32
# model measured 0.09-0.095 with no detectable task drop); the episodes then judge it.
INT8_MAX_DROP = 0.15
RATIOS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


def _options(**compress: Any) -> Any:
    from robopt_compile.compile.options import (
        CompileOptions,
        CompressOptions,
        QuantOptions,
        parse_duration,
    )
    from robopt_compile.evaluate import EvalSpec

    ev = EvalSpec(episodes=FINALIST_EPISODES) if "search_arch" in compress else None
    if "search_arch" in compress:
        compress.setdefault("search_budget_s", parse_duration(SEARCH_BUDGET, "SEARCH_BUDGET"))
    compress.setdefault("distill", DISTILL)
    return CompileOptions(
        threads=1,
        backend="onnxruntime",
        eval=ev,
        quant=QuantOptions(calibration=CALIB),
        compress=CompressOptions(**compress),
    )


def recovery_seconds(step: dict[str, Any]) -> float | None:
    """The time budget the searched bundle's recovery had (what the search left of
    ``--search-budget``): the uniform row is distilled within the same."""
    return ((step.get("distillation") or {}).get("time_budget") or {}).get("seconds")


def _build(out: Path, log: Callable, **compress: Any) -> float:
    from robopt_compile.compile.pipeline import compile_model

    distill = compress.get("distill", DISTILL)
    if (out / "manifest.json").exists():  # built ahead by the same options (make bench reuses)
        import json

        step = json.loads((out / "report.json").read_text())["compression"]["steps"][0]
        if "search_arch" in compress:
            from robopt_compile.archsearch.search import parse_arch_spec

            spec = vars(parse_arch_spec(compress["search_arch"]))
            asked = {k: v for k, v in spec.items() if v is not None}
            got = step["report"].get("spec")
        else:
            asked = float(compress["prune"][0].split(":")[1])
            got = step["report"].get("ratio")
        if got == asked and _distilled_as(step.get("distillation") or {}, distill):
            log(f"[bench] archsearch: {out.name}: the bundle is there, measured as is")
            return 0.0
        log(f"[bench] archsearch: {out.name} was built with other options: building it again")
    t0 = time.perf_counter()
    compile_model(SOURCE, out, _options(**compress), force=True)
    return time.perf_counter() - t0


def _distilled_as(report: dict[str, Any], spec: str) -> bool:
    """Whether a bundle's distillation report is what ``--distill spec`` asks for."""
    from robopt_compile.compile.compress import distill_options

    want = distill_options(spec) or {}
    onp = report.get("onpolicy") or {}
    budget = report.get("time_budget") or {}
    have = {k: report.get(k) for k in ("steps", "lr", "batch_size", "loss")}
    have["steps"] = budget.get("steps_asked", have["steps"])  # fitted: what was asked
    have["onpolicy"] = len(onp.get("rounds") or [])
    have["episodes"] = onp.get("episodes_per_round")
    have["seconds"] = budget.get("seconds")
    return all(have[k] == v for k, v in want.items())


def uniform_ratio(
    fp32: Any, searched: Any, feeds: dict[str, np.ndarray], rounds: int = 8, per_round: int = 10,
    timer: Callable[..., dict[str, float]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The uniform pruning ratio whose latency (before distillation) is closest to the
    searched sub-network's, every ratio and the searched network timed in the same interleaved
    rounds (ONNX Runtime, 1 thread; ``timer``: ``interleaved_median_ms``): timed one after
    another, a noisy 0.40 once came out slower than 0.35 and 0.45 was picked. Returns the
    ratio and what each measured."""
    from benchmarks.run import interleaved_median_ms
    from robopt_compile import ir as rir
    from robopt_compile.passes.prune.channels import ChannelPrunePass

    models = {"searched": searched}
    for r in RATIOS:
        models[str(r)] = rir.clone(fp32)
        ChannelPrunePass(r)(models[str(r)])
    fns = {}
    for k, m in models.items():
        run = _open("ort", rir.to_proto(m).SerializeToString())  # the bench's 1-thread session
        fns[k] = lambda run=run: run(feeds)
    lat = (timer or interleaved_median_ms)(fns, rounds, per_round)
    target = lat.pop("searched")
    tried = {float(k): ms for k, ms in lat.items()}
    best = min(tried, key=lambda r: abs(tried[r] - target))
    return {"ratio": best, "measured_ms": tried, "target_ms": target,
            "timing": f"interleaved, {rounds} rounds of {per_round} calls"}  # fmt: skip


def bench_archsearch(
    work: Path,
    log: Callable[[str], None],
    episodes: int = 100,
    rounds: int = 15,
    per_round: int = 20,
    prebuilt: Path | None = None,
) -> dict[str, Any]:
    """``prebuilt``: a folder with ``nas-search``/``nas-uniform`` bundles built by the same
    options (docs/ARCHSEARCH.md says how); missing ones are built here."""
    from benchmarks.fastnas import fastnas_subnet
    from benchmarks.metaworld import _record, _samples
    from benchmarks.run import interleaved_median_ms
    from robopt_compile import ir as rir
    from robopt_compile.compile.accuracy import accuracy_figures
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.compile.tasks import CALIBRATION_SEED_OFFSET

    work = Path(work) / "archsearch"
    work.mkdir(parents=True, exist_ok=True)
    where = Path(prebuilt) if prebuilt else work
    log("[bench] archsearch: fp32 reference bundle ...")
    compile_model(
        SOURCE, work / "fp32", CompileOptions(threads=1, backend="onnxruntime"), force=True
    )
    fp32_path = work / "fp32" / "model.onnx"
    fp32 = rir.load(fp32_path)
    holdout = _samples(_record(8, HOLDOUT_SEED, fp32_path, work / "holdout.npz"))
    log("[bench] archsearch: the search (--search-arch) + distillation ...")
    t_search = _build(where / "nas-search", log, search_arch=SEARCH)
    searched = rir.load(where / "nas-search" / "model.onnx")
    import json

    rep = json.loads((where / "nas-search" / "report.json").read_text())
    step = rep["compression"]["steps"][0]
    search = step["report"]
    uni = uniform_ratio(fp32, searched, holdout[0])
    left = recovery_seconds(step)
    u_distill = DISTILL + (f",time={left:.0f}s" if left else "")  # the same recovery time
    built = where / "nas-uniform" / "report.json"
    step0 = json.loads(built.read_text())["compression"]["steps"][0] if built.exists() else {}
    if prebuilt and _distilled_as(step0.get("distillation") or {}, u_distill):
        # built ahead and measured as is: its ratio stands (the table says both); one
        # distilled otherwise is rebuilt at the ratio chosen here
        uni["closest"], uni["ratio"] = uni["ratio"], float(step0["report"]["ratio"])
    log(f"[bench] archsearch: uniform pruning at {uni['ratio']} + distillation ...")
    t_uniform = _build(where / "nas-uniform", log, prune=(f"channels:{uni['ratio']}",),
                       distill=u_distill)  # fmt: skip
    urep = json.loads((where / "nas-uniform" / "report.json").read_text())
    engines: dict[str, tuple[str, str]] = {
        "ONNX Runtime fp32": ("bundle", str(work / "fp32")),
        f"uniform pruning {uni['ratio']:.0%} + distillation": (
            "bundle",
            str(where / "nas-uniform"),
        ),
        "searched + distillation": ("bundle", str(where / "nas-search")),
    }
    calib = _record(16, CALIBRATION_SEED_OFFSET, fp32_path, work / "calib.npz")
    fast = _fastnas_row(search, calib, holdout, work, where, log, fastnas_subnet)
    if "bundle" in fast:
        label = "FastNAS + distillation" if fast.get("distilled") else "FastNAS (its defaults)"
        engines[label] = ("bundle", fast["bundle"])
    log("[bench] archsearch: robopt OpenVINO int8 of the searched sub-network, NNCF int8 ...")
    compile_model(
        str(where / "nas-search" / "model.onnx"),
        work / "search-int8",
        CompileOptions(
            threads=1,
            backend="openvino",
            precision="int8",
            quant=QuantOptions(calibration=str(calib), max_drop=INT8_MAX_DROP),
        ),
        force=True,
    )
    int8_built = _precision_built(json.loads((work / "search-int8" / "report.json").read_text()))
    import nncf
    import openvino as ov

    q = nncf.quantize(ov.Core().read_model(str(fp32_path)), nncf.Dataset(_samples(calib)))
    ov.save_model(q, str(work / "nncf-int8.xml"))
    engines["OpenVINO + NNCF int8 (vendor, fp32 model)"] = ("ov", str(work / "nncf-int8.xml"))
    engines[f"searched + distillation, robopt OpenVINO {int8_built}"] = (
        "bundle",
        str(work / "search-int8"),
    )
    log("[bench] archsearch: latency, interleaved rounds ...")
    fns, outs = {}, {}
    for label, (kind, path) in engines.items():
        fn = _open(kind, path)
        fns[label] = lambda fn=fn, feeds=holdout[0]: fn(feeds)
        outs[label] = [{"action": fn(s)[0]} for s in holdout]
    lat = interleaved_median_ms(fns, rounds, per_round)
    ref = outs["ONNX Runtime fp32"]
    log(f"[bench] archsearch: {episodes} paired episodes x {len(engines)} engines ...")
    loop = _closed_loop(engines, episodes, log, section="archsearch")
    for e in loop["engines"]:
        e["p50_ms"] = lat[e["label"]]
        e["holdout_relative_l2"] = accuracy_figures(ref, outs[e["label"]], holdout)["relative_l2"]
    from robopt_compile.evaluate import paired

    by = {e["label"]: e for e in loop["engines"]}
    u_label = next(k for k in engines if k.startswith("uniform"))
    head_to_head = paired(by[u_label], by["searched + distillation"], "success")
    return {
        "episodes": episodes,
        "rounds": rounds,
        "per_round": per_round,
        "seeds_from": EVAL_SEED,
        "search": search,
        "search_distillation": step.get("distillation", {}).get("seconds"),
        "search_stage_seconds": rep.get("stage_seconds"),  # the search bundle's compile
        "search_build_s": t_search,
        "uniform": uni,
        "uniform_build_s": t_uniform,
        "uniform_distillation": urep["compression"]["steps"][0]
        .get("distillation", {})
        .get("seconds"),
        "fastnas": fast,
        "searched_vs_uniform": head_to_head,
        "distill": DISTILL,
        "uniform_distill": u_distill,
        "search_budget": SEARCH_BUDGET,
        "search_time_budget": step.get("distillation", {}).get("time_budget"),
        "spec": SEARCH,
        "int8_max_drop": INT8_MAX_DROP,
        **loop,
    }


def _precision_built(report: dict[str, Any]) -> str:
    """What a bundle's quantization kept, for its row's label: ``int8``, ``int8 (N layers
    fp32)`` or ``fp32 (int8 rolled back)``: never an int8 label on an fp32 engine."""
    q = report.get("quantization") or {}
    if q.get("rolled_back"):
        return "fp32 (int8 rolled back)"
    mixed = q.get("mixed_precision") or {}
    n = len(mixed.get("fp32_nodes") or []) if mixed.get("met") else 0
    return f"int8 ({n} layers fp32)" if n else "int8"


def _fastnas_row(
    search, calib, holdout, work, where, log, fastnas_subnet, distil: bool = False
) -> dict[str, Any]:  # fmt: skip
    """FastNAS at the searched sub-network's FLOPs ratio (``distil``: then distilled as the
    other rows); a bundle built ahead (``where/nas-fastnas`` with ``nas-fastnas.json``) is
    measured as is."""
    import json

    from benchmarks.metaworld import _samples

    out, info = where / "nas-fastnas", where / "nas-fastnas.json"
    if (out / "manifest.json").exists() and info.exists():
        log("[bench] archsearch: nas-fastnas: the bundle is there, measured as is")
        return {**json.loads(info.read_text()), "bundle": str(out)}
    t = search.get("totals") or {}
    if not t.get("macs_before"):
        return {"skipped": "the search reported no MACs"}
    ratio = t["macs_after"] / t["macs_before"]
    samples = _samples(calib)
    got = fastnas_subnet(ratio, samples[:-32], samples[-32:], work / "fastnas.onnx", log)
    if "onnx" not in got:
        return got
    # As FastNAS leaves it (its defaults: BatchNorm recalibrated, no fine-tuning): its own
    # flow ends with the user's training. Distilling it like the other rows (``distil``)
    # costs another ~30 min of both cores per bench run.
    t0 = time.perf_counter()
    if distil:
        log("[bench] archsearch: FastNAS sub-network + the same distillation ...")
        _distil_and_build(Path(got["onnx"]), work, out, log)
    else:
        from robopt_compile.compile.options import CompileOptions
        from robopt_compile.compile.pipeline import compile_model

        compile_model(got["onnx"], out, CompileOptions(threads=1, backend="onnxruntime"),
                      force=True)  # fmt: skip
    got["build_s"], got["distilled"] = time.perf_counter() - t0, distil
    info.write_text(json.dumps(got, indent=2))
    return {**got, "bundle": str(out)}


def _distil_and_build(student_path: Path, work: Path, out: Path, log: Callable) -> None:
    """The compress stage's distillation, run by hand because the FastNAS sub-network is not
    robopt's source: the same recordings (``--calibration CALIB`` of the original, split as
    the stage splits them), the same options, the ORIGINAL fp32 model as the teacher."""
    from robopt_compile import ir as rir
    from robopt_compile.compile.calibration import load_calibration
    from robopt_compile.compile.compress import distill_options
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.compile.onpolicy import distill_on_policy
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.compile.tasks import record_calibration

    teacher = load_source(SOURCE).model
    folder = work / "fastnas-calib.npz"
    record_calibration(CALIB, SOURCE, teacher, folder, CompileOptions(threads=1))
    data = load_calibration(str(folder), rir.input_specs(teacher), holdout_fraction=0.25, seed=0)
    student = rir.load(student_path)
    trained, _ = distill_on_policy(
        student,
        teacher,
        list(data.calibration),
        distill_options(DISTILL),
        TASK,
        0,
        1,
        lambda m, k, f: None,
    )
    rir.save(trained, work / "fastnas-distilled.onnx")
    compile_model(
        str(work / "fastnas-distilled.onnx"),
        out,
        CompileOptions(threads=1, backend="onnxruntime"),
        force=True,
    )


def _rate(e: dict[str, Any]) -> str:
    s = e["success"]
    return f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"


def _diff(p: dict[str, Any] | None) -> tuple[str, str, str, str]:
    if p is None:
        return "", "", "", "reference"
    d = p["success_diff"]
    return (f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]",
            f"{d['lost']}/{d['gained']}", f"{p['p_value']:.3g}", p["verdict"])  # fmt: skip


def goals(m: dict[str, Any]) -> dict[str, Any]:
    """Issue 21's goals from the rows: at <= 0.5x of fp32's measured latency the searched
    sub-network's success >= uniform pruning's and within 5 points of fp32."""
    by = {e["label"]: e for e in m["engines"]}
    ref, s = m["engines"][0], by["searched + distillation"]
    u = next(e for e in m["engines"] if e["label"].startswith("uniform"))
    fast = s["p50_ms"] <= 0.5 * ref["p50_ms"]
    ok = s["success"]["rate"] >= u["success"]["rate"]
    close = s["success"]["rate"] >= ref["success"]["rate"] - 0.05
    st = m.get("search_stage_seconds") or {}
    whole = sum(st.values()) / 60 if st else None
    return {"latency_ratio": s["p50_ms"] / ref["p50_ms"], "at_half": fast, "beats_uniform": ok,
            "within_5": close, "met": fast and ok and close, "compile_min": whole,
            "in_30_min": whole is not None and whole <= 30.0}  # fmt: skip


def _compile_time(m: dict[str, Any]) -> str:
    """The search bundle's whole compile, as its report timed the stages (newer runs)."""
    st = m.get("search_stage_seconds")
    if not st:
        return ""
    rec, comp = st.get("record", 0.0) / 60, st.get("compress", 0.0) / 60
    rest = (sum(st.values()) - st.get("record", 0.0) - st.get("compress", 0.0)) / 60
    search = m["search"]["seconds"] / 60
    return (
        f"; the whole compile {sum(st.values()) / 60:.1f} min: recording the calibration "
        f"episodes {rec:.1f}, the search {search:.1f}, the recovery (distillation, on-policy "
        f"episodes, held-out figures) {comp - search:.1f}, the rest {rest:.1f}"
    )


def report_lines(m: dict[str, Any]) -> list[str]:
    ref = m["engines"][0]
    pairs = {p["candidate"]: p for p in m["paired"]}
    s = m["search"]
    g = goals(m)
    lines = [
        "## The architecture search on the trained ResNet policy: searched vs uniform pruning "
        "vs FastNAS",
        "",
        f"`zoo:metaworld-resnet18` cut to about half its ONNX Runtime latency (1 thread) by "
        f"`--search-arch {m['spec']}` and by uniform `--prune channels:"
        f"{m['uniform']['ratio']}` (the ratio whose latency, measured before distillation, is "
        "closest to the searched sub-network's), both recovered by the same `--distill "
        f"{m['distill']}` on the same `--calibration {CALIB}` recordings; then "
        f"{m['episodes']} paired episodes per engine on `{TASK}` (seeds "
        f"{m['seeds'][0]:,}..{m['seeds'][1]:,}, never used by training, calibration, "
        "distillation, the search or its finalists). p50: interleaved rounds "
        f"({m['rounds']} x {m['per_round']}), 1 thread. Output error: relative L2 of the "
        "action against fp32 on 128 held-out observations (seeds from 2,000,000).",
        "",
        "| engine | p50 ms | speed-up vs fp32 | success | paired diff vs fp32 | lost/gained | p "
        "| verdict | output rel. L2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in m["engines"]:
        diff, lg, pv, verdict = _diff(pairs.get(e["label"]))
        lines.append(
            f"| {e['label']} | {e['p50_ms']:.2f} | {ref['p50_ms'] / e['p50_ms']:.2f}x | "
            f"{_rate(e)} | {diff} | {lg} | {pv} | {verdict} | {e['holdout_relative_l2']:.4f} |"
        )
    hh = m["searched_vs_uniform"]
    d = hh["success_diff"]
    lines += [
        "",
        f"Searched against uniform, paired on the same seeds: {d['mean']:+.2f} "
        f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], {d['lost']} lost / {d['gained']} gained, "
        f"p = {hh['p_value']:.3g} ({hh['verdict']}).",
        "",
        f"**Goal (at <= 0.5x of fp32's latency, success >= uniform pruning's and within 5 points "
        f"of fp32): {'met' if g['met'] else 'NOT met'}** (searched at {g['latency_ratio']:.2f}x "
        f"of fp32; >= uniform: {'yes' if g['beats_uniform'] else 'no'}; within 5 points: "
        f"{'yes' if g['within_5'] else 'no'}).",
        "",
    ]
    tb = m.get("search_time_budget") or {}
    if tb and g["compile_min"] is not None:
        calls = tb["steps_per_call"]
        lines += [
            f"**Goal (a 30-minute budget on 2 cores produces the result): "
            f"{'met' if g['in_30_min'] else 'NOT met'}** (`--search-budget "
            f"{m['search_budget']}` bounds the search and its recovery: the whole compile took "
            f"{g['compile_min']:.1f} min; the recovery had {tb['seconds'] / 60:.1f} min and "
            f"ran {sum(calls):,} steps ({', '.join(map(str, calls))} a call, at most "
            f"{tb['steps_asked']}); the uniform row's recovery had the same time: `--distill "
            f"{m.get('uniform_distill', '')}`).",
            "",
        ]
    ours = next((e for e in m["engines"] if "robopt OpenVINO" in e["label"]), None)
    vendor = next((e for e in m["engines"] if e["label"].startswith("OpenVINO + NNCF")), None)
    if ours and vendor:
        keeps = ours["success"]["rate"] >= ref["success"]["rate"] - 0.02 and (
            pairs[ours["label"]]["verdict"] != "worse"
        )
        lines += [
            f"The speed claim of issue 17 on these rows: robopt's engine of the searched "
            f"sub-network ({ours['label'].split('robopt ')[-1]}, held-out bound "
            f"{m.get('int8_max_drop', 0.01)} relative L2) {ours['p50_ms']:.2f} ms against the "
            "vendor's best "
            f"recipe (OpenVINO + NNCF int8 of the fp32 model) {vendor['p50_ms']:.2f} ms: "
            f"{vendor['p50_ms'] / ours['p50_ms']:.2f}x; success {_rate(ours)} vs fp32 "
            f"{_rate(ref)} ({'kept' if keeps else 'NOT kept'}: within 2 points and no "
            "detectable paired drop).",
            "",
        ]
    t = s["table"]
    search_min = s["seconds"] / 60
    dist_min = (m.get("search_distillation") or 0) / 60
    lines += [
        f"The search: latency table of {t['entries']} entries ({t['measured']} timed, "
        f"{t['reused']} from the store, {t['seconds']:.0f} s; full {t['full_ms']:.2f} ms, "
        f"narrowest {t['narrow_ms']:.2f} ms), budget {s['budget_ms']:.2f} ms, "
        f"{len(s['steps'])} greedy steps, {s['candidates']['scored']} candidates scored "
        f"({s['candidates']['from_store']} from the store) in {search_min:.1f} min; the "
        f"recovery distillation {dist_min:.1f} min of training{_compile_time(m)}. Score: "
        f"{s['score']}; finalists by {s['finalists_by']}."
        + "".join(
            f" Every finalist timed over the budget after step {a.get('after_step')}: the "
            f"table was aimed at {a['aim_ms']:.2f} ms."
            for a in s.get("retargets") or []
        ),
        "",
        "| finalist | predicted ms | measured ms | rel. L2 (search's validation) | success "
        "(guard episodes) | on the front | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, f in enumerate(s["finalists"]):
        succ = f"{f['success']:.0%}" if "success" in f else "-"
        lines.append(
            f"| {i + 1} | {f['predicted_ms']:.2f} | {f['measured_ms']:.2f} | {f['error']:.4f} | "
            f"{succ} | {'yes' if f['pareto'] else 'no'} | {'yes' if i == 0 else ''} |"
        )
    steps = ", ".join(f"{x['change']} {x['what']}" for x in s["steps"][:40])
    lines += ["", f"Greedy steps, in order: {steps}.", ""]
    uni = m["uniform"]
    tried = ", ".join(f"{float(r):.2f}: {ms:.2f} ms" for r, ms in uni["measured_ms"].items())
    lines += [
        f"Uniform ratios measured before distillation (target {uni['target_ms']:.2f} ms, the "
        f"searched sub-network's; {uni.get('timing', 'each timed alone')}): {tried}."
        + (
            f" The uniform bundle was built ahead at {uni['ratio']} (closest here: "
            f"{uni['closest']})."
            if "closest" in uni
            else ""
        ),
        "",
    ]
    fast = m["fastnas"]
    t = m["search"].get("totals") or {}
    ratio = t["macs_after"] / t["macs_before"] if t.get("macs_before") else None
    whose = (
        "the searched sub-network's"
        if ratio is None or abs(ratio - fast.get("flops_ratio", ratio)) < 0.005
        else f"an earlier search's sub-network (built ahead); this search's is {ratio:.1%}"
    )
    if "skipped" in fast:
        lines += [f"FastNAS: not a row: {fast['skipped']}", ""]
    else:
        lines += [
            f'FastNAS (nvidia-modelopt {fast["modelopt"]}, `mtp.prune(mode="fastnas")` with '
            f"its defaults, constraint FLOPs <= {fast['flops_ratio']:.1%} of the original: "
            f"{whose}; its score: negative relative L2 on 32 recorded "
            f"observations; BatchNorm recalibrated on the recordings): search "
            f"{fast['seconds'] / 60:.1f} min; "
            + (
                "then the same distillation as the other rows."
                if fast.get("distilled")
                else "not distilled (FastNAS's flow ends with the user's own fine-tuning; robopt's "
                "distillation of it would add ~30 min of both cores to each bench run)."
            ),
            "",
        ]
    return lines
