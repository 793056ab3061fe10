"""Hardware profiles: key facts pinned per board (a copy-paste error fails here), loader errors."""

from __future__ import annotations

import pytest

from robopt_compile.errors import ProfileError, UnknownNameError
from robopt_compile.hwprofiles import (
    PROFILE_DIR,
    load_profile,
    load_profile_file,
    parse_profile,
    profile_names,
)

# name -> (arch, cores, fp32 GOP/s per core, int8 GOP/s per core, DRAM GB/s, default backend)
PINNED = {
    "x86-64-avx512": ("x86_64", 8, 192.0, 768.0, 76.8, "onnxruntime"),
}


def test_every_profile_file_is_pinned():
    files = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
    assert files == sorted(PINNED), "add the new board's key facts to PINNED"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_facts(name):
    arch, cores, fp32, int8, bw, backend = PINNED[name]
    p = load_profile(name)
    assert p.name == name
    assert (p.arch, p.cpu_cores) == (arch, cores)
    assert p.compute_gops["fp32"].value == fp32
    assert p.compute_gops["int8"].value == int8
    assert p.memory_bandwidth_gbs.value == bw
    assert p.backends[0] == backend
    for fig in [*p.compute_gops.values(), p.memory_gb, p.memory_bandwidth_gbs]:
        assert len(fig.source) > 20, f"{name}: figure without a real source: {fig}"


def test_peaks_scale_with_threads_and_cap_at_cores():
    p = load_profile("x86-64-avx512")
    assert p.peak_gops("fp32", 1) == 192.0
    assert p.peak_gops("fp32", 4) == 4 * 192.0
    assert p.peak_gops("fp32", 64) == 8 * 192.0
    assert p.bandwidth_gbs(1) == 20.0
    assert p.bandwidth_gbs(8) == 76.8  # capped by the device figure


def test_host_is_detected_from_this_machine():
    import os

    h = load_profile("host")
    assert h.path == "detected"
    assert h.cpu_cores == len(os.sched_getaffinity(0))
    assert h.compute_gops["fp32"].estimate is True
    assert h.memory_bandwidth_per_core_gbs is not None
    assert h.memory_bandwidth_per_core_gbs.value > 0.5  # measured, GB/s
    assert "measured" in h.memory_bandwidth_per_core_gbs.source
    assert "onnxruntime" in h.backends
    assert "host" in profile_names()


def test_unknown_profile_suggests():
    with pytest.raises(UnknownNameError, match="x86-64-avx512"):
        load_profile("x86-64-avx51")


def _valid() -> dict:
    return {
        "schema": 1,
        "name": "my-board",
        "arch": "aarch64",
        "backends": ["onnxruntime"],
        "precisions": ["fp32"],
        "cpu": {"cores": 4},
        "memory": {
            "size_gb": {"value": 8, "source": "vendor datasheet"},
            "bandwidth_gbs": {"value": 17, "source": "vendor datasheet"},
        },
        "compute": {"scope": "core", "fp32": {"value": 19.2, "source": "ARM TRM"}},
    }


def test_user_profile_file_loads(tmp_path):
    f = tmp_path / "board.toml"
    f.write_text(
        'schema = 1\nname = "my-board"\narch = "aarch64"\nbackends = ["onnxruntime"]\n'
        'precisions = ["fp32"]\n[cpu]\ncores = 4\n[memory]\n'
        'size_gb = { value = 8, source = "datasheet" }\n'
        'bandwidth_gbs = { value = 17, source = "datasheet" }\n'
        '[compute]\nscope = "core"\nfp32 = { value = 19.2, source = "ARM TRM" }\n'
    )
    p = load_profile_file(f)
    assert p.name == "my-board" and p.peak_gops("fp32", 2) == pytest.approx(38.4)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("schema"), "schema"),
        (lambda d: d.update(arch="mips"), "arch"),
        (lambda d: d["memory"]["size_gb"].pop("source"), "source"),
        (lambda d: d["memory"]["size_gb"].update(value=-1), "positive"),
        (lambda d: d["compute"].pop("fp32"), "fp32 peak"),
        (lambda d: d.update(backends=["tensorflow"]), "unknown backend"),
        (lambda d: d.update(precisions=["int8"]), "precisions"),
        (lambda d: d["cpu"].update(cores=0), "cores"),
        (lambda d: d.pop("memory"), "memory"),
        (lambda d: d["compute"]["fp32"].update(typo=1), "unknown key"),
    ],
)
def test_bad_profiles_are_refused_with_the_key(mutate, needle):
    d = _valid()
    mutate(d)
    with pytest.raises(ProfileError, match=needle):
        parse_profile(d, "board.toml")


def test_bad_toml(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text("name = [unclosed")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile_file(f)
    with pytest.raises(ProfileError, match="not found"):
        load_profile_file(tmp_path / "missing.toml")
