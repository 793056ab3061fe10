"""The runtime API (``from robopt_compile import load_bundle``): a bundle called from robot code,
checked on every call, safe from two threads, and needing only numpy and its runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from robopt_compile import load_bundle
from robopt_compile.errors import InputError


def _reference(bundle: Path, key: str) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference" / f"{key}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("fixture", ["ort_bundle", "ov_bundle"])
def test_calls_match_the_reference(fixture: str, request: pytest.FixtureRequest) -> None:
    bundle = request.getfixturevalue(fixture)
    ins, outs = _reference(bundle, "inputs"), _reference(bundle, "outputs")
    with load_bundle(bundle, threads=1) as policy:
        assert [i.name for i in policy.inputs] == ["image", "state"]
        got = policy(ins)
        for name, want in outs.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)
        # one axis short of a batch-1 input: the batch axis is added
        short = policy({k: v[0] for k, v in ins.items()})
        np.testing.assert_allclose(short["action"], got["action"], rtol=1e-6)
        assert "image" in repr(policy)


def test_bad_feeds_are_one_line_errors(ort_bundle: Path) -> None:
    ins = _reference(ort_bundle, "inputs")
    with load_bundle(ort_bundle) as policy:
        for feeds, says in [
            ({"image": ins["image"]}, "missing ['state']"),
            ({**ins, "extra": ins["state"]}, "unexpected ['extra']"),
            ({**ins, "state": ins["state"].astype(np.float64)}, "float64"),
            ({**ins, "image": ins["image"][:, :, :8]}, "has shape"),
            ([ins["image"], ins["state"]], "dict"),
        ]:
            with pytest.raises(InputError) as e:
                policy(feeds)
            assert says in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    with pytest.raises(InputError, match="closed"):
        policy(ins)


def test_not_a_bundle_damaged_bundle_and_bad_threads(ort_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a bundle"):
        load_bundle(tmp_path)
    with pytest.raises(InputError, match="threads"):
        load_bundle(ort_bundle, threads=0)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ort_bundle, bad)
    engine = next(p for p in (bad / "engine").iterdir() if p.is_file())
    engine.write_bytes(engine.read_bytes()[:-8] + b"tampered")
    with pytest.raises(InputError, match="sha256"):
        load_bundle(bad)


def test_two_threads_take_turns(ov_bundle: Path) -> None:
    """An OpenVINO infer request is not re-entrant (a second call raises REQUEST_BUSY):
    the lock makes two threads take turns."""
    ins = _reference(ov_bundle, "inputs")
    rng = np.random.default_rng(0)
    feeds = [{k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for k, v in ins.items()}
             for _ in range(2)]  # fmt: skip
    with load_bundle(ov_bundle) as policy:
        want = [policy(f)["action"] for f in feeds]
        bad: list[int] = []

        def loop(i: int) -> None:
            for _ in range(200):
                if not np.array_equal(policy(feeds[i])["action"], want[i]):
                    bad.append(i)

        threads = [threading.Thread(target=loop, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert bad == [] and not any(t.is_alive() for t in threads)


def test_needs_only_numpy_and_the_runtime(ort_bundle: Path) -> None:
    """A control loop's imports: no torch, onnx, openvino or the compiler."""
    code = (
        "import sys, numpy as np\n"
        "from robopt_compile import load_bundle\n"
        f"p = load_bundle({str(ort_bundle)!r})\n"
        "a = p({i.name: np.zeros([1 if isinstance(d, str) else d for d in i.shape], i.dtype)"
        " for i in p.inputs})['action']\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnx_ir', 'openvino', 'robopt_compile.api',"
        " 'robopt_compile.compile') if m in sys.modules]\n"
        "print(json.dumps({'shape': list(a.shape), 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    want = _reference(ort_bundle, "outputs")["action"].shape
    assert res == {"shape": list(want), "heavy": []}, res
