"""The planner: criteria, candidate plans, predictions, rejections with reasons, the choice.

Decisions are tested on synthetic facts (deterministic); one end-to-end search runs on the
small swing-up policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from robopt_compile.errors import InputError
from robopt_compile.plan.planner import (
    Candidate,
    Facts,
    History,
    Measured,
    OptimizationCriteria,
    candidates,
    choose,
    pareto,
    parse_budget,
    plan,
    predict,
    violations,
    with_measurement,
)

FACTS = Facts(
    macs=1e9,
    weight_mb=40.0,
    peak_activation_mb=10.0,
    roofline_ms={"fp32": 20.0, "bf16": 10.0, "int8": 5.0},
    conv_mac_share=0.9,
)
BACKENDS = {"onnxruntime": ("fp32", "int8", "int8-dynamic", "int4-weight"),
            "openvino": ("fp32", "bf16", "int8")}  # fmt: skip


# --- criteria ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{"objective": "speed"}, {"techniques": ("magic",)}, {"max_latency_ms": -1.0},
     {"latency_percentile": "p90"}, {"max_size_mb": float("nan")}],
)  # fmt: skip
def test_bad_criteria_are_one_line_errors(kw) -> None:
    with pytest.raises(InputError):
        OptimizationCriteria(**kw)


def test_parse_budget() -> None:
    assert parse_budget("90") == 90.0
    assert parse_budget("90s") == 90.0
    assert parse_budget("10m") == 600.0
    assert parse_budget("1.5h") == 5400.0
    with pytest.raises(InputError):
        parse_budget("soon")


# --- candidates and predictions ---------------------------------------------------------------


def test_candidates_follow_the_board_and_the_techniques() -> None:
    crit = OptimizationCriteria()
    got = {c.label for c in candidates(list(BACKENDS), BACKENDS, ("fp32", "int8"), crit)}
    # bf16 is not a precision of this board; weight-only int4 computes in fp32.
    assert got == {"onnxruntime fp32", "onnxruntime int8", "onnxruntime int8-dynamic",
                   "onnxruntime int4-weight", "openvino fp32", "openvino int8"}  # fmt: skip
    none = candidates(list(BACKENDS), BACKENDS, ("fp32", "int8"),
                      OptimizationCriteria(techniques=()))  # fmt: skip
    assert {c.precision for c in none} == {"fp32"}
    pruned = candidates(["openvino"], BACKENDS, ("fp32",),
                        OptimizationCriteria(techniques=("quantize", "prune")))  # fmt: skip
    assert {c.prune for c in pruned} == {None, 0.25, 0.5}


def test_predictions_scale_and_history_corrects() -> None:
    h = History()
    fp32 = predict(Candidate("onnxruntime", "fp32"), FACTS, h)
    int8 = predict(Candidate("onnxruntime", "int8"), FACTS, h)
    w4 = predict(Candidate("onnxruntime", "int4-weight"), FACTS, h)
    assert fp32.size_mb == pytest.approx(40.0) and int8.size_mb == pytest.approx(10.0)
    assert w4.size_mb < int8.size_mb and w4.latency_ms == fp32.latency_ms  # dequantized compute
    assert int8.latency_ms == pytest.approx(5.0) and not int8.corrected
    half = predict(Candidate("onnxruntime", "fp32", 0.5), FACTS, h)
    assert half.latency_ms == pytest.approx(5.0) and half.risk > fp32.risk
    # A measurement here: int8 ran at 3x its roofline -> the other int8 plans are corrected.
    h2 = with_measurement(h, Candidate("onnxruntime", "int8"), 15.0, 5.0)
    assert predict(Candidate("onnxruntime", "int8", 0.5), FACTS, h2).latency_ms == pytest.approx(
        15.0 * 0.25
    )
    assert predict(Candidate("onnxruntime", "int8"), FACTS, h2).corrected


def test_plan_rejects_with_reasons_and_ranks() -> None:
    crit = OptimizationCriteria(max_size_mb=15.0)
    cands = [Candidate("onnxruntime", p) for p in ("fp32", "int8", "int8-dynamic")]
    ds = {d.candidate.label: d for d in plan(cands, FACTS, crit, History())}
    assert ds["onnxruntime fp32"].verdict == "reject"
    assert "predicted size 40 MB > --max-size-mb 15" in ds["onnxruntime fp32"].reason
    assert ds["onnxruntime int8-dynamic"].verdict == "reject"
    assert "Conv holds 90%" in ds["onnxruntime int8-dynamic"].reason
    assert ds["onnxruntime int8"].verdict == "propose"


def test_latency_bound_rejects_only_beyond_the_error_band() -> None:
    c = [Candidate("onnxruntime", "fp32")]
    # Uncorrected roofline: 20 ms could be 50x off, so a 1 ms bound does not reject it...
    assert plan(c, FACTS, OptimizationCriteria(max_latency_ms=1.0), History())[0].verdict == (
        "propose"
    )
    # ...but after a measurement here (20 ms measured) it is rejected, with the reason.
    h = with_measurement(History(), c[0], 20.0, 20.0)
    d = plan(c, FACTS, OptimizationCriteria(max_latency_ms=1.0), h)[0]
    assert d.verdict == "reject" and "misses --max-latency-ms 1" in d.reason


def test_size_objective_and_history_of_broken_accuracy() -> None:
    cands = [Candidate("onnxruntime", p) for p in ("fp32", "int8", "int4-weight")]
    order = [d.candidate.precision for d in plan(cands, FACTS, OptimizationCriteria(
        objective="size"), History())]  # fmt: skip
    assert order == ["int4-weight", "int8", "fp32"]
    h = History(broke_accuracy={"int4-weight"})
    order = [d.candidate.precision for d in plan(cands, FACTS, OptimizationCriteria(
        objective="size"), h)]  # fmt: skip
    assert order[-1] == "int4-weight"


# --- choosing ---------------------------------------------------------------------------------


def _m(label: str, p50: float, drop: float | None, size: float = 1.0, rolled=False) -> Measured:
    b, p = label.split()
    return Measured(Candidate(b, p), {"p50": p50, "p99": p50 * 1.2}, size, None, drop,
                    rolled_back=rolled)  # fmt: skip


def test_choose_meets_every_bound_then_the_objective() -> None:
    crit = OptimizationCriteria(max_latency_ms=3.0, max_accuracy_drop=0.01)
    ms = [_m("a fp32", 4.0, None), _m("b int8", 1.0, 0.05), _m("c bf16", 2.0, 0.001),
          _m("d int8", 0.5, 0.001, rolled=True)]  # fmt: skip
    best, notes = choose(ms, crit)
    assert best is not None and best.candidate.label == "c bf16"
    why = {n["plan"]: n["violations"] for n in notes}
    assert why["a fp32"] == ["p50 4 ms > --max-latency-ms 3"]
    assert "accuracy drop 0.05 > --max-accuracy-drop 0.01" in why["b int8"]
    assert "the accuracy guard rolled it back to fp32" in why["d int8"]
    assert violations(ms[2], crit) == []
    assert choose([ms[0]], crit)[0] is None


def test_pareto_front() -> None:
    ms = [_m("a fp32", 4.0, 0.0), _m("b int8", 1.0, 0.05), _m("c bf16", 2.0, 0.001),
          _m("d int8", 3.0, 0.01)]  # fmt: skip
    assert [m.candidate.label for m in pareto(ms, OptimizationCriteria())] == [
        "b int8", "c bf16", "a fp32"]  # fmt: skip


# --- end to end -------------------------------------------------------------------------------


def test_plan_only_builds_nothing(tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "--plan-only",
         "--max-size-mb", "0.005", "--json"], capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["measured"] == [] and r["stopped"].startswith("--plan-only")
    fp32 = [d for d in r["decisions"] if d["precision"] == "fp32" and d["backend"] != "tvm"]
    assert fp32 and all(d["verdict"] == "reject" and "--max-size-mb" in d["reason"] for d in fp32)
    tvm = [d for d in r["decisions"] if d["backend"] == "tvm"]
    assert all(d["verdict"] == "reject" and "--tune-trials" in d["reason"] for d in tvm)
    assert not list(tmp_path.iterdir())
    # the count it announces is the count it lists (it said 11 and listed 12)
    code, _, err = run_cli(["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1",
                            "--plan-only", "--max-size-mb", "0.005"], capsys)  # fmt: skip
    assert code == 0 and f"planning: {len(r['decisions'])} candidate plans" in err, err


def test_search_keeps_the_best_plan_that_meets_the_bounds(tmp_path: Path, capsys) -> None:
    out = tmp_path / "auto"
    code, stdout, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "-b", "onnxruntime",
         "--max-latency-ms", "5", "--max-accuracy-drop", "0.05", "--search-budget", "120s",
         "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    assert r["best"] is not None and r["bundle"] == str(out)
    assert (out / "manifest.json").is_file()
    plan_json = json.loads((out / "results" / "plan.json").read_text())
    assert plan_json["best"]["candidate"] == r["best"]["candidate"]
    measured = {m["candidate"] for m in r["measured"]}
    assert "onnxruntime fp32" in measured and len(measured) >= 2
    # the report shows the search: every measured plan and the chosen one, the front plotted
    html = (out / "report.html").read_text()
    section = html.split('<section id="planner">', 1)[1].split("</section>", 1)[0]
    assert all(m in section for m in measured) and "(chosen)" in section
    assert "Not measured" not in section
    # Every measured plan has a verdict against the bounds.
    assert {n["plan"] for n in r["choice"]} == measured
    # One accuracy measure for every plan (fp32 and quantized alike), named once.
    from robopt_compile.plan.measure import OUTPUT_MEASURE

    assert r["accuracy_measure"] == OUTPUT_MEASURE
    assert {m["accuracy_metric"] for m in r["measured"]} == {OUTPUT_MEASURE}
    fp32 = next(m for m in r["measured"] if m["candidate"] == "onnxruntime fp32")
    assert fp32["accuracy_drop"] < 1e-5  # the fp32 engine reproduces the fp32 model


def test_search_judges_plans_by_the_task_with_eval(tmp_path: Path, capsys) -> None:
    """--eval with planner bounds: every plan drives the task; its accuracy figure is the
    closed-loop return drop against the fp32 export on the same seeds."""
    from robopt_compile.evaluate import evaluation_drop

    out = tmp_path / "auto"
    code, stdout, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--threads", "1", "-b", "onnxruntime", "--techniques",
         "quantize", "--max-latency-ms", "5", "--max-accuracy-drop", "0.05", "--eval",
         "task:episodes=2", "--json", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    assert len(r["measured"]) >= 2
    assert {m["accuracy_metric"] for m in r["measured"]} == {"task:return"}
    (saved,) = (out / "results").glob("eval-*.json")
    drop, metric = evaluation_drop(json.loads(saved.read_text()))
    assert metric == "task:return" and r["best"]["accuracy_drop"] == pytest.approx(drop)
    assert "accuracy drop measured as: task:return" not in stdout  # --json: no table


def test_impossible_bound_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    code, _, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "-b", "onnxruntime",
         "--techniques", "", "--max-latency-ms", "0.000001", "-o", str(out)], capsys)  # fmt: skip
    assert code == 4 and "no plan met every bound" in err
    assert not out.exists()


def test_sessions_and_memory(tmp_path: Path, capsys) -> None:
    """A planner run is a session in the store; the next run starts from its measurements."""
    from robopt_compile.store import open_store

    store = tmp_path / "store"
    args = ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "-b", "onnxruntime",
            "--techniques", "", "--max-latency-ms", "5", "--store", str(store)]  # fmt: skip
    code, out, err = run_cli([*args, "--json", "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    sid = json.loads(out)["session"]
    with open_store(str(store)) as st:
        rec = st.get_session(sid)
        assert rec.state == "finished" and rec.summary["best"] == "onnxruntime fp32"
        kinds = {r.kind for r in st.results(sid)}
        assert "planner.measurement" in kinds
        assert any(e.type == "step_finished" for e in st.events(sid))
    # Memory: the plan-only run now predicts onnxruntime fp32 from the measurement.
    code, out, err = run_cli([*args, "--plan-only", "--json"], capsys)
    assert code == 0, err
    d = next(d for d in json.loads(out)["decisions"] if d["plan"] == "onnxruntime fp32")
    assert d["prediction"]["corrected"] and "corrected by measurements here" in d["reason"]
    code, out, _ = run_cli(["sessions", "--store", str(store), "--json"], capsys)
    assert code == 0 and sid in out


def test_rolled_back_plans_are_not_on_the_front() -> None:
    ms = [_m("a fp32", 4.0, 0.0), _m("b int4-weight", 1.0, 0.2, rolled=True)]
    assert [m.candidate.label for m in pareto(ms, OptimizationCriteria())] == ["a fp32"]


def test_kill_9_then_resume(tmp_path: Path, capsys) -> None:
    """A planner session killed mid-search resumes from its last finished step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from robopt_compile.store import open_store

    store = tmp_path / "store"
    out = tmp_path / "auto"
    env = {**os.environ, "ROBOPT_STORE": str(store)}
    cmd = [sys.executable, "-m", "robopt_compile.cli", "zoo:pendulum-swingup-mlp", "--target",
           "host", "--threads", "1", "-b", "onnxruntime", "--max-latency-ms", "5",
           "--max-accuracy-drop", "0.05", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    sid = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not (store / "store.db").exists():
                continue
            with open_store(str(store), create=False) as st:
                ss = st.sessions()
                if ss and ss[0].steps_done >= 2:
                    sid = ss[0].id
                    break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sid is not None, "the session never finished two steps"
    with open_store(str(store), create=False) as st:
        assert st.get_session(sid).state == "interrupted"
        done_before = [s.name for s in st.steps(sid) if s.state == "finished"]
        assert st.integrity_check() == "ok"
    assert not out.exists()
    code, stdout, err = run_cli(
        ["zoo:pendulum-swingup-mlp", "--resume", sid[:12], "--store", str(store), "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(stdout)["bundle"] == str(out) and (out / "manifest.json").is_file()
    with open_store(str(store), create=False) as st:
        rec = st.get_session(sid)
        assert rec.state == "finished"
        names = [s.name for s in st.steps(sid)]
        for n in done_before:  # what was finished before the kill was not built again
            assert names.count(n) == 1
    code, _, err = run_cli(["zoo:hopper-mlp", "--resume", sid[:12], "--store", str(store)], capsys)
    assert code == 2 and "not zoo:hopper-mlp" in err


def test_each_backends_fp32_plan_is_measured_first_and_corrects_the_rest() -> None:
    """Uncorrected, the roofline ranks int8 first; each backend's fp32 baseline is built
    first instead, and once measured it corrects that backend's other precisions."""
    cands = [Candidate(b, p) for b, ps in BACKENDS.items() for p in ps]
    order = [d.candidate.label for d in plan(cands, FACTS, OptimizationCriteria(), History())
             if d.verdict == "propose"]  # fmt: skip
    assert order[:2] == ["onnxruntime fp32", "openvino fp32"]
    assert "measured first" in plan(cands, FACTS, OptimizationCriteria(), History())[0].reason
    # The size objective needs no latency calibration: smallest first.
    by_size = plan(cands, FACTS, OptimizationCriteria(objective="size"), History())
    assert by_size[0].candidate.precision == "int4-weight"
    h = with_measurement(History(), Candidate("openvino", "fp32"), 40.0, 20.0)  # 2x the roofline
    after = {d.candidate.label: d for d in plan(cands, FACTS, OptimizationCriteria(), h)}
    assert after["openvino int8"].prediction.corrected
    assert after["openvino int8"].prediction.latency_ms == pytest.approx(5.0 * 2)
    assert not after["onnxruntime int8"].prediction.corrected
    first = plan(cands, FACTS, OptimizationCriteria(), h)[0]
    assert first.candidate.label == "onnxruntime fp32"


# --- issue 17: the planner's own defects --------------------------------------------------------


def test_facts_come_from_the_fp32_analysis_whatever_the_order() -> None:
    """The precision-independent facts (ops, support) were read from whichever analysis came
    first in a set: a bf16 or int8 one could reject every plan of a backend."""

    def analysis(unsupported: int) -> dict:
        return {"summary": {"macs": 1e6, "weight_mb": 1.0, "peak_activation_mb": 1.0,
                            "estimated_latency_ms": 1.0,
                            "unsupported_ops": {"onnxruntime": unsupported}}}  # fmt: skip

    facts = Facts.from_analysis({"bf16": analysis(12), "fp32": analysis(0)})
    assert facts.unsupported == {"onnxruntime": 0}
    decisions = plan([Candidate("onnxruntime", "fp32")], facts, OptimizationCriteria(), History())
    assert decisions[0].verdict == "propose"


def test_a_plan_says_what_was_really_built() -> None:
    from robopt_compile.plan.measure import applied_label

    c = Candidate("openvino", "bf16", 0.5)
    undone = {"compression": {"steps": [{"pass": "prune-channels", "rolled_back": True,
                                         "rollback_reason": "drop 0.12 > 0.05"}]}}  # fmt: skip
    assert applied_label(c, {"precision": "bf16"}, undone) == (
        "openvino bf16 (pruning rolled back: drop 0.12 > 0.05)"
    )
    assert applied_label(c, {"precision": "bf16"}, {}) == "openvino bf16 (pruning not applied)"
    kept = {"compression": {"steps": [{"pass": "prune-channels", "rolled_back": False}]}}
    assert applied_label(c, {"precision": "bf16"}, kept) is None
    q = Candidate("onnxruntime", "int8")
    assert applied_label(q, {"precision": "fp32"}, {}) == (
        "onnxruntime fp32 (int8 rolled back to fp32)"
    )


def test_the_table_prints_what_was_built_and_the_one_measure() -> None:
    from robopt_compile.cli.tables import format_plan
    from robopt_compile.plan.search import SearchResult

    m = Measured(Candidate("openvino", "bf16", 0.5), {"p50": 1.0, "p99": 1.2}, 0.4, None, 0.002,
                 applied="openvino bf16 (pruning rolled back: drop 0.12 > 0.05)")  # fmt: skip
    r = SearchResult([], measured=[m], accuracy_measure="task:success", stopped="done")
    text = format_plan(r, OptimizationCriteria())
    assert "built as openvino bf16 (pruning rolled back" in text
    assert text.count("task:success") == 1


def test_an_unchanged_search_neither_exports_nor_loads_the_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The second identical search takes its facts and reference data from the build cache:
    no export, no analysis, no ONNX load (loading alone imports onnx: seconds)."""
    from robopt_compile import ir
    from robopt_compile.compile import analysis

    monkeypatch.setenv("ROBOPT_STORE", str(tmp_path / "store"))
    args = ["zoo:pendulum-swingup-mlp", "--target", "host", "--threads", "1", "-b",
            "onnxruntime", "--techniques", "quantize", "--max-latency-ms", "5", "--plan-only",
            "--json"]  # fmt: skip
    code, first, err = run_cli(args, capsys)
    assert code == 0, err

    def forbidden(*a, **k):
        raise AssertionError("the unchanged search loaded or analysed the model")

    # (The exporter itself cannot be patched: its code is part of the export's cache key.)
    monkeypatch.setattr(ir, "load", forbidden)
    monkeypatch.setattr(analysis, "analyze", forbidden)
    code, second, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(second)["decisions"] == json.loads(first)["decisions"]


def test_pruned_plans_are_distilled_on_real_calibration_data_only() -> None:
    from robopt_compile.compile.compress import validate
    from robopt_compile.compile.options import CompileOptions, CompressOptions, QuantOptions
    from robopt_compile.plan.search import plan_compression

    task = CompileOptions(quant=QuantOptions(calibration="task"))
    pruned = plan_compression(Candidate("openvino", "int8", 0.5), task)
    assert pruned.prune == ("channels:0.5",) and pruned.distill == "on"
    validate(pruned, has_calibration=True)  # a valid combination for the compiler
    assert plan_compression(Candidate("openvino", "int8", 0.5), CompileOptions()).distill is None
    rnd = CompileOptions(quant=QuantOptions(calibration="random"))
    assert plan_compression(Candidate("openvino", "int8", 0.5), rnd).distill is None
    # The user's own --distill settings are kept for pruned plans, dropped for the others
    # (the compiler refuses --distill without pruning).
    mine = CompileOptions(quant=QuantOptions(calibration="task"),
                          compress=CompressOptions(distill="steps=50"))  # fmt: skip
    assert plan_compression(Candidate("openvino", "int8", 0.25), mine).distill == "steps=50"
    plain = plan_compression(Candidate("openvino", "int8"), mine)
    assert plain.distill is None and not plain.prune
    validate(plain, has_calibration=True)


@pytest.mark.parametrize("bad", ["soon", True, float("nan"), -1.0])
def test_criteria_refuse_a_bound_that_is_not_a_number(bad) -> None:
    # From JSON (the web API) a bound can be any value: one line, never a TypeError.
    with pytest.raises(InputError, match="max-latency-ms must be a number"):
        OptimizationCriteria(max_latency_ms=bad)


def test_the_search_reports_each_build_as_progress(tmp_path: Path) -> None:
    """``progress`` gets a tick as each build starts (the CLI draws a bar with an ETA from
    them on a terminal)."""
    import robopt_compile.api as robopt

    ticks: list[tuple[str, float]] = []

    def progress(stage: str, event: str, fraction: float) -> None:
        if event == "tick":
            ticks.append((stage, fraction))

    r = robopt.plan("zoo:pendulum-swingup-mlp", out=tmp_path / "o", target="host",
                    backend="onnxruntime", threads=1, store=tmp_path / "store",
                    criteria={"techniques": ()}, progress=progress)  # fmt: skip
    assert r.best is not None and len(ticks) == len(r.measured) >= 1
    assert ticks[0] == (f"plan 1/{len(r.measured)}: onnxruntime fp32", 0.0)


def test_the_arch_technique_plans_a_search_at_half_the_latency() -> None:
    from robopt_compile.compile.compress import validate
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.plan.measure import applied_label
    from robopt_compile.plan.planner import predict
    from robopt_compile.plan.search import plan_compression

    crit = OptimizationCriteria(techniques=("quantize", "arch"))
    got = candidates(["openvino"], BACKENDS, ("fp32", "int8"), crit)
    arch = [c for c in got if c.arch]
    assert [c.label for c in arch] == ["openvino fp32 + arch 0.5x", "openvino int8 + arch 0.5x"]
    assert arch[0].key() != Candidate("openvino", "fp32").key()
    full, half = (predict(c, FACTS, History()) for c in (Candidate("openvino", "fp32"), arch[0]))
    assert half.latency_ms == pytest.approx(0.5 * full.latency_ms) and half.risk > full.risk
    task = CompileOptions(quant=QuantOptions(calibration="task"))
    comp = plan_compression(arch[1], task)
    assert comp.search_arch == "latency=0.5x" and comp.distill == "on" and not comp.prune
    validate(comp, has_calibration=True)
    undone = {"compression": {"steps": [{"pass": "arch-search", "rolled_back": True,
                                         "rollback_reason": "drop 0.3 > 0.1"}]}}  # fmt: skip
    assert applied_label(arch[1], {"precision": "int8"}, undone) == (
        "openvino int8 (architecture search rolled back: drop 0.3 > 0.1)"
    )
    kept = {"compression": {"steps": [{"pass": "arch-search", "rolled_back": False}]}}
    assert applied_label(arch[1], {"precision": "int8"}, kept) is None
