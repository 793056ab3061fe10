"""A bundle cannot make robopt-bench open a file outside it (issue 15, defects 1 and 9c).

Every path a loader opens (the engine config's ``model``, a deferred build's ``recipe``, the
engine and reference files) is a listed, hashed file of the bundle, reached without a symbolic
link; anything else is one line, exit 2, before any runtime is imported or touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from robopt_compile.bench import harness
from robopt_compile.bench.cli import main
from robopt_compile.errors import InputError
from robopt_compile.paths import member
from robopt_compile.targets import Artifact

ENGINE = "model.ort-opt.onnx"


def _set_model(b: Path, model: str) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["engine"]["config"]["model"] = model
    (b / "manifest.json").write_text(json.dumps(m))


def _absolute(b: Path, outside: Path) -> None:
    _set_model(b, str(outside / ENGINE))


def _dotdot(b: Path, outside: Path) -> None:
    _set_model(b, f"../{outside.name}/{ENGINE}")


def _unlisted(b: Path, outside: Path) -> None:
    shutil.copy(b / "engine" / ENGINE, b / "engine" / "other.onnx")
    _set_model(b, "other.onnx")


def _unhashed(b: Path, outside: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    del m["files"][f"engine/{ENGINE}"]
    (b / "manifest.json").write_text(json.dumps(m))


def _linked_file(b: Path, outside: Path) -> None:
    (b / "engine" / ENGINE).unlink()
    (b / "engine" / ENGINE).symlink_to(outside / ENGINE)  # the same bytes: the hash holds


def _linked_dir(b: Path, outside: Path) -> None:
    shutil.rmtree(b / "engine")
    (b / "engine").symlink_to(outside, target_is_directory=True)


CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "absolute": (_absolute, "engine.config.model '/"),
    "dotdot": (_dotdot, "engine.config.model '../"),
    "unlisted": (_unlisted, "engine.config.model 'other.onnx' is not one of"),
    "unhashed": (_unhashed, f"'engine/{ENGINE}' is not hashed"),
    "linked-file": (_linked_file, f"'engine/{ENGINE}' is a symbolic link"),
    "linked-dir": (_linked_dir, "'engine' is a symbolic link"),
}


def _bad_bundle(ort_bundle: Path, where: Path, case: str) -> Path:
    """A copy of the compiled bundle broken as ``case`` says, with a working engine outside."""
    outside = where / "outside"
    shutil.copytree(ort_bundle / "engine", outside)
    b = Path(shutil.copytree(ort_bundle, where / "bundle"))
    CASES[case][0](b, outside)
    return b


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the harness goes as far as a backend or the engine folder."""

    def touched(*args: object, **kw: object) -> None:
        raise AssertionError("a runtime was touched before the bundle was refused")

    monkeypatch.setattr(harness, "get_backend", touched)
    monkeypatch.setattr(harness, "materialize_engine", touched)


# Hashing is what --no-verify skips: an unhashed file is refused with verification only.
CLI_CASES = [(c, v) for c in CASES for v in ([], ["--no-verify"]) if c != "unhashed" or not v]


@pytest.mark.parametrize(("case", "verify"), CLI_CASES)
def test_cli_refuses_in_one_line_before_any_runtime(
    ort_bundle: Path, tmp_path: Path, case: str, verify: list[str], no_runtime: None
) -> None:
    b = _bad_bundle(ort_bundle, tmp_path, case)
    r = CliRunner().invoke(main, [str(b), "--runs", "2", "--warmup", "0", *verify])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robopt-bench: error: "), r.stderr
    assert CASES[case][1] in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""


def test_no_runtime_is_imported_and_a_good_bundle_still_runs(
    ort_bundle: Path, tmp_path: Path
) -> None:
    """In a fresh process (as on the robot): each refusal leaves onnxruntime unimported."""
    bad = [str(_bad_bundle(ort_bundle, tmp_path / c, c)) for c in CASES]
    code = f"""
import sys
from robopt_compile.bench.cli import main
for b in {bad!r}:
    try:
        main([b, "--runs", "1", "--warmup", "0"], standalone_mode=False)
    except SystemExit as exc:
        assert exc.code == 2, (b, exc.code)
    else:
        raise AssertionError(b + " ran")
    assert "onnxruntime" not in sys.modules, b
try:
    main([{str(ort_bundle)!r}, "--runs", "2", "--warmup", "0", "--json"], standalone_mode=False)
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
assert "onnxruntime" in sys.modules
print("OK")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stderr[-2000:]
    assert p.stderr.count("robopt-bench: error: ") == len(CASES), p.stderr


def test_overhead_and_layer_profile_refuse_too(ort_bundle: Path, tmp_path: Path) -> None:
    from robopt_compile.report.layers import profile_layers

    b = _bad_bundle(ort_bundle, tmp_path, "linked-file")
    with pytest.raises(InputError, match="is a symbolic link"):
        harness.measure_overhead(b, runs=2, warmup=0, verify=False)
    with pytest.raises(InputError, match="is a symbolic link"):
        profile_layers(b, runs=1, warmup=0)


# --- the runners themselves (also used at compile time, on freshly built engines) ------------


def _runners() -> list[tuple[str, str]]:
    return [
        ("robopt_compile.targets.onnxruntime", "OnnxRuntimeRunner"),
        ("robopt_compile.targets.openvino", "OpenVinoRunner"),
        ("robopt_compile.targets.tvm", "TvmRunner"),
        ("robopt_compile.targets.tensorrt", "TensorRTRunner"),
    ]


@pytest.mark.parametrize(("module", "cls"), _runners())
@pytest.mark.parametrize("model", ["/etc/hostname", "../outside/model", "unlisted", "link"])
def test_runners_refuse_a_model_outside_their_engine(
    tmp_path: Path, module: str, cls: str, model: str
) -> None:
    import importlib

    engine = tmp_path / "engine"
    engine.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "model").write_bytes(b"x")
    (engine / "unlisted").write_bytes(b"x")
    (engine / "link").symlink_to(tmp_path / "outside" / "model")
    from robopt_compile.targets.tvm import host_arch

    config = {"model": model, "arch": host_arch(), "engine_key": "k", "inputs": [], "outputs": []}
    art = Artifact("x", engine, ("link", "model.bin"), config)
    runner = getattr(importlib.import_module(module), cls)(art)
    with pytest.raises(InputError, match=rf"engine\.config\.model '{model}'"):
        runner.__enter__()


def test_member_accepts_a_plain_file_and_nested_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x")
    assert member(tmp_path, "a/b/f", "f", ["a/b/f"]) == tmp_path / "a" / "b" / "f"
    assert member(tmp_path, "./a/b/f", "f") == tmp_path / "a" / "b" / "f"
    with pytest.raises(InputError, match="is not a regular file"):
        member(tmp_path, "a/b", "f")
    with pytest.raises(InputError, match="is missing from"):
        member(tmp_path, "a/c", "f")
    (tmp_path / "l").symlink_to(tmp_path / "a")
    with pytest.raises(InputError, match="'l/b/f' passes through 'l', a symbolic link"):
        member(tmp_path, "l/b/f", "f")


def test_a_linked_bundle_folder_itself_is_the_users_choice(
    ort_bundle: Path, tmp_path: Path
) -> None:
    (tmp_path / "latest").symlink_to(ort_bundle, target_is_directory=True)
    r = CliRunner().invoke(main, [str(tmp_path / "latest"), "--runs", "2", "--warmup", "0"])
    assert r.exit_code == 0, r.output
