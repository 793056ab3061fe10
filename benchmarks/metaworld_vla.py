"""``make bench`` section ``metaworld-vla``: the trained VLA's bundles against its torch model.

``zoo:metaworld-vla`` (OpenVLA form, trained here on the four Meta-World tasks,
docs/METAWORLD.md) is compiled by robopt at ``int8-weight`` and ``int4-weight`` with the
default recipe (no ``-b``: OpenVINO, its bf16 arithmetic where the CPU has it, the decode
steps on ONNX Runtime where they measure faster) and at fp32 on ONNX Runtime, with the
compile's token check off (``--max-accuracy-drop 1``) so that every bundle is measured.
Against the torch model (fp32, greedy with its key/value cache, 1 thread):

- action-token agreement on held-out observations (the fp32 policy's own episodes from seed
  2,000,000; never trained, calibrated or checked on);
- actions per second: one control step (vision, prefill, 3 decode steps, de-tokenization;
  the adapter's resize and prompt tokenization included), interleaved rounds, 1 thread;
- closed-loop success on the same seeded episodes (3,000,000..) for every engine, paired
  against the torch model; episodes run in two worker processes, one thread each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile import evaluate as ev

SOURCE = "zoo:metaworld-vla"
TASK = "metaworld-suite"
HOLDOUT_SEED = 2_000_000
EVAL_SEED = 3_000_000
# label -> (precision, backend or None for robopt's default recipe)
BUILDS = {
    "robopt fp32 (onnxruntime)": ("fp32", "onnxruntime"),
    "robopt int8-weight": ("int8-weight", None),
    "robopt int4-weight": ("int4-weight", None),
}
EAGER = "torch eager fp32"
MIN_AGREEMENT = 0.95
_OPEN: list[Any] = []  # a worker's open bundles


def _open(kind: str, path: str) -> Any:
    """An engine as an ``adapted`` task policy (feeds -> [actions]), one thread."""
    import contextlib

    from robopt_compile.zoo import load_vla, task_adapter

    if kind == "eager":
        import torch

        torch.set_num_threads(1)
        return ev.vla_eager_policy(load_vla(SOURCE.removeprefix("zoo:")), task_adapter(SOURCE))
    stack = contextlib.ExitStack()
    _OPEN.append(stack)  # the runners live as long as the worker process
    return stack.enter_context(ev.driver_policy(path, 1))


def _episodes(kind: str, path: str, seeds: list[int]) -> list[tuple[int, float, bool, int]]:
    from robopt_compile.tasks import get_task

    fn = _open(kind, path)
    with get_task(TASK) as task:
        eps = [task.episode(fn, s) for s in seeds]
    return [(e.seed, e.ret, bool(e.success), e.steps) for e in eps]


def _holdout(model: Any, adapter: Any, episodes: int, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` observations spread over the torch policy's own episodes from HOLDOUT_SEED."""
    from robopt_compile.tasks import get_task

    with get_task(TASK) as task:
        eps = [task.episode(ev.vla_eager_policy(model, adapter), s, record=True)
               for s in range(HOLDOUT_SEED, HOLDOUT_SEED + episodes)]  # fmt: skip
    feeds = [{k: e.feeds[k][i : i + 1] for k in ("image", "state")}
             for e in eps for i in range(e.steps)]  # fmt: skip
    keep = np.linspace(0, len(feeds) - 1, min(n, len(feeds))).astype(int)
    return [adapter(feeds[i]) for i in keep]


def bench_metaworld_vla(
    work: Path, log: Callable[[str], None], episodes: int = 100, rounds: int = 15,
    per_round: int = 20, holdout: int = 200,
) -> dict[str, Any]:  # fmt: skip
    import contextlib
    import json

    import torch

    from benchmarks.metaworld import _closed_loop
    from benchmarks.run import interleaved_median_ms
    from robopt_compile.bench.multigraph import open_driver, token_fidelity
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.zoo import load_vla, task_adapter

    torch.set_num_threads(1)
    work = Path(work) / "metaworld-vla"
    work.mkdir(parents=True, exist_ok=True)
    builds: dict[str, Any] = {}
    for label, (precision, backend) in BUILDS.items():
        log(f"[bench] metaworld-vla: {label} ...")
        t0 = time.perf_counter()
        # The token check off (--max-accuracy-drop 1): every bundle is measured; the report's
        # guard table says which ones robopt's default check (>= 95%) would have refused.
        opts = CompileOptions(threads=1, precision=precision, backend=backend,
                              quant=QuantOptions(max_drop=1.0))  # fmt: skip
        r = compile_model(SOURCE, work / precision, opts, force=True)
        m = r.manifest
        builds[label] = {
            "precision": precision, "backend": m["backend"],
            "activations": m.get("build", {}).get("activations"),
            "graphs": {g["name"]: g.get("backend", m["backend"]) for g in m["graphs"]},
            "weight_bytes": sum(int(g.get("weight_bytes") or 0) for g in m["graphs"]),
            "compile_agreement": r.report["fidelity"]["token_agreement"],
            "compile_seconds": time.perf_counter() - t0,
        }  # fmt: skip
    model, adapter = load_vla(SOURCE.removeprefix("zoo:")), task_adapter(SOURCE)
    log(f"[bench] metaworld-vla: {holdout} held-out observations ...")
    obs = _holdout(model, adapter, 8, holdout)
    ref = [model.predict_action(**{k: torch.from_numpy(v) for k, v in o.items()}) for o in obs]
    ref_tok, ref_act = np.stack([r[0] for r in ref]), np.stack([r[1] for r in ref])
    fns: dict[str, Callable[[], Any]] = {EAGER: lambda: model.act(obs[0])}
    with contextlib.ExitStack() as stack:
        for label, (precision, _) in BUILDS.items():
            root = work / precision
            drv = open_driver(root, json.loads((root / "manifest.json").read_text()), 1, stack)
            steps = [drv.step(o) for o in obs]
            builds[label]["fidelity"] = token_fidelity(
                ref_tok, ref_act, np.stack([s.tokens for s in steps]),
                np.stack([s.actions for s in steps]))  # fmt: skip
            fns[label] = lambda drv=drv: drv.step(obs[0])
        log("[bench] metaworld-vla: latency, interleaved rounds ...")
        lat = interleaved_median_ms(fns, rounds, per_round)
    engines = {EAGER: ("eager", ""), **{k: ("bundle", str(work / p)) for k, (p, _) in
                                        BUILDS.items()}}  # fmt: skip
    log(f"[bench] metaworld-vla: {episodes} paired episodes x {len(engines)} engines ...")
    loop = _closed_loop(engines, episodes, log, _episodes, "metaworld-vla")
    for e in loop["engines"]:
        e["p50_ms"] = lat[e["label"]]
        e["build"] = builds.get(e["label"])
    return {"episodes": episodes, "rounds": rounds, "per_round": per_round,
            "holdout": len(obs), "holdout_seed": HOLDOUT_SEED, **loop}  # fmt: skip


def claim(m: dict[str, Any]) -> dict[str, Any]:
    """The issue's three goals, judged from the rows."""
    ref = next(e for e in m["engines"] if e["label"] == EAGER)
    pairs = {p["candidate"]: p for p in m["paired"]}
    rows = {e["label"]: e for e in m["engines"]}

    def keeps(label: str) -> bool:
        p = pairs[label]
        return rows[label]["success"]["rate"] >= ref["success"]["rate"] - 0.02 and (
            p["verdict"] != "worse")  # fmt: skip

    int8 = rows.get("robopt int8-weight")
    agreement = None if int8 is None else int8["build"]["fidelity"]["token_agreement"]
    kept = [k for k in pairs if keeps(k)]
    fastest = min(kept, key=lambda k: rows[k]["p50_ms"], default=None)
    speed = None if fastest is None else ref["p50_ms"] / rows[fastest]["p50_ms"]
    return {
        "int8_agreement": agreement,
        "agreement_met": agreement is not None and agreement >= MIN_AGREEMENT,
        "success_kept": {k: keeps(k) for k in pairs},
        "fastest_kept": fastest,
        "speedup": speed,
        "speed_met": speed is not None and speed >= 3.0,
    }


def _rate(e: dict[str, Any]) -> str:
    s = e["success"]
    return f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"


def report_lines(m: dict[str, Any]) -> list[str]:
    ref = next(e for e in m["engines"] if e["label"] == EAGER)
    pairs = {p["candidate"]: p for p in m["paired"]}
    c = claim(m)
    lines = [
        "## The trained VLA: metaworld-vla's bundles against its torch model",
        "",
        "`zoo:metaworld-vla` (OpenVLA form: DINOv2 + SigLIP at 84 px, 4-layer Llama, byte-"
        "tokenized instruction and hand-state tokens, 4 action tokens of 256 bins; trained here "
        "on the same demonstrations as metaworld-resnet18, docs/METAWORLD.md). Token agreement "
        f"with the torch model on {m['holdout']} held-out observations (its own episodes from "
        f"seed {m['holdout_seed']:,}); actions/s: one control step, interleaved rounds "
        f"({m['rounds']} x {m['per_round']}), 1 thread; success on the same {m['episodes']} "
        f"seeded episodes per engine (seeds {m['seeds'][0]:,}..{m['seeds'][1]:,}), paired "
        "against the torch model (exact McNemar p).",
        "",
        "| engine | graphs on | weights MB | actions/s | vs eager | token agreement | "
        "all 4 equal | success | paired diff | lost/gained | p | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in m["engines"]:
        b, p = e.get("build"), pairs.get(e["label"])
        if p is None:
            tail = "| | | reference |"
            fid = "| |"
            where, mb = "torch", ""
        else:
            d = p["success_diff"]
            tail = (
                f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
                f"{d['lost']}/{d['gained']} | {p['p_value']:.3g} | {p['verdict']} |"
            )
            f = b["fidelity"]
            fid = f"{f['token_agreement']:.1%} | {f['all_tokens_equal']:.1%} |"
            where = ", ".join(f"{g}: {r}" for g, r in b["graphs"].items())
            if b.get("activations"):
                where += f" ({b['activations']} arithmetic)"
            mb = f"{b['weight_bytes'] / 1e6:.1f}"
        lines.append(
            f"| {e['label']} | {where} | {mb} | {1e3 / e['p50_ms']:.0f} | "
            f"{ref['p50_ms'] / e['p50_ms']:.2f}x | {fid} {_rate(e)} | {tail}"
        )
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    agree = "n/a" if c["int8_agreement"] is None else f"{c['int8_agreement']:.1%}"
    lines += [
        "",
        f"**Goals.** int8-weight token agreement >= 95%: {ok(c['agreement_met'])} ({agree}). "
        "Success within 2 points of fp32 with no detectable paired drop: "
        + ", ".join(
            f"{k.removeprefix('robopt ')} {'kept' if v else 'NOT kept'}"
            for k, v in c["success_kept"].items()
        )
        + f". >= 3x eager actions/s for the fastest bundle that keeps success: "
        f"{ok(c['speed_met'])}"
        + (f" ({c['fastest_kept']}, {c['speedup']:.2f}x)." if c["speedup"] else "."),
        "",
        "Guard metric vs task metric: robopt's VLA check accepts a bundle when >= 95% of its "
        "action tokens agree with the torch model's; does the task agree?",
        "",
        "| engine | token agreement | token guard | task |",
        "|---|---|---|---|",
    ]
    n_agree = 0
    for label, keep in c["success_kept"].items():
        f = next(e for e in m["engines"] if e["label"] == label)["build"]["fidelity"]
        guard = f["token_agreement"] >= MIN_AGREEMENT
        n_agree += guard == keep
        verdicts = f"{'accept' if guard else 'reject'} | {'accept' if keep else 'reject'}"
        lines.append(f"| {label} | {f['token_agreement']:.1%} | {verdicts} |")
    lines += ["", f"They agree on {n_agree} of {len(c['success_kept'])} bundles.", ""]
    return lines
