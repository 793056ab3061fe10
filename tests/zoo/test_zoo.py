"""Zoo contract: every model builds, runs, is deterministic, and exports to ONNX faithfully.

The zoo is the ground truth every other test and benchmark compares against, so each model is
checked against the same contract (parametrised over the registry table) and the ONNX export is
compared with ONNX Runtime on inputs the export never saw.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robopt_compile.errors import UnknownNameError
from robopt_compile.zoo import ZOO, load_zoo, zoo_names

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

NAMES = [n for n in zoo_names() if ZOO[n].kind == "policy"]  # multi-graph: test_vla.py
FRESH_SEED = 7  # inputs the export never saw
MIN_COSINE = 0.99999
# Relative to the output's magnitude: fp32 rounding through ~20 layers, not a real mismatch.
MAX_ABS_ERR = 1e-4


@pytest.fixture(scope="module", params=NAMES)
def zoo_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, dict]:
    """Build each zoo model once per module; the ResNet ones take a noticeable moment."""
    model, inputs = load_zoo(request.param)
    return request.param, model, inputs


def _run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def _export(model: torch.nn.Module, inputs: dict, path: Path, dynamic: bool = False) -> None:
    kwargs = {}
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        kwargs["dynamic_shapes"] = {name: {0: batch} for name in inputs}
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            args=(),
            kwargs=inputs,
            dynamo=True,
            input_names=list(inputs),
            output_names=list(model.output_names),
            **kwargs,
        )
    program.save(str(path))


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    a, e = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    cosine = float(a @ e / (np.linalg.norm(a) * np.linalg.norm(e)))
    assert cosine >= MIN_COSINE, f"cosine {cosine}"
    err = float(np.abs(a - e).max())
    assert err <= MAX_ABS_ERR * max(1.0, float(np.abs(e).max())), f"max abs err {err}"


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_import_does_not_load_torch() -> None:
    code = "import sys, robopt_compile.zoo; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'visuomotor-cnn'") as info:
        load_zoo("visuomotor_cnn")
    assert info.value.suggestions[0] == "visuomotor-cnn"


def test_table_is_consistent() -> None:
    for name, entry in ZOO.items():
        assert entry.name == name
        module, sep, func = entry.factory.partition(":")
        assert sep and module.startswith("robopt_compile.zoo.") and func.startswith("make_")


def test_forward_shapes_and_finite(zoo_model: tuple) -> None:
    name, model, inputs = zoo_model
    assert not model.training
    assert list(inputs) == list(inspect.signature(model.forward).parameters)
    out = _run(model, inputs)
    expected = {
        "state-mlp": (1, 7),
        "visuomotor-cnn": (1, 7),
        "act-policy": (1, 50, 14),
        "hopper-mlp": (1, 3),
        "double-pendulum-mlp": (1, 1),
        "pendulum-swingup-mlp": (1, 1),
        "reacher-cnn": (1, 2),
        "metaworld-resnet18": (1, 4),
    }
    assert tuple(out.shape) == expected[name]
    assert len(model.output_names) == 1
    assert torch.isfinite(out).all()
    if out.numel() > 1:  # a one-action policy has no spread within one output
        assert out.std() > 1e-3, "output is (nearly) constant"


def test_output_depends_on_every_input(zoo_model: tuple) -> None:
    _, model, inputs = zoo_model
    base = _run(model, inputs)
    gen = torch.Generator().manual_seed(1)
    for key, value in inputs.items():
        noise = torch.randn(value.shape, generator=gen)
        perturbed = {**inputs, key: value + 0.05 * noise}
        delta = (_run(model, perturbed) - base).abs().max().item()
        assert delta > 1e-5, f"output ignores input {key!r}"


def test_deterministic_for_a_seed(zoo_model: tuple) -> None:
    name, model, inputs = zoo_model
    before = torch.random.get_rng_state()
    again, again_inputs = load_zoo(name, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before), "build touched the global RNG"
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for k in inputs:
        assert torch.equal(inputs[k], again_inputs[k]), k
    other, other_inputs = load_zoo(name, seed=1)
    same = all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    # Trained models keep their weights; the seed then changes only the example inputs.
    assert same == ZOO[name].trained
    assert not all(torch.equal(inputs[k], other_inputs[k]) for k in inputs)


def test_batch_argument(zoo_model: tuple) -> None:
    name, model, _ = zoo_model
    _, inputs = load_zoo(name, batch=3)
    assert all(v.shape[0] == 3 for v in inputs.values())
    assert _run(model, inputs).shape[0] == 3


def test_onnx_export_matches_torch(zoo_model: tuple, tmp_path: Path) -> None:
    name, model, inputs = zoo_model
    path = tmp_path / f"{name}.onnx"
    _export(model, inputs, path)
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == list(inputs)
    assert [o.name for o in sess.get_outputs()] == list(model.output_names)
    _, fresh = load_zoo(name, seed=FRESH_SEED)
    (got,) = sess.run(None, {k: v.numpy() for k, v in fresh.items()})
    _assert_close(got, _run(model, fresh).numpy())


@pytest.mark.filterwarnings("ignore:# The axis name:UserWarning")
def test_onnx_export_dynamic_batch(zoo_model: tuple, tmp_path: Path) -> None:
    name, model, _ = zoo_model
    # Example batch 2: a batch-1 example invites torch.export to specialise the dim to 1.
    _, example = load_zoo(name, batch=2)
    path = tmp_path / f"{name}-dyn.onnx"
    _export(model, example, path, dynamic=True)
    sess = _session(path)
    assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())
    _, fresh = load_zoo(name, seed=FRESH_SEED, batch=3)
    (got,) = sess.run(None, {k: v.numpy() for k, v in fresh.items()})
    _assert_close(got, _run(model, fresh).numpy())


def count_macs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d and Linear, keyed by module name."""
    macs: dict[str, int] = {}
    hooks = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):

            def conv_hook(m, _inp, out, n=mod_name):
                k = m.weight[0].numel()  # in_ch / groups * kh * kw
                macs[n] = out.numel() * k

            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, torch.nn.Linear):

            def linear_hook(m, _inp, out, n=mod_name):
                macs[n] = out.numel() * m.in_features

            hooks.append(mod.register_forward_hook(linear_hook))
    _run(model, inputs)
    for h in hooks:
        h.remove()
    return macs


def test_visuomotor_cnn_trunk_is_resnet18_sized() -> None:
    # ResNet-18 at 224x224 is 1.814 GMAC with its 512x1000 fc; the trunk alone is 1.8136 G.
    model, inputs = load_zoo("visuomotor-cnn")
    macs = count_macs(model, inputs)
    trunk = sum(v for k, v in macs.items() if k.startswith("trunk."))
    assert 1.80e9 <= trunk <= 1.83e9, trunk
    assert sum(p.numel() for p in model.trunk.parameters()) == 11_176_512
