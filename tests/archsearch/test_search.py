"""``--search-arch`` (issue 21): the search under a latency budget, its candidates kept in the
store (a rerun or ``--resume`` after ``kill -9`` scores nothing it had finished), the budget
and the refusals, and the compile that distils and builds the chosen sub-network."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_error_line, cache_entries, kill_when, run_cli
from test_archspace import TinyResNet

from robopt_compile.archsearch.search import parse_arch_spec, search_arch
from robopt_compile.errors import InputError
from robopt_compile.numerics import run_onnx


@pytest.fixture(scope="module")
def model():
    from robopt_compile.compile.frontend import ModuleSource, load_source

    torch.manual_seed(0)
    src = ModuleSource(TinyResNet().eval(), (torch.randn(1, 3, 16, 16),), "tiny-resnet")
    return load_source(src).model


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(24)]


@pytest.fixture
def cache(tmp_path):
    from robopt_compile.store.cache import BuildCache
    from robopt_compile.store.store import open_store

    c = BuildCache(open_store(str(tmp_path / "store")))
    yield c
    c.close()


def test_specs_parse_and_bad_ones_are_one_line():
    s = parse_arch_spec("latency=0.5x,tune=10,finalists=2")
    assert (s.ratio, s.ms, s.tune, s.finalists) == (0.5, None, 10, 2)
    assert parse_arch_spec("latency-ms=3").budget_ms(10.0) == 3.0
    assert parse_arch_spec("latency=0.25").budget_ms(8.0) == 2.0
    for bad, why in (
        ("", "needs one budget"),
        ("latency=2x", "0 < R < 1"),
        ("latency=0.5x,latency-ms=3", "needs one budget"),
        ("speed=2", "is not one of"),
        ("latency=fast", "not a number"),
        ("latency-ms=3,finalists=0", "out of range"),
    ):
        with pytest.raises(InputError, match=why):
            parse_arch_spec(bad)


def test_search_meets_the_budget_and_a_rerun_scores_nothing_again(model, samples, cache):
    spec = parse_arch_spec("latency=0.6x,tune=4,finalists=2")
    first = search_arch(model, spec, samples, 1, cache=cache)
    r = first.report
    assert r["steps"] and r["candidates"]["scored"] > len(r["steps"])
    assert any(s["refined"] for s in r["steps"])  # the shortlist was distilled and rescored
    chosen = r["chosen"]
    assert chosen["predicted_ms"] <= r["budget_ms"] and chosen["measured_ms"] > 0
    assert 1 <= len(r["finalists"]) <= 2 and any(f["pareto"] for f in r["finalists"])
    assert r["finalists_by"] == "relative L2" and r["finalists"][0] == chosen
    assert run_onnx(first.model, samples[0])["action"].shape == (1, 4)
    assert r["totals"]["macs_after"] < r["totals"]["macs_before"]
    again = search_arch(model, spec, samples, 1, cache=cache)
    assert again.report["candidates"]["scored"] == 0  # every candidate came from the store
    assert again.report["candidates"]["from_store"] == r["candidates"]["scored"]
    assert again.report["steps"] == r["steps"]
    assert again.report["chosen"]["widths"] == chosen["widths"]


def test_a_chosen_network_measured_over_the_budget_is_said(model, samples, monkeypatch):
    """The finalists are picked by the table; when, after the retargets, the chosen one still
    times whole over the budget (here every finalist times 50% over it), it is reported, with
    the budget that asks for the difference."""
    from robopt_compile.archsearch import finalists as fin

    real = fin.measure_finalists
    slow = lambda result, run: [  # noqa: E731
        {**r, "measured_ms": run.budget_ms * 1.5} for r in real(result, run)
    ]
    monkeypatch.setattr(fin, "measure_finalists", slow)
    notes: list[str] = []
    spec = parse_arch_spec("latency=0.6x,tune=0,finalists=1")
    out = search_arch(model, spec, samples, 1, progress=lambda m, kind, x: notes.append(m))
    chosen, budget = out.report["chosen"], out.report["budget_ms"]
    assert chosen["over_budget"] == pytest.approx(chosen["measured_ms"] / budget - 1, abs=1e-4)
    assert chosen["over_budget"] > 0 and out.report["finalists"][0] == chosen
    assert "over the budget of" in notes[-1] and "latency-ms=" in notes[-1]
    assert 1 <= len(out.report["retargets"]) <= fin.RETARGETS  # it tried to go further
    monkeypatch.undo()
    plain = search_arch(model, spec, samples, 1).report
    fine = plain["chosen"]
    assert ("over_budget" in fine) == (fine["measured_ms"] > plain["budget_ms"])  # only a miss


def test_finalists_all_over_the_budget_take_the_search_further(model, samples, monkeypatch):
    """When every finalist times whole over the budget (here the first ones time 10% over,
    later ones as the table predicts), NetAdapt goes on from where it stopped to the aim the
    measured ratio gives, and the winner is one that times within the budget."""
    from robopt_compile.archsearch import finalists as fin

    real, calls = fin.measure_finalists, []

    def timed(result, run):
        calls.append(len(result.steps))
        over = len(calls) == 1
        return [{**r, "measured_ms": run.budget_ms * 1.1 if over else r["predicted_ms"]}
                for r in real(result, run)]  # fmt: skip

    monkeypatch.setattr(fin, "measure_finalists", timed)
    r = search_arch(model, parse_arch_spec("latency=0.6x,tune=0,finalists=2"), samples, 1).report
    budget, chosen = r["budget_ms"], r["chosen"]
    (aimed,) = r["retargets"]
    assert len(calls) == 2 and aimed["after_step"] == calls[0] < calls[1] == len(r["steps"])
    assert aimed["aim_ms"] < budget and chosen["predicted_ms"] <= aimed["aim_ms"]
    assert chosen["measured_ms"] <= budget and "over_budget" not in chosen
    assert r["finalists"][0] == chosen and r["finalists"][-1]["measured_ms"] > budget
    from robopt_compile.report.plots import Plots
    from robopt_compile.report.sections_compress import _arch_search

    assert f"after step {calls[0]}: the table aimed at" in _arch_search(r, Plots())


def test_budget_out_of_reach_met_already_or_out_of_time_are_one_line(model, samples, cache):
    with pytest.raises(InputError, match="out of reach: the smallest sub-network"):
        search_arch(model, parse_arch_spec("latency-ms=0.0001"), samples, 1, cache=cache)
    with pytest.raises(InputError, match=r"already runs in .* nothing to search"):
        search_arch(model, parse_arch_spec("latency-ms=1000"), samples, 1, cache=cache)
    with pytest.raises(InputError, match=r"--search-budget ran out .* --resume SESSION"):
        search_arch(
            model, parse_arch_spec("latency=0.3x,tune=4"), samples, 1, cache=cache, budget_s=0.5
        )


def test_a_model_with_nothing_to_search_names_why(samples):
    from robopt_compile.compile.frontend import ModuleSource, load_source

    tiny = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(768, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)
    )
    m = load_source(ModuleSource(tiny.eval(), (torch.randn(1, 3, 16, 16),), "mlp")).model
    with pytest.raises(InputError, match="no channel group or residual block to search"):
        search_arch(m, parse_arch_spec("latency=0.5x"), samples, 1)


def _candidates(store: Path) -> int:
    return cache_entries(store, "arch-candidate")


def test_cli_search_killed_then_resumed_and_bad_input(model, tmp_path, capsys, monkeypatch):
    from robopt_compile import ir as rir

    src = tmp_path / "tiny.onnx"
    rir.save(model, src)
    store = tmp_path / "store"
    monkeypatch.setenv("ROBOPT_STORE", str(store))
    args = [
        str(src),
        "--search-arch",
        "latency=0.5x,tune=20",
        "--distill",
        "steps=20",
        "--threads",
        "1",
        "-o",
        str(tmp_path / "out"),
    ]
    kill_when(args, lambda: _candidates(store) >= 6, tmp_path / "child.err", timeout=300)
    recorded = _candidates(store)
    assert not (tmp_path / "out").exists()
    with sqlite3.connect(store / "store.db") as c:
        (session,) = c.execute("SELECT id FROM sessions").fetchone()
    code, _, err = run_cli([str(src), "--resume", session, "--json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    step = report["compression"]["steps"][0]
    assert step["pass"] == "arch-search" and "distillation" in step
    search = step["report"]
    assert search["candidates"]["from_store"] >= recorded  # each one recorded was finished
    assert search["chosen"]["predicted_ms"] <= search["budget_ms"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Architecture search (--search-arch)" in html and "latency vs error" in html
    # an unreachable budget: one line naming the smallest reachable latency, exit 2
    code, _, err = run_cli(
        [str(src), "--search-arch", "latency-ms=0.00001", "-o", str(tmp_path / "x")], capsys
    )
    assert code == 2 and "the smallest sub-network of this space is predicted at" in err
    assert_one_error_line(err)
    code, _, err = run_cli(
        [
            str(src),
            "--search-arch",
            "latency=0.5x",
            "--prune",
            "channels:0.5",
            "-o",
            str(tmp_path / "y"),
        ],
        capsys,
    )
    assert code == 2 and "--search-arch chooses every layer's width" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_search_budget_covers_the_recovery(model, tmp_path, capsys, monkeypatch):
    """``--search-budget`` with ``--search-arch`` and ``--distill``: the recovery gets what
    the search left of it, its steps fitted (far fewer than the million asked). The search
    is kept small (tune=0: ~1 s alone, ~5x that beside the suite) so 20 s holds it."""
    import time

    from robopt_compile import ir as rir

    src = tmp_path / "tiny.onnx"
    rir.save(model, src)
    monkeypatch.setenv("ROBOPT_STORE", str(tmp_path / "store"))
    t0 = time.perf_counter()
    code, _, err = run_cli(
        [str(src), "--search-arch", "latency=0.5x,tune=0,finalists=1", "--distill",
         "steps=1000000", "--search-budget", "20s", "--threads", "1", "--json", "-o",
         str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    took = time.perf_counter() - t0
    assert code == 0, err
    step = json.loads((tmp_path / "out" / "report.json").read_text())["compression"]["steps"][0]
    fitted = step["distillation"]["fitted"]
    searched = step["report"]["seconds"]
    assert fitted["steps_asked"] == 1_000_000 and step["distillation"]["steps"] < 1_000_000
    assert 0 < fitted["seconds"] <= 20.0 - searched + 0.5  # what the search left, no more
    assert searched + step["distillation"]["seconds"] < 20.0 + 5.0 and took < 120.0
