"""Sections of ``report.html`` about measured time on a machine.

Latency (benchmarks and their histogram), per-layer time from the backend's profiler,
control-loop timing against a deadline, and results measured remotely on a robot. Each section
is a function ``(BundleData, Plots) -> HTML``.
"""

from __future__ import annotations

from typing import Any

from robopt_compile.report.data import BundleData, bench_results, control_results
from robopt_compile.report.format import (
    Raw,
    badge,
    dicts,
    dig,
    esc,
    fnum,
    h3,
    isnum,
    kv_table,
    missing,
    no_scheme,
    note,
    pct,
    short,
    table,
)
from robopt_compile.report.plots import Plots, barh, mpl_text

TOP_N = 15  # rows in per-layer tables and bar charts


def section_latency(d: BundleData, plots: Plots) -> str:
    """Benchmark latency, load time and memory, with a latency histogram."""
    bench = bench_results(d)
    if not bench:
        return missing(
            f"Not measured: run robopt-bench {d.where} --json and save the output as "
            f"{d.where}/results/bench-NAME.json (robopt_compile.bench.results.save_result)."
        )
    out = [table(bench, [
        ("result", lambda x: x[0], ""),
        ("threads", lambda x: dig(x[1], "settings.threads", "default"), "n"),
        ("runs", lambda x: dig(x[1], "latency.n"), "n"),
        *((h, lambda x, k=k: dig(x[1], f"latency.{k}"), f) for h, k, f in (
            ("p50 ms", "p50_ms", ".4g"), ("p90 ms", "p90_ms", ".4g"), ("p99 ms", "p99_ms", ".4g"),
            ("mean ms", "mean_ms", ".4g"), ("stdev ms", "stdev_ms", ".3g"),
            ("max ms", "max_ms", ".4g"), ("items/s", "throughput_per_s", ".4g"))),
        ("fidelity", lambda x: dig(x[1], "fidelity.passed"), "ok")])]  # fmt: skip
    out.append(table(bench, [
        ("result", lambda x: x[0], ""), ("machine", lambda x: dig(x[1], "machine.cpu_model"), ""),
        ("engine load ms", lambda x: dig(x[1], "timing.engine_load_ms"), ".4g"),
        ("first inference ms", lambda x: dig(x[1], "timing.first_infer_ms"), ".4g"),
        ("peak RSS MiB", lambda x: dig(x[1], "memory.peak_rss_mib"), ".4g"),
        ("RSS growth MiB", lambda x: dig(x[1], "memory.rss_increase_mib"), ".3g")]))  # fmt: skip
    series = [
        (n, [float(x) for x in r["latency"]["samples_ms"] if isnum(x)], r)
        for n, r in bench
        if isinstance(dig(r, "latency.samples_ms"), list)
    ]
    series = [s for s in series if s[1]][:5]
    if not series:
        out.append(missing(
            "Latency histogram not measured: no result keeps its raw samples; benchmark with "
            "robopt_compile.bench.harness.run_benchmark(bundle, keep_samples=True) and save it "
            "with robopt_compile.bench.results.save_result(bundle, 'bench-NAME', result)."
        ))  # fmt: skip
        return "".join(out)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        lo = min(min(s) for _, s, _ in series)
        hi = max(max(s) for _, s, _ in series)
        bins = [lo + (hi - lo) * i / 60 for i in range(61)] if hi > lo else 10
        one = len(series) == 1
        for i, (name, s, r) in enumerate(series):
            c = f"C{i}"
            ax.hist(s, bins=bins, histtype="stepfilled" if one else "step", color=c,
                    alpha=0.75 if one else 1.0, lw=1.2,
                    label=mpl_text(f"{name} (n={len(s)})"))  # fmt: skip
            for key, style in (("p50_ms", "--"), ("p99_ms", ":")):
                v = dig(r, f"latency.{key}")
                if isnum(v):
                    who = "" if one else name + " "
                    ax.axvline(v, color="#333" if one else c, ls=style, lw=1,
                               label=mpl_text(f"{who}{key[:3]} {v:.3g} ms"))  # fmt: skip
        deadline = next((dig(r, "control.deadline_ms") for _, _, r in series
                         if isnum(dig(r, "control.deadline_ms"))), None)  # fmt: skip
        if deadline is not None and deadline <= hi * 1.5:
            ax.axvline(deadline, color="#b42318", lw=1.4, label=f"deadline {deadline:.3g} ms")
        ax.set(xlabel="latency per run (ms)", ylabel="runs")
        ax.set_title("Latency distribution (timed runs after warm-up)")
        ax.legend(fontsize=7.5)

    out.append(plots.svg(draw, 3.2, "latency histogram"))
    return "".join(out)


def section_layers(d: BundleData, plots: Plots) -> str:
    """Per-layer time from the backend's own profiler."""
    res = d.results_of("layers")
    if not res:
        return missing(
            f"Not measured: run robopt-compile report {d.where} on a machine where the engine "
            "runs (it first profiles each layer with the backend's own profiler)."
        )
    est = {str(n.get("name")): n.get("time_ms") for n in dig(d.analysis, "roofline.nodes", [])}
    out = []
    for name, r in res:
        layers = [x for x in dicts(r.get("layers")) if isnum(x.get("ms"))]
        top = layers[:TOP_N]
        by_op = [(k, v) for k, v in (r.get("by_op_type") or {}).items() if isinstance(v, dict)]
        extra = "exec_type" if any("exec_type" in x for x in top) else "provider"
        out.append(h3(f"{name}: {r.get('backend', '?')}"))
        out.append(kv_table([
            ("measured", f"{r.get('runs', '?')} runs after {r.get('warmup', '?')} warm-up, "
                         f"{r.get('threads') or 'default'} thread(s)"),
            ("total", f"{fnum(r.get('total_ms'))} ms in nodes; profiled run "
                      f"{fnum(r.get('run_ms'))} ms"),
            ("method", r.get("method")), ("runtime", r.get("runtime_version"))]))  # fmt: skip
        out.append(table(top, [
            ("node", "name", ""), ("op", "op_type", ""), ("ms", "ms", ".4g"),
            ("share", "share", "%"), (extra, extra, ""),
            ("graph node", lambda x: x.get("graph_node") or "(runtime's own)", ""),
            ("roofline estimate ms", lambda x: est.get(str(x.get("graph_node"))), ".3g"),
        ]))  # fmt: skip
        if len(layers) > TOP_N:
            rest = sum(x["ms"] for x in layers[TOP_N:])
            out.append(note(f"{len(layers) - TOP_N} more nodes take {rest:.4g} ms together."))

        def draw(fig: Any, top: list[Any] = top, by_op: list[Any] = by_op) -> None:
            left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
            barh(left, [short(f"{x['name']} ({x.get('op_type')})", 44) for x in top],
                 [x["ms"] for x in top])  # fmt: skip
            left.set(xlabel="ms per run", title=f"Top {len(top)} nodes by measured time")
            ops = by_op[:12]
            barh(right, [k for k, _ in ops], [100 * float(v.get("share") or 0) for _, v in ops],
                 color="#55a868", fmt=".1f")  # fmt: skip
            right.set(xlabel="% of node time", title="Share by op type")

        out.append(plots.svg(draw, 0.24 * max(len(top), 4) + 1.1, f"per-layer time {name}",
                             "Measured with the backend's profiler on the bundle's "
                             "engine."))  # fmt: skip
        if by_op:
            out.append(table(by_op, [
                ("op type", lambda x: x[0], ""), ("nodes", lambda x: x[1].get("layers"), "n"),
                ("ms", lambda x: x[1].get("ms"), ".4g"),
                ("share", lambda x: x[1].get("share"), "%")]))  # fmt: skip
    return "".join(out)


def section_control_loop(d: BundleData, plots: Plots) -> str:
    """Control-loop timing at a rate: deadline misses, jitter, latency tail."""
    res = control_results(d)
    if not res:
        return missing(
            f"Not measured: run robopt-bench {d.where} --control-rate HZ --json and save the "
            "result under results/ (deadline misses, release jitter, latency tail at a rate)."
        )
    out = []
    for name, c in res:
        lat = c.get("latency_ms") if isinstance(c.get("latency_ms"), dict) else {}
        jit = c.get("jitter_ms") if isinstance(c.get("jitter_ms"), dict) else {}
        rss = c.get("rss_mib") if isinstance(c.get("rss_mib"), dict) else {}
        misses = c.get("misses")
        streak = c.get("longest_miss_streak")

        def opt(key: str, fmt: str = ".4g", unit: str = " ms", c: dict[str, Any] = c) -> Any:
            return fnum(c[key], fmt, unit) if key in c else None

        out.append(h3(name))
        out.append(kv_table([
            ("rate", f"{fnum(c.get('rate_hz'), 'g')} Hz, deadline {fnum(c.get('deadline_ms'))} ms"),
            ("deadline misses", Raw(
                badge(misses == 0 if isnum(misses) else None, "none", "missed")
                + esc(f" {misses} of {c.get('ticks', c.get('runs', '?'))} "
                      f"({pct(c.get('miss_fraction'), 2)})"
                      + (f", longest streak {streak}" if isnum(streak) else "")))),
            ("latency ms", ", ".join(f"{k} {fnum(v)}" for k, v in lat.items()) or None),
            ("release jitter ms", ", ".join(f"{k} {fnum(v)}" for k, v in jit.items()) or None),
            ("worst overrun", opt("worst_overrun_ms")), ("p99 headroom", opt("p99_headroom_ms")),
            ("utilisation", pct(c["utilisation"]) if "utilisation" in c else None),
            ("cold start", opt("cold_start_ms")), ("first warm inference", opt("warm_first_ms")),
            ("RSS MiB", f"start {fnum(rss.get('start'))}, end {fnum(rss.get('end'))}, growth "
                        f"{fnum(rss.get('growth'), '.3g')}" if rss else None)]))  # fmt: skip
        pts = [(k, float(v)) for k, v in lat.items() if isnum(v) and k != "mean"]
        if pts and isnum(c.get("deadline_ms")):

            def draw(
                fig: Any, pts: list[tuple[str, float]] = pts, dl: float = c["deadline_ms"]
            ) -> None:
                ax = fig.subplots()
                bars = ax.bar([k for k, _ in pts], [v for _, v in pts], color="#4c72b0", width=0.5)
                ax.bar_label(bars, labels=[f"{v:.3g}" for _, v in pts], fontsize=7.5)
                ax.axhline(dl, color="#b42318", lw=1.2, label=f"deadline {dl:.3g} ms")
                ax.set(ylabel="latency (ms)", title="Control-loop latency percentiles vs deadline")
                ax.grid(axis="x", visible=False)
                ax.legend(fontsize=7.5)

            out.append(plots.svg(draw, 2.4, f"control loop {name}"))
    return "".join(out)


def section_remote(d: BundleData, plots: Plots) -> str:
    """Benchmarks run on a robot through robopt-bench serve."""
    res = d.results_of("remote")
    if not res:
        return missing(
            "Not measured: no remote results; benchmark on the robot over the network "
            "(robopt-bench serve there, then a remote run from here) to add results/remote-*.json."
        )

    def server(x: Any) -> str:
        return no_scheme(dig(x[1], "remote.host") or dig(x[1], "remote.url", "?"))

    return table(res, [
        ("result", lambda x: x[0], ""), ("server", server, ""),
        ("machine", lambda x: f"{dig(x[1], 'machine.cpu_model', '?')} "
                              f"({dig(x[1], 'machine.arch', '?')})", ""),
        ("runtime", lambda x: f"{dig(x[1], 'machine.runtime', '?')} "
                              f"{dig(x[1], 'machine.runtime_version', '')}", ""),
        ("p50 ms", lambda x: dig(x[1], "latency.p50_ms"), ".4g"),
        ("p99 ms", lambda x: dig(x[1], "latency.p99_ms"), ".4g"),
        ("fidelity", lambda x: dig(x[1], "fidelity.passed"), "ok"),
        ("job", lambda x: dig(x[1], "remote.job_id"), "")])  # fmt: skip
