"""The archsearch section's report names the FLOPs FastNAS was given: this search's, or an
earlier search's when its bundle was built ahead."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from benchmarks.archsearch import report_lines

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "bench_results.json"


def _fastnas_line(m: dict) -> str:
    return next(line for line in report_lines(m) if line.startswith("FastNAS ("))


def test_fastnas_constraint_says_whose_flops_it_was() -> None:
    m = copy.deepcopy(json.loads(RESULTS.read_text())["archsearch"])
    t = m["search"]["totals"]
    m["fastnas"]["flops_ratio"] = t["macs_after"] / t["macs_before"]
    assert "of the original: the searched sub-network's;" in _fastnas_line(m)
    m["fastnas"]["flops_ratio"] -= 0.1
    assert "an earlier search's sub-network (built ahead); this search's is" in _fastnas_line(m)


def test_a_prebuilt_bundle_is_reused_only_when_distilled_as_asked() -> None:
    """``--archsearch-prebuilt`` must not measure a bundle another --distill recovered."""
    from benchmarks.archsearch import DISTILL, _distilled_as

    report = {"steps": 600, "lr": 3e-4, "batch_size": 16, "loss": "mse",
              "onpolicy": {"rounds": [{}] * 5, "episodes_per_round": 32}}  # fmt: skip
    assert DISTILL == "steps=600,batch=16,lr=3e-4,onpolicy=5,episodes=32"
    assert _distilled_as(report, DISTILL)
    assert not _distilled_as(report, "steps=250,batch=16,lr=3e-4,onpolicy=5,episodes=32")
    assert not _distilled_as(report, "steps=600,batch=16,lr=3e-4,onpolicy=3,episodes=32")
    assert not _distilled_as(report, "steps=600,batch=16,lr=3e-4,onpolicy=5,episodes=24")
    assert not _distilled_as({}, DISTILL)  # not distilled at all
    # Fitted to a time budget: the steps asked are compared, and the uniform row's time.
    fitted = {
        **report,
        "steps": 212,
        "time_budget": {"seconds": 1080.0, "steps_asked": 600, "steps_per_call": [212]},
    }
    assert _distilled_as(fitted, DISTILL)
    assert _distilled_as(fitted, DISTILL + ",time=1080s")
    assert not _distilled_as(fitted, DISTILL + ",time=900s")
    assert not _distilled_as(report, DISTILL + ",time=1080s")  # built without a budget


def test_the_searched_build_is_budgeted_and_the_uniform_row_gets_its_recovery_time() -> None:
    """The searched compile runs under SEARCH_BUDGET (search + recovery); the uniform
    row's distillation is given the time the searched recovery had."""
    from benchmarks.archsearch import SEARCH, SEARCH_BUDGET, _options, recovery_seconds

    searched = _options(search_arch=SEARCH).compress
    assert SEARCH_BUDGET == "27m" and searched.search_budget_s == 27 * 60.0
    uniform = _options(prune=("channels:0.4",), distill="steps=5,time=60s").compress
    assert uniform.search_budget_s is None and uniform.distill == "steps=5,time=60s"
    step = {"distillation": {"time_budget": {"seconds": 1043.2}}}
    assert recovery_seconds(step) == 1043.2 and recovery_seconds({}) is None


def test_uniform_ratio_is_timed_beside_the_searched_network() -> None:
    """The searched network and every uniform ratio go to ONE interleaved timing, and the
    ratio closest to the searched network's time in it is picked; the sessions run."""
    from benchmarks.archsearch import RATIOS, uniform_ratio
    from benchmarks.run import interleaved_median_ms
    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.passes.prune.channels import ChannelPrunePass

    src = load_source("zoo:visuomotor-cnn")
    searched = rir.clone(src.model)
    ChannelPrunePass(0.3)(searched)
    calls: list[list[str]] = []
    fake = {"searched": 10.0, **{str(r): 20.0 - 25 * r for r in RATIOS}}  # 0.4 -> 10 ms

    def timer(fns: dict, rounds: int, per_round: int) -> dict[str, float]:
        calls.append(list(fns))
        interleaved_median_ms(fns, 1, 1, warmup=0)  # every session really runs
        return dict(fake)

    got = uniform_ratio(src.model, searched, src.reference_inputs, timer=timer)
    assert calls == [["searched", *map(str, RATIOS)]]  # one timing, all of them together
    assert got["ratio"] == 0.4 and got["target_ms"] == 10.0 and "interleaved" in got["timing"]
    assert got["measured_ms"] == {r: 20.0 - 25 * r for r in RATIOS}


def test_the_int8_row_is_labelled_by_what_its_bundle_kept() -> None:
    """A robopt int8 build whose guard rolled every layer back is an fp32 engine: its row
    (and the speed claim) must not say int8, as the fourth run's did."""
    from benchmarks.archsearch import _precision_built

    rolled = {"quantization": {"rolled_back": True, "mixed_precision": {"met": False}}}
    assert _precision_built(rolled) == "fp32 (int8 rolled back)"
    mixed = {"quantization": {"mixed_precision": {"met": True, "fp32_nodes": ["a", "b"]}}}
    assert _precision_built(mixed) == "int8 (2 layers fp32)"
    assert _precision_built({"quantization": {"requested_precision": "int8"}}) == "int8"
    m = copy.deepcopy(json.loads(RESULTS.read_text())["archsearch"])
    ours = next(e for e in m["engines"] if "robopt OpenVINO" in e["label"])
    ours["label"] = "searched + distillation, robopt OpenVINO fp32 (int8 rolled back)"
    claim = next(line for line in report_lines(m) if line.startswith("The speed claim"))
    assert "(OpenVINO fp32 (int8 rolled back), held-out bound" in claim
