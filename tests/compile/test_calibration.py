"""Calibration readers (every form), the calibration / held-out split, and every refusal."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.compile.calibration import (
    ITER_LIMIT,
    CalibrationSet,
    RandomCalibrationWarning,
    load_calibration,
    split_indices,
)
from robopt_compile.errors import InputError
from robopt_compile.ir import TensorSpec

TWO = [
    TensorSpec("image", (1, 3, 4, 4), "float32"),
    TensorSpec("state", ("batch", 5), "float32"),
]
ONE = [TensorSpec("obs", (1, 6), "float32")]


def _sample(i: int) -> dict[str, np.ndarray]:
    return {
        "image": np.full((1, 3, 4, 4), i, dtype=np.float32),
        "state": np.full((1, 5), i, dtype=np.float32),
    }


def _folder(tmp_path: Path, n: int = 8) -> Path:
    d = tmp_path / "calib"
    d.mkdir(parents=True)
    for i in range(n):
        np.savez(d / f"{i:03d}.npz", **_sample(i))
    return d


def _value(sample: dict[str, np.ndarray]) -> int:
    return int(sample["image"].flat[0])


def _raises(spec: str, specs: list[TensorSpec], *needles: str, **kw) -> str:
    with pytest.raises(InputError) as info:
        load_calibration(spec, specs, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- forms


def test_folder_of_npz(tmp_path):
    d = _folder(tmp_path)
    cs = load_calibration(str(d), TWO)
    assert not cs.random and cs.source == str(d)
    assert len(cs.calibration) == 6 and len(cs.holdout) == 2
    assert sorted(cs.calibration_ids + cs.holdout_ids) == [f"{i:03d}.npz" for i in range(8)]
    for part, ids in ((cs.calibration, cs.calibration_ids), (cs.holdout, cs.holdout_ids)):
        for sample, sid in zip(part, ids, strict=True):
            assert _value(sample) == int(sid[:3])  # each id names the file its data came from
            assert sample["image"].shape == (1, 3, 4, 4) and sample["state"].dtype == np.float32


def test_folder_sample_without_batch_axis_gets_one(tmp_path):
    d = _folder(tmp_path, 3)
    np.savez(d / "003.npz", image=np.zeros((3, 4, 4), np.float32), state=np.zeros(5, np.float32))
    cs = load_calibration(str(d), TWO, holdout_fraction=0.5)
    for s in cs.calibration + cs.holdout:
        assert s["image"].shape == (1, 3, 4, 4) and s["state"].shape == (1, 5)


def test_folder_of_npy_for_single_input_model(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(4):
        np.save(d / f"s{i}.npy", np.full((1, 6), i, np.float32))
    (d / "README.txt").write_text("ignored")
    cs = load_calibration(str(d), ONE)
    assert sorted(cs.calibration_ids + cs.holdout_ids) == ["s0.npy", "s1.npy", "s2.npy", "s3.npy"]
    for s, sid in zip(cs.calibration, cs.calibration_ids, strict=True):
        assert set(s) == {"obs"} and s["obs"][0, 0] == int(sid[1])


def test_npy_refused_for_multi_input_model(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for name in ("a", "b"):
        np.save(d / f"{name}.npy", np.zeros((1, 5), np.float32))
    _raises(str(d), TWO, ".npy", "2 inputs", ".npz keyed by input name")


@pytest.mark.parametrize("with_batch_axis", [False, True])
def test_single_npz_with_leading_sample_axis(tmp_path, with_batch_axis):
    n = 10
    image = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 3, 4, 4), np.float32)
    state = np.arange(n, dtype=np.float32)[:, None] * np.ones((n, 5), np.float32)
    if with_batch_axis:  # (N, 1, *rest)
        image, state = image[:, None], state[:, None]
    path = tmp_path / "calib.npz"
    np.savez(path, image=image, state=state)
    cs = load_calibration(str(path), TWO)
    assert len(cs.calibration) + len(cs.holdout) == n
    for s, sid in zip(
        cs.calibration + cs.holdout, cs.calibration_ids + cs.holdout_ids, strict=True
    ):
        i = int(sid.removeprefix("calib.npz[").removesuffix("]"))
        assert s["image"].shape == (1, 3, 4, 4) and s["state"].shape == (1, 5)
        assert _value(s) == i and s["state"][0, 0] == i


def test_single_npy_for_single_input_model(tmp_path):
    path = tmp_path / "obs.npy"
    np.save(path, np.arange(24, dtype=np.float32).reshape(4, 6))
    cs = load_calibration(str(path), ONE)
    assert sorted(cs.calibration_ids + cs.holdout_ids) == [f"obs.npy[{i}]" for i in range(4)]
    assert all(s["obs"].shape == (1, 6) for s in cs.calibration + cs.holdout)


def test_single_npz_keeps_views_unless_a_subset_is_taken(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, obs=np.zeros((20, 6), np.float32))
    full = load_calibration(str(path), ONE)
    # every sample is a view of the one loaded array: no copies
    assert len({id(s["obs"].base) for s in full.calibration + full.holdout}) == 1
    part = load_calibration(str(path), ONE, max_samples=4)
    assert all(s["obs"].base is None for s in part.calibration + part.holdout)


MODULE = textwrap.dedent(
    """
    import numpy as np

    PULLED = []

    def samples():
        for i in range(8):
            yield {"obs": np.full((1, 6), i, np.float32)}

    def as_list():
        return [{"obs": np.full((6,), i, np.float32)} for i in range(5)]

    def endless():
        i = 0
        while True:
            PULLED.append(i)
            yield {"obs": np.full((1, 6), i, np.float32)}
            i += 1

    def one_dict():
        return {"obs": np.zeros((1, 6), np.float32)}

    def not_iterable():
        return 42

    def raises():
        raise RuntimeError("dataset index is missing")

    def raises_midway():
        yield {"obs": np.zeros((1, 6), np.float32)}
        raise OSError("episode 3 is truncated")

    def not_dicts():
        return [np.zeros((1, 6), np.float32)] * 3

    def not_arrays():
        return [{"obs": object()}] * 3

    def float64():
        return [{"obs": np.zeros((1, 6))}] * 3

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def calib_module(tmp_path, monkeypatch):
    name = "robopt_test_calib_module"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "robopt_test_calib_broken.py").write_text("raise ValueError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in (name, "robopt_test_calib_broken"):
        sys.modules.pop(mod, None)


def test_module_callable(calib_module):
    cs = load_calibration(f"{calib_module}:samples", ONE)
    assert sorted(cs.calibration_ids + cs.holdout_ids) == [f"iter[{i}]" for i in range(8)]
    for s, sid in zip(cs.calibration, cs.calibration_ids, strict=True):
        assert s["obs"][0, 0] == int(sid[5:-1])
    cs = load_calibration(f"{calib_module}:as_list", ONE)  # a list, samples without batch axis
    assert all(s["obs"].shape == (1, 6) for s in cs.calibration + cs.holdout)


def test_module_callable_endless_stream_is_cut_at_max_samples(calib_module):
    cs = load_calibration(f"{calib_module}:endless", ONE, max_samples=6)
    assert len(cs.calibration) + len(cs.holdout) == 6
    pulled = sys.modules[calib_module].PULLED
    assert pulled == list(range(6))  # no sample was pulled beyond the cap


def test_module_callable_endless_stream_without_cap_is_refused(calib_module, monkeypatch):
    monkeypatch.setattr("robopt_compile.compile.calibration.ITER_LIMIT", 50)
    _raises(f"{calib_module}:endless", ONE, "more than 50 samples", "max_samples")
    assert ITER_LIMIT >= 10_000


def test_module_callable_imported_from_cwd(tmp_path, monkeypatch):
    name = "robopt_test_calib_cwd"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    try:
        cs = load_calibration(f"{name}:samples", ONE)
    finally:
        sys.modules.pop(name, None)
    assert len(cs.holdout) == 2 and sys.path == before  # cwd was on the path only while loading


@pytest.mark.parametrize(
    ("fn", "needles"),
    [
        ("raises", ("RuntimeError", "dataset index is missing")),
        ("raises_midway", ("OSError", "episode 3 is truncated")),
        ("not_iterable", ("TypeError", "iterable of dicts")),
        ("one_dict", ("returned one dict", "iterable of sample dicts")),
        ("not_dicts", ("iter[0]", "ndarray", "not a dict")),
        ("not_arrays", ("iter[", "'obs'", "object array")),
        ("float64", ("iter[", "'obs'", "float64", "float32")),
        ("NOT_CALLABLE", ("no callable 'NOT_CALLABLE'",)),
        ("missing", ("no callable 'missing'",)),
    ],
)
def test_module_callable_errors(calib_module, fn, needles):
    _raises(f"{calib_module}:{fn}", ONE, f"{calib_module}:{fn}", *needles)


def test_module_import_errors(calib_module):
    _raises("robopt_no_such_module_xyz:samples", ONE, "cannot import", "robopt_no_such_module_xyz")
    _raises("robopt_test_calib_broken:samples", ONE, "raised ValueError: no config")


def test_random_calibration_warns():
    specs = [*TWO, TensorSpec("mode", (1,), "int64")]
    with pytest.warns(RandomCalibrationWarning, match="meaningless"):
        cs = load_calibration("random", specs, random_samples=12)
    assert cs.random and cs.source == "random"
    assert len(cs.calibration) == 9 and len(cs.holdout) == 3
    assert sorted(cs.calibration_ids + cs.holdout_ids, key=lambda s: int(s[7:-1])) == [
        f"random[{i}]" for i in range(12)
    ]
    s = cs.calibration[0]
    assert s["state"].shape == (1, 5) and s["mode"].dtype == np.int64
    with pytest.warns(RandomCalibrationWarning):
        again = load_calibration("random", specs, random_samples=12)
    assert cs.holdout_ids == again.holdout_ids
    for a, b in zip(cs.holdout, again.holdout, strict=True):
        assert np.array_equal(a["image"], b["image"])  # same seed, same data
    assert not np.array_equal(cs.calibration[0]["image"], cs.calibration[1]["image"])


def test_real_data_does_not_warn(tmp_path):
    d = _folder(tmp_path, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_calibration(str(d), TWO)


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    d = _folder(tmp_path, 20)
    a = load_calibration(str(d), TWO, seed=3)
    b = load_calibration(str(d), TWO, seed=3)
    assert a.calibration_ids == b.calibration_ids and a.holdout_ids == b.holdout_ids
    assert not set(a.calibration_ids) & set(a.holdout_ids)
    assert len(set(a.calibration_ids) | set(a.holdout_ids)) == 20
    others = {load_calibration(str(d), TWO, seed=s).holdout_ids for s in range(4, 10)}
    assert len(others | {a.holdout_ids}) > 1  # the seed changes which samples are held out
    # the held-out data really is the held-out files' data
    assert {_value(s) for s in a.holdout} == {int(i[:3]) for i in a.holdout_ids}


@pytest.mark.parametrize(
    ("n", "fraction", "n_hold"),
    [
        (8, 0.25, 2),
        (10, 0.5, 5),
        (10, 0.01, 1),
        (10, 0.99, 9),
        (2, 0.5, 1),
        (2, 0.9, 1),
        (7, 0.3, 2),
    ],
)
def test_split_fractions(n, fraction, n_hold):
    cal, hold = split_indices(n, fraction, seed=0)
    assert len(hold) == n_hold and len(cal) == n - n_hold >= 1
    assert sorted(cal + hold) == list(range(n)) and cal == sorted(cal) and hold == sorted(hold)


def test_max_samples_caps_before_splitting(tmp_path):
    d = _folder(tmp_path, 20)
    cs = load_calibration(str(d), TWO, max_samples=8, holdout_fraction=0.5)
    assert len(cs.calibration) == 4 and len(cs.holdout) == 4
    # a seeded random subset of all files, not just the first eight by name
    assert cs.to_json()["calibration_count"] == 4
    assert max(int(i[:3]) for i in cs.calibration_ids + cs.holdout_ids) > 7
    assert load_calibration(str(d), TWO, max_samples=100).to_json()["holdout_count"] == 5


def test_max_samples_skips_reading_unused_files(tmp_path):
    d = _folder(tmp_path, 10)
    keep = load_calibration(str(d), TWO, max_samples=4)
    used = set(keep.calibration_ids + keep.holdout_ids)
    for p in d.iterdir():
        if p.name not in used:
            p.write_bytes(b"corrupt")
    again = load_calibration(str(d), TWO, max_samples=4)
    assert again.holdout_ids == keep.holdout_ids


def test_calibration_set_refuses_overlap():
    s = _sample(0)
    with pytest.raises(ValueError, match="both parts"):
        CalibrationSet((s,), (s,), ("a",), ("a",), "x", False)
    with pytest.raises(ValueError, match="one id"):
        CalibrationSet((s, s), (s,), ("a",), ("b",), "x", False)


def test_to_json_has_no_arrays(tmp_path):
    d = _folder(tmp_path, 4)
    j = load_calibration(str(d), TWO).to_json()
    assert json.loads(json.dumps(j)) == j
    assert j["calibration_count"] == 3 and j["holdout_count"] == 1 and j["random"] is False
    assert j["inputs"]["image"] == {"dtype": "float32", "shapes": [[1, 3, 4, 4]]}
    assert len(j["calibration_ids"]) == 3 and j["source"] == str(d)


# --------------------------------------------------------------------------- errors


def test_missing_and_extra_inputs(tmp_path):
    d = _folder(tmp_path, 3)
    np.savez(d / "001.npz", image=np.zeros((1, 3, 4, 4), np.float32))
    _raises(str(d), TWO, "001.npz", "missing ['state']", "do not match the model inputs")
    np.savez(d / "001.npz", **_sample(1), extra=np.zeros(3, np.float32))
    _raises(str(d), TWO, "001.npz", "unexpected ['extra']")


def test_dtype_must_match_exactly(tmp_path):
    d = _folder(tmp_path, 3)
    np.savez(d / "002.npz", image=np.zeros((1, 3, 4, 4)), state=np.zeros((1, 5), np.float32))
    _raises(str(d), TWO, "002.npz", "'image'", "float64", "the model takes float32")


def test_static_dims_checked_symbolic_dims_free(tmp_path):
    d = _folder(tmp_path, 3)
    np.savez(d / "000.npz", image=np.zeros((1, 3, 8, 8), np.float32), state=_sample(0)["state"])
    _raises(str(d), TWO, "000.npz", "'image'", "[1, 3, 8, 8]", "[1, 3, 4, 4]")
    # "batch" is symbolic: a batch of 4 for state is fine
    np.savez(d / "000.npz", image=_sample(0)["image"], state=np.zeros((4, 5), np.float32))
    cs = load_calibration(str(d), TWO, holdout_fraction=0.5)
    shapes = {s["state"].shape for s in cs.calibration + cs.holdout}
    assert shapes == {(1, 5), (4, 5)}


def test_empty_folder_and_no_matching_files(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    _raises(str(d), TWO, "is empty")
    (d / "a.txt").write_text("x")
    (d / "b.png").write_bytes(b"x")
    _raises(str(d), TWO, "no .npy or .npz files", "a.txt")


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_corrupt_files(tmp_path, suffix):
    d = _folder(tmp_path, 3) if suffix == ".npz" else tmp_path / "calib"
    d.mkdir(exist_ok=True)
    (d / f"bad{suffix}").write_bytes(b"not numpy at all")
    specs = TWO if suffix == ".npz" else ONE
    if suffix == ".npy":
        for i in range(3):
            np.save(d / f"{i}.npy", np.zeros((1, 6), np.float32))
    _raises(str(d), specs, f"bad{suffix}", "not a readable")
    _raises(str(d / f"bad{suffix}"), specs, f"bad{suffix}", "not a readable")


def test_npz_named_npy_is_refused(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((1, 6), np.float32))
    with open(d / "b.npy", "wb") as f:
        np.savez(f, obs=np.zeros((1, 6), np.float32))  # a zip archive under an .npy name
    _raises(str(d), ONE, "b.npy", "is an .npz archive")


def test_pickled_object_arrays_refused(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    obj = np.array([{"a": 1}, None], dtype=object)
    for i in range(2):
        np.savez(d / f"{i}.npz", obs=obj)
    _raises(str(d), ONE, "pickled object array")
    np.savez(tmp_path / "one.npz", obs=obj)
    _raises(str(tmp_path / "one.npz"), ONE, "one.npz", "pickled object array")
    d2 = tmp_path / "npy"
    d2.mkdir()
    for i in range(2):
        np.save(d2 / f"{i}.npy", obj, allow_pickle=True)
    _raises(str(d2), ONE, "pickled object array")
    # a plain pickle (not a numpy file at all) is unreadable, never unpickled
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"obs": np.zeros((2, 6), np.float32)}))
    _raises(str(tmp_path / "p.npz"), ONE, "p.npz", "not a readable", "pickled")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_refused(tmp_path, bad):
    d = _folder(tmp_path, 4)
    s = _sample(2)
    s["state"][0, 1] = bad
    np.savez(d / "002.npz", **s)
    _raises(str(d), TWO, "002.npz", "'state'", "1 NaN/inf", "quantizers")


def test_nonfinite_in_single_npz_names_the_sample(tmp_path):
    obs = np.zeros((5, 6), np.float32)
    obs[3, 0] = np.nan
    np.savez(tmp_path / "c.npz", obs=obs)
    _raises(str(tmp_path / "c.npz"), ONE, "c.npz[3]", "'obs'", "NaN")


def test_too_few_samples(tmp_path):
    d = _folder(tmp_path, 1)
    _raises(str(d), TWO, "1 sample", "at least 2", "held out")
    np.savez(tmp_path / "one.npz", obs=np.zeros((1, 6), np.float32))
    _raises(str(tmp_path / "one.npz"), ONE, "1 sample", "at least 2")
    _raises(
        str(_folder(tmp_path / "more", 5)), TWO, "max samples is 1", "at least 2", max_samples=1
    )
    with pytest.raises(InputError, match="at least 2"):
        load_calibration("random", ONE, random_samples=1)


def test_single_npz_structure_errors(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.zeros((4, 3, 4, 4), np.float32), state=np.zeros(()))
    _raises(str(tmp_path / "a.npz"), TWO, "['state']", "no leading sample axis")
    np.savez(
        tmp_path / "b.npz",
        image=np.zeros((4, 3, 4, 4), np.float32),
        state=np.zeros((3, 5), np.float32),
    )
    _raises(str(tmp_path / "b.npz"), TWO, "different numbers of samples", "'image': 4")


def test_bad_spec_and_options(tmp_path):
    _raises(str(tmp_path / "nope"), TWO, "not found", "random")
    (tmp_path / "c.pt").write_bytes(b"x")
    _raises(str(tmp_path / "c.pt"), TWO, "unsupported calibration file type .pt")
    d = _folder(tmp_path, 4)
    _raises(str(d), TWO, "holdout fraction", holdout_fraction=1.0)
    _raises(str(d), TWO, "holdout fraction", holdout_fraction=0.0)
    _raises(str(d), [], "no inputs")
