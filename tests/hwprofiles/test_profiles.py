"""Hardware profile loader: thread scaling, host detection, and the errors bad files get.

The per-board facts are pinned in test_profile_facts.py."""

from __future__ import annotations

import pytest

from robopt_compile.errors import ProfileError, UnknownNameError
from robopt_compile.hwprofiles import (
    load_profile,
    load_profile_file,
    parse_profile,
    profile_names,
)


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
        (lambda d: d["compute"].update(fp3={"value": 1, "source": "x"}), "not a precision"),
        (lambda d: d["compute"]["fp32"].update(estimate="yes"), "estimate"),
        (lambda d: d["memory"]["size_gb"].update(source="see [XYZ] p.3"), r"cites \['XYZ'\]"),
        (lambda d: d.update(backend_options={"rknn": {}}), "unknown backend"),
        (lambda d: d.update(dla_count={"value": -1, "source": "datasheet"}), "dla_count"),
        (lambda d: d.update(dla_count={"value": 2}), "source"),
        (lambda d: d.update(gpu={"sm": {"value": "sm_87", "source": "x"}}), "arch"),
        (
            lambda d: d.update(gpu={"arch": {"value": "ampere", "source": "x"}, "cores": 1}),
            "unknown key",
        ),
        (
            lambda d: d.update(
                npu={"name": "n", "int8_tops": {"value": 6, "source": "x"}, "backends": ["rknn"]}
            ),
            "unknown backend",
        ),
        (lambda d: d["cpu"].update(compute={"fp32": {"value": 1, "source": "x"}}), "per-core"),
        (lambda d: d.update(aliases=["my-board"]), "own name"),
        (lambda d: d.update(default_power_mode="MAXN"), "without any"),
        (lambda d: d.update(power_modes=[{"name": "A"}], default_power_mode="B"), "one of"),
        (
            lambda d: d.update(power_modes=[{"name": "A"}, {"name": "A"}], default_power_mode="A"),
            "repeat",
        ),
        (
            lambda d: d.update(
                power_modes=[
                    {"name": "A", "memory_bandwidth_gbs": {"value": 17, "source": "x"}},
                    {"name": "B", "memory_bandwidth_gbs": {"value": 9, "source": "x"}},
                ],
                default_power_mode="B",
            ),
            "mode 'B' says memory_bandwidth_gbs = 9",
        ),
        (
            lambda d: d.update(
                power_modes=[
                    {"name": "A"},
                    {"name": "B", "gpu_clock_mhz": {"value": 9, "source": "x"}},
                ],
                default_power_mode="A",
            ),
            "no such top-level figure",
        ),
        (
            lambda d: d.update(
                power_modes=[
                    {"name": "A"},
                    {"name": "B"},
                    {"name": "C", "memory_bandwidth_gbs": {"value": 9, "source": "x"}},
                ],
                default_power_mode="A",
            ),
            "mode 'B' must set `memory_bandwidth_gbs`",
        ),
        (
            lambda d: d.update(
                power_modes=[
                    {"name": "A"},
                    {"name": "B", "compute": {"int8": {"value": 9, "source": "x"}}},
                ],
                default_power_mode="A",
            ),
            "every compute_gops entry",
        ),
        (
            lambda d: d.update(
                backend_options={
                    "openvino": {"device": "AUTO:GPU,CPU", "devices": ["NPU", "GPU", "CPU"]}
                }
            ),
            "disagree",
        ),
        (lambda d: d.update(backend_options={"tvm": {"target": {"mcpu": "cortex-a76"}}}), "kind"),
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


def test_citations_expand_from_the_sources_table():
    d = _valid()
    d["sources"] = {"TRM": "Arm Cortex-A76 TRM, https://developer.arm.com/documentation/100798"}
    d["compute"]["fp32"]["source"] = "[TRM] 2 FMA pipes"
    p = parse_profile(d, "board.toml")
    assert p.compute_gops["fp32"].source == (
        "[TRM: Arm Cortex-A76 TRM, https://developer.arm.com/documentation/100798] 2 FMA pipes"
    )


def test_alias_clash_is_refused(tmp_path, monkeypatch):
    import robopt_compile.hwprofiles as hw

    body = (
        'schema = 1\nname = "{n}"\naliases = ["{a}"]\narch = "aarch64"\nbackends = ["tvm"]\n'
        'precisions = ["fp32"]\n[cpu]\ncores = 4\n[memory]\n'
        'size_gb = {{ value = 8, source = "datasheet" }}\n'
        'bandwidth_gbs = {{ value = 17, source = "datasheet" }}\n'
        '[compute]\nscope = "core"\nfp32 = {{ value = 19.2, source = "ARM TRM" }}\n'
    )
    (tmp_path / "board-a.toml").write_text(body.format(n="board-a", a="b"))
    (tmp_path / "board-b.toml").write_text(body.format(n="board-b", a="x"))
    monkeypatch.setattr(hw, "PROFILE_DIR", tmp_path)
    assert hw.load_profile("x").name == "board-b"
    (tmp_path / "board-b.toml").write_text(body.format(n="board-b", a="board-a"))
    with pytest.raises(ProfileError, match="already taken by 'board-a'"):
        hw.load_profile("nope")
    (tmp_path / "board-c.toml").write_text(body.format(n="board-x", a="c"))
    with pytest.raises(ProfileError, match="must match the file name"):
        hw.load_profile("board-c")


def test_host_bandwidth_is_measured_once_per_boot(tmp_path, monkeypatch):
    """The copy bandwidth is kept per boot and CPU in the store folder: every compile in a
    boot analyses with the same figure (and the build cache's bundle key stays stable)."""
    from robopt_compile.hwprofiles import host

    monkeypatch.setenv("ROBOPT_STORE", str(tmp_path / "store"))
    calls = []
    monkeypatch.setattr(host, "measure_copy_bandwidth_gbs", lambda: calls.append(1) or 12.5)
    monkeypatch.setattr(host, "_boot_id", lambda: "boot-a")
    first = host.host_bandwidth("cpu|2|x86_64")
    again = host.host_bandwidth("cpu|2|x86_64")
    assert first == again and first[0] == 12.5 and len(calls) == 1
    assert "(once per boot)" in first[1]
    host.host_bandwidth("other cpu|2|x86_64")  # another CPU: measured
    monkeypatch.setattr(host, "_boot_id", lambda: "boot-b")
    host.host_bandwidth("other cpu|2|x86_64")  # a reboot: measured
    assert len(calls) == 3
    monkeypatch.setattr(host, "_boot_id", lambda: None)  # no boot id: measured every time
    host.host_bandwidth("other cpu|2|x86_64")
    host.host_bandwidth("other cpu|2|x86_64")
    assert len(calls) == 5
