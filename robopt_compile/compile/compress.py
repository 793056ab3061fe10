"""The compression stage of the pipeline: structured pruning, low-rank factorization,
distillation to recover, then 2:4 / unstructured sparsity, each checked like quantization.

Order, and why: channel pruning and low-rank change the architecture and cost accuracy that
distillation then recovers (it trains the compressed graph's own weights against the
uncompressed model's outputs); 2:4 and unstructured masks come last because the trainer does
not keep masks fixed, and quantization (the next stage) runs on the compressed model.

The guard: every step is measured on HELD-OUT samples (never those it calibrated or trained
on) against the uncompressed model, with the same figures as quantization (relative L2,
cosine, centred cosine, max abs, or ``--metric``), before and after each step. They are
measured in ONNX Runtime fp32: pruning changes the arithmetic, not how a runtime executes it,
and the engine check of the bundle then holds the target backend to the compressed model.
With ``--max-accuracy-drop`` a step that breaks the bound is rolled back (``--strict``: exit
4). Without it nothing is rolled back: a user who asks for 50% of the channels gets them, and
the report says what it cost, since no untrained pruning of that size stays within the
quantization default of 1%.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopt_compile.compile.options import CompressOptions, parse_duration
from robopt_compile.errors import CheckFailedError, InputError

RANDOM_SAMPLES = 64  # with no --calibration: random inputs, half held out
RECOVERABLE = ("prune-channels", "low-rank", "arch-search")  # what --distill recovers


class ArchSearchStep:
    """``--search-arch`` as the first structured step (``archsearch/search.py``): its result
    is judged, distilled (``--distill``) and rolled back like a pruning pass's."""

    name = "arch-search"

    def __init__(self, opts: CompressOptions, samples: list, threads: Any, cache: Any,
                 seed: int) -> None:  # fmt: skip
        from robopt_compile.archsearch.search import parse_arch_spec

        self.spec = parse_arch_spec(opts.search_arch or "")
        self.opts, self.samples, self.threads = opts, samples, threads
        self.cache, self.seed = cache, seed
        self.report: dict[str, Any] = {}

    def run(self, model: Any, note: Callable[[str, str, float], None]) -> Any:
        from robopt_compile.archsearch.search import search_arch

        out = search_arch(model, self.spec, self.samples, self.threads, cache=self.cache,
                          guard=self.opts.arch_guard, seed=self.seed,
                          budget_s=self.opts.search_budget_s, progress=note)  # fmt: skip
        self.report = out.report
        return out.model


def parse_spec(text: str, flag: str, head_keys: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """``kind:value,key=value,...`` -> (kind, {key: value}); ``value`` lands under head_keys[0]."""
    head, _, rest = text.partition(",")
    kind, _, value = head.partition(":")
    kv: dict[str, str] = {}
    if "=" in kind and not value:  # "energy=0.95,..." has no kind
        rest = head + ("," + rest if rest else "")
        kind = ""
    elif value:
        if "=" in value or not head_keys:
            raise InputError(f"{flag} {text!r}: expected KIND:VALUE[,key=value...].")
        kv[head_keys[0]] = value
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise InputError(f"{flag} {text!r}: {item!r} is not key=value.")
        kv[key.strip()] = val.strip()
    return kind.strip(), kv


def _num(kv: Mapping[str, str], key: str, flag: str, cast: Callable[[str], Any] = float) -> Any:
    try:
        return cast(kv[key])
    except ValueError:
        raise InputError(f"{flag}: {key}={kv[key]!r} is not a number.") from None


def _check_keys(kv: Mapping[str, str], allowed: set[str], flag: str) -> None:
    bad = sorted(set(kv) - allowed)
    if bad:
        raise InputError(f"{flag}: unknown option {bad[0]!r}; known: {sorted(allowed)}.")


def build_steps(opts: CompressOptions, calibration: list[dict[str, np.ndarray]]) -> list[Any]:
    """The compression passes, in the stage's order, from the CLI specs."""
    from robopt_compile.passes import get_pass_class

    structured: list[Any] = []
    masks: list[Any] = []
    for spec in opts.prune:
        kind, kv = parse_spec(spec, "--prune", ("ratio",))
        if kind == "channels":
            _check_keys(kv, {"ratio", "criterion", "scope", "multiple", "protect"}, "--prune")
            if "ratio" not in kv:
                raise InputError("--prune channels needs a ratio: --prune channels:0.5.")
            layer_ratios = {}
            for item in opts.prune_layers:
                name, eq, r = item.rpartition("=")
                if not eq or not name:
                    raise InputError(f"--prune-layer {item!r}: expected NODE=RATIO.")
                layer_ratios[name] = _num({"r": r}, "r", "--prune-layer")
            # With real calibration data the activation criterion is the default: measured on
            # visuomotor-cnn at 50% it keeps held-out relative L2 0.12 (centred cosine 0.37)
            # where weight L1 gives 0.68 (0.007) (docs/BENCHMARKS.md). Random inputs say
            # nothing about which channels real observations use, so L1 without data.
            crit = kv.get("criterion", "activation" if calibration else "l1")
            structured.append(
                get_pass_class("prune-channels")(
                    _num(kv, "ratio", "--prune"),
                    criterion=crit,
                    scope=kv.get("scope", "layer"),
                    layer_ratios=layer_ratios,
                    protect=kv["protect"].split(";") if "protect" in kv else None,
                    multiple=_num(kv, "multiple", "--prune", int) if "multiple" in kv else 8,
                    calibration=calibration if crit == "activation" else None,
                )
            )
        elif kind.isdigit() and kv.get("ratio", "").isdigit():  # "2:4"
            _check_keys(kv, {"ratio", "min_channels"}, "--prune")
            n, m = int(kind), int(kv["ratio"])
            extra = {}
            if "min_channels" in kv:
                extra["min_channels"] = _num(kv, "min_channels", "--prune", int)
            masks.append(get_pass_class("prune-2of4")(n=n, m=m, **extra))
        elif kind == "unstructured":
            _check_keys(kv, {"ratio", "scope"}, "--prune")
            if "ratio" not in kv:
                raise InputError("--prune unstructured needs a sparsity: unstructured:0.8.")
            masks.append(
                get_pass_class("prune-magnitude")(
                    _num(kv, "ratio", "--prune"), scope=kv.get("scope", "global")
                )
            )
        else:
            raise InputError(
                f"--prune {spec!r}: unknown kind; use channels:RATIO, 2:4 or unstructured:RATIO."
            )
    if opts.low_rank:
        _, kv = parse_spec(opts.low_rank, "--low-rank")
        _check_keys(kv, {"energy", "rank", "min_dim"}, "--low-rank")
        if ("energy" in kv) == ("rank" in kv):
            raise InputError("--low-rank needs exactly one of energy=F or rank=F.")
        kw: dict[str, Any] = {}
        if "energy" in kv:
            kw["energy"] = _num(kv, "energy", "--low-rank")
        else:
            kw["rank_ratio"] = _num(kv, "rank", "--low-rank")
        if "min_dim" in kv:
            kw["min_dim"] = _num(kv, "min_dim", "--low-rank", int)
        structured.append(get_pass_class("low-rank")(**kw))
    return structured + masks


def validate(opts: CompressOptions, has_calibration: bool, task_calibration: bool = False) -> None:
    """Check the specs before the slow export (the passes are built again with the data)."""
    dist = distill_options(opts.distill)
    if dist and dist.get("onpolicy") and not task_calibration:
        raise InputError(
            "--distill onpolicy=R lets the student drive the task: it needs --calibration "
            "task (the recordings' task)."
        )
    if opts.search_arch is not None:
        from robopt_compile.archsearch.search import parse_arch_spec

        parse_arch_spec(opts.search_arch)
        if any(p.startswith("channels") for p in opts.prune) or opts.prune_layers:
            raise InputError("--search-arch chooses every layer's width: drop --prune channels "
                             "and --prune-layer (2:4 and unstructured may follow it).")  # fmt: skip
    if (opts.distill or opts.prune_layers) and not opts.active:
        raise InputError("--distill and --prune-layer need --prune channels:R or --low-rank.")
    if opts.prune_layers and not any(p.startswith("channels") for p in opts.prune):
        raise InputError("--prune-layer sets channel-pruning ratios: add --prune channels:R.")
    steps = build_steps(opts, [{"placeholder": np.zeros(1)}] if has_calibration else [])
    if (
        distill_options(opts.distill) is not None
        and opts.search_arch is None
        and not any(getattr(s, "name", "") in ("prune-channels", "low-rank") for s in steps)
    ):
        raise InputError("--distill recovers what --prune channels, --low-rank or --search-arch "
                         "cost; add one.")  # fmt: skip


def distill_options(spec: str | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    _, kv = parse_spec(spec, "--distill") if spec not in ("", "on") else ("", {})
    _check_keys(kv, {"steps", "lr", "batch", "loss", "onpolicy", "episodes", "time"},
                "--distill")  # fmt: skip
    out: dict[str, Any] = {"steps": _num(kv, "steps", "--distill", int) if "steps" in kv else 500}
    if "lr" in kv:
        out["lr"] = _num(kv, "lr", "--distill")
    if "batch" in kv:
        out["batch_size"] = _num(kv, "batch", "--distill", int)
    if "loss" in kv:
        if kv["loss"] not in ("mse", "kl"):
            raise InputError("--distill loss must be mse or kl.")
        out["loss"] = kv["loss"]
    if out["steps"] < 1:
        raise InputError("--distill steps must be >= 1.")
    if "time" in kv:  # a time budget: each call's steps are fitted to it (at most ``steps``)
        out["seconds"] = parse_duration(kv["time"], "--distill time=")
        if not out["seconds"] > 0:
            raise InputError("--distill time= must be more than 0: give seconds, or 90s, 20m.")
    for key in ("onpolicy", "episodes"):  # on-policy rounds (compile/onpolicy.py)
        if key in kv:
            out[key] = _num(kv, key, "--distill", int)
            if out[key] < (0 if key == "onpolicy" else 1):
                raise InputError(f"--distill {key}={out[key]} is out of range.")
    return out


@dataclass
class CompressResult:
    model: Any
    report: dict[str, Any] = field(default_factory=dict)
    reference_inputs: dict[str, np.ndarray] | None = None
    reference_outputs: dict[str, np.ndarray] | None = None
    compressed: bool = False  # False: every step rolled back


def _data(model: Any, quant: Any):
    from robopt_compile import ir as rir
    from robopt_compile.compile.calibration import load_calibration

    specs = rir.input_specs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if quant.calibration is None:
            data = load_calibration(
                "random", specs, holdout_fraction=0.5, seed=quant.seed,
                random_samples=RANDOM_SAMPLES,
            )  # fmt: skip
            return data, (
                "no --calibration: pruning importance, distillation and the held-out figures "
                "use random inputs, so they are indicative only"
            )
        data = load_calibration(
            quant.calibration, specs, holdout_fraction=quant.holdout_fraction, seed=quant.seed
        )
    note = (
        "--calibration random: compression figures are meaningless for real data"
        if (data.random)
        else ""
    )
    return data, note


def compress(
    model: Any,
    opts: CompressOptions,
    quant: Any,
    threads: int | None,
    runner: Any,
    progress: Callable[[str, str, float], None] | None = None,
    cache: Any = None,
) -> CompressResult:
    """Run the compression steps on ``model``; guard each, distill if asked, roll back."""
    from robopt_compile import ir as rir
    from robopt_compile.compile.accuracy import accuracy_figures, load_metric
    from robopt_compile.numerics import run_onnx_many
    from robopt_compile.passes.base import pass_name

    note = progress or (lambda *a: None)
    bound = quant.max_drop
    if bound is not None and bound < 0:
        raise InputError("--max-accuracy-drop must be >= 0.")
    metric = load_metric(quant.metric) if quant.metric else None
    metric_name = quant.metric or "relative_l2"
    dist = distill_options(opts.distill)
    data, data_note = _data(model, quant)
    if data_note:
        note(data_note, "note", 0.0)
    steps = build_steps(opts, [] if data.random else list(data.calibration))
    if opts.search_arch is not None:
        steps.insert(0, ArchSearchStep(opts, list(data.calibration), threads, cache, quant.seed))
    if dist is not None and not any(pass_name(s) in RECOVERABLE for s in steps):
        raise InputError("--distill recovers what --prune channels, --low-rank or --search-arch "
                         "cost; add one.")  # fmt: skip
    original = rir.clone(model)
    reference = run_onnx_many(original, data.holdout, threads=threads)
    # --eval with a bound: each step is judged by the task (episodes of the accuracy guard's
    # own seeds against the uncompressed model); the output figures stay in the report.
    guard = quant.closed_loop if bound is not None else None
    if guard is not None:
        guard.set_reference(original, threads)

    def score(m: Any, task: bool = True) -> dict[str, Any]:
        got = run_onnx_many(m, data.holdout, threads=threads)
        fig = _brief(accuracy_figures(reference, got, data.holdout, metric, metric_name))
        if guard is None or not task:
            return fig
        t = guard.score_onnx(m, threads)
        keep = ("episodes", "reference_success", "success", "reference_return", "return",
                "verdict", "p_value")  # fmt: skip
        return {**fig, "output_drop": fig["drop"], "metric": t["metric"],
                "drop": t["drop"] if np.isfinite(t["drop"]) else float("inf"),
                "closed_loop": {k: t[k] for k in keep if k in t}}  # fmt: skip

    report: dict[str, Any] = {
        "data": data.to_json(),
        "data_note": data_note,
        "metric": f"task:{guard.metric}" if guard is not None else metric_name,
        "max_accuracy_drop": bound,
        "steps": [],
    }
    current = model
    # The uncompressed model against itself: 0 drop (no episodes needed to know it).
    last_fig: dict[str, Any] = score(model, task=False)
    for step in steps:
        name = pass_name(step)
        t_search = None
        if isinstance(step, ArchSearchStep):
            t_search = time.perf_counter()
            candidate = step.run(current, note)
        else:
            candidate = runner.run([step], rir.clone(current))
        fig = score(candidate)
        entry: dict[str, Any] = {"pass": name, "report": getattr(step, "report", {})}
        entry["figures_before"] = last_fig
        entry["figures"] = fig
        if dist is not None and name in RECOVERABLE:
            from robopt_compile.distill import distill

            # after the search's figures (the guard's episodes too): what is left is left
            step_dist = dist if t_search is None else _recovery_in_budget(
                dist, opts.search_budget_s, t_search, note)  # fmt: skip

            note("distill", "start", 0.0)

            def tick(step: int, total: int, loss: float) -> None:
                note(f"distill step {step}/{total}, loss {loss:.4g}", "tick", step / total)

            if dist.get("onpolicy"):
                from robopt_compile.compile.onpolicy import distill_on_policy

                trained, dreport = distill_on_policy(
                    candidate, original, list(data.calibration), step_dist, opts.task, quant.seed,
                    threads, note,
                )  # fmt: skip
            else:
                res = distill(
                    candidate, original, list(data.calibration), seed=quant.seed,
                    progress=tick, **step_dist,
                )  # fmt: skip
                trained, dreport = res.model, res.report
            note("distill", "done", float(dreport.get("seconds", 0.0)))
            entry["distillation"] = dreport
            entry["figures_before_distillation"] = fig
            candidate = trained
            fig = score(candidate)
            entry["figures"] = fig
        if bound is not None and fig["drop"] > bound:
            msg = (
                f"{name} breaks --max-accuracy-drop {bound}: held-out "
                f"{fig.get('metric', metric_name)} {fig['drop']:.4g} against the uncompressed model"
            )
            if quant.strict:
                raise CheckFailedError(
                    msg + " (--strict). Prune less, add --distill, or loosen it."
                )
            entry["rolled_back"] = True
            entry["rollback_reason"] = msg + "; the step is rolled back."
            note(f"rolled back {name}: {msg}", "note", 0.0)
        else:
            entry["rolled_back"] = False
            current, last_fig = candidate, fig
            if bound is None and fig["drop"] > 0.01:
                note(
                    f"{name}: held-out {metric_name} {fig['drop']:.3g} against the uncompressed "
                    "model (no --max-accuracy-drop given, so it is kept)",
                    "note",
                    0.0,
                )
        report["steps"].append(entry)
    compressed = current is not model
    report["final"] = last_fig if compressed else None
    out = run_onnx_many(current, data.holdout[:1], threads=threads)[0]
    return CompressResult(current, report, dict(data.holdout[0]), out, compressed=compressed)


def _recovery_in_budget(
    dist: dict[str, Any] | None, budget_s: float | None, t_search: float,
    note: Callable[[str, str, float], None],
) -> dict[str, Any] | None:  # fmt: skip
    """``--search-budget`` covers the search and its recovery: the distillation gets what
    the search left (or its own ``time=``, whichever is less), its steps fitted to it."""
    if dist is None or budget_s is None:
        return dist
    left = budget_s - (time.perf_counter() - t_search)
    seconds = min(left, dist.get("seconds", left))
    if seconds < 0.1 * budget_s:
        note(f"--search-budget: the search left {max(left, 0):.0f} s of {budget_s:.0f} s for "
             "the recovery; its distillation runs its minimum steps (a larger budget recovers "
             "more)", "note", 0.0)  # fmt: skip
    return {**dist, "seconds": max(seconds, 0.0)}


def _brief(fig: dict[str, Any]) -> dict[str, Any]:
    keys = ("drop", "metric", "cosine", "centred_cosine", "max_abs", "relative_l2", "samples")
    return {k: fig[k] for k in keys if k in fig}
