"""Board profiles: one table of key facts per board, so a copy-paste error (an Orin Nano with
Xavier's CPU, a Jetson with the wrong CUDA target) fails here; plus rules every file obeys."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import fields

import onnx.parser
import onnx_ir as ir
import pytest

from robopt_compile.errors import ProfileError, UnknownNameError
from robopt_compile.hwprofiles import (
    KNOWN_BACKENDS,
    PROFILE_DIR,
    Fact,
    Figure,
    HardwareProfile,
    load_profile,
    profile_aliases,
    profile_names,
)
from robopt_compile.passes.analysis.roofline import RooflinePass
from robopt_compile.precision import COMPUTE_FORMATS, HARDWARE_FORMATS

# name, arch, cpu core, cpu cores, GPU sm, DLAs, memory GB/s, headline (vendor unit),
#   fp32 / int8 roofline peak in GOP/s (all cores), first backend, TVM mcpu
FACTS = [
    ("jetson-agx-orin-64gb", "aarch64", "cortex-a78ae", 12, "sm_87", 2, 204.8, 275,
     5324.8, 85000, "tensorrt", None),
    ("jetson-orin-nx-16gb", "aarch64", "cortex-a78ae", 8, "sm_87", 2, 102.4, 100,
     1880.064, 30000, "tensorrt", None),
    ("jetson-orin-nano-8gb", "aarch64", "cortex-a78ae", 6, "sm_87", 0, 68, 40,
     1280, 20000, "tensorrt", None),
    ("jetson-agx-xavier", "aarch64", "carmel", 8, "sm_72", 2, 136.5, 32,
     1410.048, 22560.768, "onnxruntime", None),
    ("jetson-thor", "aarch64", "neoverse-v3ae", 14, "sm_110", 0, 273, 2070,
     8064, 517500, "tensorrt", None),
    ("x86-64-avx2", "x86_64", None, 8, None, None, 51.2, None,
     768, 1536, "onnxruntime", None),
    ("x86-64-avx512", "x86_64", None, 8, None, None, 76.8, None,
     1536, 6144, "onnxruntime", None),
    ("intel-core-ultra", "x86_64", "4x lion cove (P) + 4x skymont (E)", 8, None, None, 136.5, 47,
     768, 3072, "openvino", None),
    ("raspberry-pi-5", "aarch64", "cortex-a76", 4, None, None, 17.07, None,
     153.6, 614.4, "tvm", "cortex-a76"),
    ("rk3588", "aarch64", "4x cortex-a76 + 4x cortex-a55", 8, None, None, 33.8, 6,
     307.2, 1228.8, "tvm", "cortex-a76"),
    ("generic-aarch64", "aarch64", "generic armv8-a", 4, None, None, 12.8, None,
     115.2, 230.4, "tvm", "generic"),
]  # fmt: skip

# alias -> canonical name
ALIASES = [
    ("jetson-orin-nano", "jetson-orin-nano-8gb"),
    ("jetson-orin-agx", "jetson-agx-orin-64gb"),
    ("jetson-agx-orin", "jetson-agx-orin-64gb"),
    ("jetson-orin", "jetson-agx-orin-64gb"),
    ("jetson-orin-nx", "jetson-orin-nx-16gb"),
    ("rpi5", "raspberry-pi-5"),
]

# name, power mode, memory GB/s, headline, GPU dense fp16 GFLOP/s, GPU max clock MHz
POWER_MODES = [
    ("jetson-orin-nano-8gb", "15W", 68, 40, 10000, 625),
    ("jetson-orin-nano-8gb", "25W", 102, 60.16, 15040, 918),
    ("jetson-orin-nano-8gb", "MAXN_SUPER", 102, 67, 16750, 1020),
    ("jetson-agx-orin-64gb", "MAXN", 204.8, 275, 42500, 1300),
    ("jetson-agx-orin-64gb", "50W", 204.8, 200, 27250, 1300),
    ("jetson-agx-orin-64gb", "30W", 204.8, 131, 10250, 1300),
    ("jetson-agx-orin-64gb", "15W", 204.8, 54, 3500, 1300),
]

FILES = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
ESTIMATE_WORDS = ("derived", "estimate", "assumed", "planning default")


def test_every_profile_file_is_in_the_table():
    assert sorted(row[0] for row in FACTS) == FILES, "add the new board's key facts to FACTS"
    assert profile_names() == ["host", *FILES]


@pytest.mark.parametrize("row", FACTS, ids=[r[0] for r in FACTS])
def test_key_facts(row):
    name, arch, core, cores, sm, dlas, bw, headline, fp32, int8, backend, mcpu = row
    p = load_profile(name)
    assert (p.name, p.arch, p.cpu_cores) == (name, arch, cores)
    assert (p.cpu_core.value if p.cpu_core else None) == core
    assert (p.gpu.sm.value if p.gpu and p.gpu.sm else None) == sm
    assert (p.dla_count.value if p.dla_count else None) == dlas
    assert p.memory_bandwidth_gbs.value == pytest.approx(bw)
    assert (p.headline.tops.value if p.headline else None) == headline
    assert p.peak_gops("fp32") == pytest.approx(fp32)
    assert p.peak_gops("int8") == pytest.approx(int8)
    assert p.backends[0] == backend
    target = p.backend_options.get("tvm", {}).get("target", {})
    assert target.get("mcpu") == mcpu


@pytest.mark.parametrize(("alias", "canonical"), ALIASES)
def test_aliases_resolve_to_the_canonical_profile(alias, canonical):
    p = load_profile(alias)
    assert p.name == canonical
    assert alias in p.aliases
    assert alias not in profile_names()
    assert profile_aliases()[alias] == canonical


def test_unknown_name_lists_names_and_aliases():
    with pytest.raises(UnknownNameError, match="jetson-orin-nano") as err:
        load_profile("jetson-orin-nan")
    assert "raspberry-pi-5" in str(err.value) and "rpi5" in str(err.value)


@pytest.mark.parametrize(("name", "mode", "bw", "headline", "fp16", "gpu_mhz"), POWER_MODES)
def test_power_mode_effects(name, mode, bw, headline, fp16, gpu_mhz):
    p = load_profile(name).with_power_mode(mode)
    assert p.power_mode == mode
    assert p.bandwidth_gbs() == pytest.approx(bw)
    assert p.headline.tops.value == pytest.approx(headline)
    assert p.peak_gops("fp16") == pytest.approx(fp16)
    assert p.gpu.max_clock_mhz.value == gpu_mhz


def test_orin_nano_super_raises_bandwidth_and_clocks():
    base = load_profile("jetson-orin-nano")
    assert base.power_mode == "15W"
    sup = base.with_power_mode("MAXN_SUPER")
    assert (base.bandwidth_gbs(), sup.bandwidth_gbs()) == (68, 102)
    assert (base.headline.tops.value, sup.headline.tops.value) == (40, 67)
    assert sup.cpu_clock_ghz.value == 1.728 > base.cpu_clock_ghz.value
    assert sup.cpu_peak_gops("fp32") == pytest.approx(6 * 16 * 1.728)
    assert base.with_power_mode("MAXN_SUPER").with_power_mode("15W") == base


@pytest.mark.parametrize("name", FILES)
def test_power_modes_round_trip(name):
    p = load_profile(name)
    for mode in p.power_modes:
        assert p.with_power_mode(mode.name).with_power_mode(p.power_mode) == p, mode.name


def test_unknown_power_mode_lists_the_modes():
    with pytest.raises(ProfileError, match=r"'15W', '25W', 'MAXN_SUPER'"):
        load_profile("jetson-orin-nano").with_power_mode("MAXN")
    with pytest.raises(ProfileError, match="no power modes"):
        load_profile("raspberry-pi-5").with_power_mode("MAXN")


def _figures(p: HardwareProfile) -> Iterator[tuple[str, Figure | Fact]]:
    """Every sourced number and fact of a profile, its power modes included."""
    singles = {
        "memory_gb": p.memory_gb,
        "memory_bandwidth_gbs": p.memory_bandwidth_gbs,
        "memory_bandwidth_per_core_gbs": p.memory_bandwidth_per_core_gbs,
        "cpu_core": p.cpu_core,
        "cpu_clock_ghz": p.cpu_clock_ghz,
        "dla_count": p.dla_count,
        "headline": p.headline.tops if p.headline else None,
    }
    if p.gpu:
        singles.update({f"gpu.{f.name}": getattr(p.gpu, f.name) for f in fields(p.gpu)})
    if p.npu:
        singles["npu.int8_tops"] = p.npu.int8_tops
    yield from ((k, v) for k, v in singles.items() if isinstance(v, Figure | Fact))
    for table in ("compute_gops", "cpu_core_gops", "dla_gops"):
        for k, v in getattr(p, table).items():
            yield f"{table}.{k}", v
    for m in p.power_modes:
        for k in ("watts", "memory_bandwidth_gbs", "gpu_clock_mhz", "cpu_clock_ghz",
                  "headline_tops"):  # fmt: skip
            if getattr(m, k) is not None:
                yield f"{m.name}.{k}", getattr(m, k)
        for table in ("compute_gops", "cpu_core_gops", "dla_gops"):
            for k, v in getattr(m, table).items():
                yield f"{m.name}.{table}.{k}", v


@pytest.mark.parametrize("name", FILES)
def test_every_figure_is_sourced_and_estimates_say_how(name):
    p = load_profile(name)
    figs = list(_figures(p))
    assert len(figs) >= 5
    for where, fig in figs:
        src = fig.source.lower()
        assert len(src) > 20, f"{name} {where}: figure without a real source: {fig}"
        assert not re.search(r"\[[A-Z][A-Z0-9]*\]", fig.source), f"{where}: unexpanded citation"
        says_derived = src.lstrip("[").startswith(ESTIMATE_WORDS)
        if fig.estimate:
            assert says_derived, f"{name} {where}: an estimate must say how: {fig.source!r}"
        else:
            assert not says_derived, f"{name} {where}: derived but not marked estimate"
    assert p.cpu_source, f"{name}: [cpu] needs a `source` for cores and isa"


@pytest.mark.parametrize("name", FILES)
def test_backends_precisions_and_options_are_consistent(name):
    p = load_profile(name)
    assert set(p.backends) <= set(KNOWN_BACKENDS)
    assert set(p.precisions) <= set(HARDWARE_FORMATS)
    assert set(p.backend_options) <= set(p.backends)
    if p.npu:
        assert set(p.npu.backends) <= set(p.backends)
    trt = p.backend_options.get("tensorrt")
    if "tensorrt" in p.backends:
        assert trt["sm"] == p.gpu.sm.value
        assert trt["dla_cores"] == p.dla_count.value
        assert p.compute_scope == "device"
        assert p.gpu.sparse_tensor_cores.value == ("int8_sparse" in p.compute_gops or
                                                   "fp4_sparse" in p.compute_gops)  # fmt: skip
    if "tvm" in p.backends:
        tvm_opts = p.backend_options["tvm"]
        assert tvm_opts["target"]["kind"] == "llvm"
        assert tvm_opts["target"]["num-cores"] <= p.cpu_cores
        assert (tvm_opts["cross_compiler"], tvm_opts["debian_package"]) == (
            "aarch64-linux-gnu-g++",
            "g++-aarch64-linux-gnu",
        )


@pytest.mark.parametrize("name", [r[0] for r in FACTS if r[-1]])
def test_tvm_target_is_valid_for_tvm(name):
    tvm = pytest.importorskip("tvm", reason="apache-tvm not installed")
    from tvm.target import codegen

    target = tvm.target.Target(load_profile(name).backend_options["tvm"]["target"])
    mcpu = target.attrs["mcpu"]
    assert mcpu in codegen.llvm_get_cpu_archlist(target), f"LLVM does not know {mcpu}"


TINY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,64] x) => (float[1,16] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _tiny_model() -> ir.Model:
    import numpy as np

    proto = onnx.parser.parse_model(TINY)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (64, 32)), ("w2", (32, 16))):
        arr = rng.standard_normal(shape).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("name", ["host", *FILES])
def test_roofline_runs_on_every_profile_and_mode(name):
    base = load_profile(name)
    for p in [base, *(base.with_power_mode(m.name) for m in base.power_modes)]:
        # The roofline takes robopt's precisions; fp8/fp4 are hardware-only for now.
        for precision in [q for q in p.precisions if q in COMPUTE_FORMATS]:
            rp = RooflinePass(p, precision=precision, threads=p.cpu_cores)
            result = rp(_tiny_model())
            facts = rp.facts
            assert result.modified is False
            assert facts["complete"] is True
            assert facts["peak_gops"] == pytest.approx(p.peak_gops(precision, p.cpu_cores))
            assert 0 < facts["latency_ms"] < math.inf, (name, p.power_mode, precision)


@pytest.mark.parametrize(
    ("name", "saturates"),
    [("x86-64-avx2", True), ("x86-64-avx512", False), ("intel-core-ultra", False),
     ("jetson-orin-nano-8gb", False), ("raspberry-pi-5", False)],
)  # fmt: skip
def test_int8_saturates_on_x86_without_vnni(name: str, saturates: bool) -> None:
    assert load_profile(name).int8_saturates is saturates


def test_host_int8_saturation_agrees_with_the_detected_profile() -> None:
    from robopt_compile.hwprofiles.host import detect_host, host_int8_saturates

    assert host_int8_saturates() is detect_host().int8_saturates
