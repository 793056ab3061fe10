"""Distillation: the torch interpreter matches ONNX Runtime op by op, and training recovers a
perturbed student on held-out inputs without touching the input model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from robopt_compile.compile.accuracy import accuracy_figures
from robopt_compile.distill import OnnxModule, distill, interpreter
from robopt_compile.errors import InputError, PassError
from robopt_compile.ir import input_specs
from robopt_compile.numerics import random_feeds, run_onnx, run_onnx_many

torch = pytest.importorskip("torch")

HEADER = '<ir_version: 10, opset_import: ["" : 20]>'


def _model(text: str, inits: dict[str, np.ndarray] | None = None) -> ir.Model:
    """A checked model from ONNX text; initializers come from numpy (weights are long)."""
    proto = onnx.parser.parse_model(f"{HEADER}\n{text}")
    for name, value in (inits or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _convnet() -> ir.Model:
    rng = np.random.default_rng(0)
    inits = {
        "W1": _w(rng, 8, 3, 3, 3), "B1": _w(rng, 8),
        "S1": 1 + _w(rng, 8), "T1": _w(rng, 8), "M1": _w(rng, 8), "V1": 1 + np.abs(_w(rng, 8)),
        "W2": _w(rng, 8, 4, 3, 3), "B2": _w(rng, 8), "W3": _w(rng, 6, 8, 3, 3),
        "WG": _w(rng, 5, 6), "BG": _w(rng, 5),
    }  # fmt: skip
    return _model(
        """
        convnet (float[N, 3, 16, 16] X) => (float[N, 5] Y)
        {
          c1 = Conv<pads = [1, 1, 1, 1]>(X, W1, B1)
          b1 = BatchNormalization<epsilon = 0.001>(c1, S1, T1, M1, V1)
          r1 = Relu(b1)
          c2 = Conv<pads = [1, 1, 1, 1], group = 2>(r1, W2, B2)
          a = Add(c2, r1)
          r2 = LeakyRelu<alpha = 0.1>(a)
          p = MaxPool<kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]>(r2)
          c3 = Conv<strides = [2, 2], dilations = [2, 2], pads = [0, 0, 1, 2]>(p, W3)
          h = HardSwish(c3)
          ap = AveragePool<kernel_shape = [2, 2], pads = [0, 0, 1, 1]>(h)
          lo = Constant<value = float {-0.5}>()
          hi = Constant<value = float {0.8}>()
          cl = Clip(ap, lo, hi)
          g = GlobalAveragePool(cl)
          f = Flatten(g)
          Y = Gemm<transB = 1, alpha = 0.5, beta = 2.0>(f, WG, BG)
        }
        """,
        inits,
    )


def _mlp() -> ir.Model:
    rng = np.random.default_rng(1)
    inits = {"W1": _w(rng, 32, 12), "B1": _w(rng, 32), "W2": _w(rng, 32, 32), "B2": _w(rng, 32),
             "W3": _w(rng, 32, 4), "B3": _w(rng, 4)}  # fmt: skip
    return _model(
        """
        mlp (float[N, 12] X) => (float[N, 4] Y, float[N, 4] P)
        {
          h1 = Gemm<transB = 1>(X, W1, B1)
          a1 = Tanh(h1)
          h2 = MatMul(a1, W2)
          h3 = Add(h2, B2)
          a2 = Sigmoid(h3)
          Y = Gemm(a2, W3, B3)
          P = Softmax(Y)
        }
        """,
        inits,
    )


def _transformer() -> ir.Model:
    rng = np.random.default_rng(2)
    d, f = 16, 32
    inits = {n: _w(rng, d, d) for n in ("Wq", "Wk", "Wv", "Wo")}
    inits |= {"Wf1": _w(rng, d, f), "Bf1": _w(rng, f), "Wf2": _w(rng, f, d)}
    inits |= {"G1": 1 + _w(rng, d), "Be1": _w(rng, d), "G2": 1 + _w(rng, d), "Be2": _w(rng, d)}
    return _model(
        """
        block (float[N, 6, 16] X) => (float[N, 6, 16] Y)
        {
          q = MatMul(X, Wq)
          k = MatMul(X, Wk)
          v = MatMul(X, Wv)
          heads = Constant<value = int64[4] {0, 0, 2, 8}>()
          q4 = Reshape(q, heads)
          k4 = Reshape(k, heads)
          v4 = Reshape(v, heads)
          qh = Transpose<perm = [0, 2, 1, 3]>(q4)
          kh = Transpose<perm = [0, 2, 3, 1]>(k4)
          vh = Transpose<perm = [0, 2, 1, 3]>(v4)
          scale = Constant<value = float {0.35355339}>()
          s = MatMul(qh, kh)
          s2 = Mul(s, scale)
          att = Softmax<axis = -1>(s2)
          o = MatMul(att, vh)
          ot = Transpose<perm = [0, 2, 1, 3]>(o)
          flat = Constant<value = int64[3] {0, 0, -1}>()
          o3 = Reshape(ot, flat)
          proj = MatMul(o3, Wo)
          r = Add(X, proj)
          n1 = LayerNormalization<axis = -1, epsilon = 0.00001>(r, G1, Be1)
          f1 = MatMul(n1, Wf1)
          f1b = Add(f1, Bf1)
          g = Gelu<approximate = "tanh">(f1b)
          f2 = MatMul(g, Wf2)
          g2 = Gelu(f2)
          r2 = Add(n1, g2)
          Y = LayerNormalization(r2, G2, Be2)
        }
        """,
        inits,
    )


def _shape_ops() -> ir.Model:
    """Elementwise, reduction, shape and indexing ops, each feeding an output."""
    rng = np.random.default_rng(3)
    inits = {"C1": _w(rng, 6), "C2": 1 + np.abs(_w(rng, 4, 1)), "Sc": 1 + _w(rng, 4),
             "Bi": _w(rng, 4), "WT": _w(rng, 4, 3, 3), "Row": _w(rng, 6)}  # fmt: skip
    return _model(
        """
        ops (float[N, 4, 6] X, int64[3] idx) => (float[N, 4, 6] E, float[N, 4, 6] A,
            float[N, 6] RM, float[N, 4, 1] RS, float RX, float[N, 4, 6] RN, float[N, 2, 4] SL,
            float[N, 4, 6] SQ, float[N, 3, 6] G, float[N, 4, 6] W, float[N, 24] RA,
            float[N, 4, 6] IN, float[N, 3, 13] CT, float[N, 4, 3] MP, float[N, 4, 6] SM,
            float[N, 4, 6] PD)
        {
          two = Constant<value = float {2.0}>()
          d0 = Sub(X, C1)
          d1 = Div(d0, C2)
          d2 = Abs(d1)
          d3 = Pow(d2, two)
          e1 = Sqrt(d3)
          n = Neg(e1)
          ex = Exp(n)
          ex2 = Add(ex, two)
          e2 = Log(ex2)
          er = Erf(X)
          E = Add(e2, er)
          lo = Constant<value = float {-0.25}>()
          hs = HardSigmoid<alpha = 0.3, beta = 0.4>(X)
          ge = Gelu(X)
          cl = Clip(X, lo)
          a1 = Add(hs, ge)
          A = Add(a1, cl)
          ax1 = Constant<value = int64[1] {1}>()
          axm1 = Constant<value = int64[1] {-1}>()
          RM = ReduceMean<keepdims = 0>(X, ax1)
          RS = ReduceSum(X, axm1)
          RX = ReduceMax<keepdims = 0>(X)
          RN = ReduceSum<noop_with_empty_axes = 1>(X)
          cat = Concat<axis = 1>(X, X)
          sizes = Constant<value = int64[2] {2, 4}>()
          s1, s2 = Split<axis = 2>(cat, sizes)
          st = Constant<value = int64[2] {-1, 0}>()
          en = Constant<value = int64[2] {-100000, 4}>()
          sa = Constant<value = int64[2] {1, 2}>()
          ss = Constant<value = int64[2] {-4, 1}>()
          SL = Slice(s2, st, en, sa, ss)
          uax = Constant<value = int64[2] {0, 3}>()
          sax = Constant<value = int64[1] {3}>()
          zax = Constant<value = int64[1] {0}>()
          u = Unsqueeze(X, uax)
          u2 = Squeeze(u, sax)
          SQ = Squeeze(u2, zax)
          G = Gather<axis = 1>(X, idx)
          x2 = Mul(X, two)
          xi = Cast<to = 7>(x2)
          zero = Constant<value = int64 {0}>()
          iszero = Equal(xi, zero)
          shp = Shape(X)
          fill = ConstantOfShape<value = float[1] {2.5}>(shp)
          xd = Dropout(X)
          xid = Identity(xd)
          wh = Where(iszero, fill, xid)
          row = Expand(Row, shp)
          W = Add(wh, row)
          start = Constant<value = float {0.0}>()
          limit = Constant<value = float {3.0}>()
          delta = Constant<value = float {0.5}>()
          rg = Range(start, limit, delta)
          xr = Add(X, rg)
          shp1 = Shape<end = 1>(X)
          b = Gather<axis = 0>(shp1, zero)
          bu = Unsqueeze(b, zax)
          m1 = Constant<value = int64[1] {-1}>()
          newshape = Concat<axis = 0>(bu, m1)
          RA = Reshape<allowzero = 1>(xr, newshape)
          IN = InstanceNormalization<epsilon = 0.001>(X, Sc, Bi)
          CT = ConvTranspose<strides = [2], pads = [1, 0], output_padding = [1]>(X, WT)
          MP = MaxPool<kernel_shape = [3], strides = [2], pads = [0, 1], ceil_mode = 1>(X)
          th = Tanh(X)
          SM = Softmax<axis = 1>(th)
          pads = Constant<value = int64[6] {0, 0, 1, 0, 0, -1}>()
          PD = Pad(X, pads)
        }
        """,
        inits,
    )


def _interpret(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = OnnxModule(model)
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in out.items()}


def _assert_parity(model: ir.Model, feeds: dict[str, np.ndarray], atol: float = 1e-4) -> None:
    ref = run_onnx(model, feeds, optimization="disable")
    got = _interpret(model, feeds)
    assert list(got) == list(ref)
    for name, r in ref.items():
        assert got[name].shape == r.shape, name
        assert got[name].dtype == r.dtype, name
        np.testing.assert_allclose(got[name], r, rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("build", [_convnet, _mlp, _transformer], ids=lambda b: b.__name__[1:])
def test_interpreter_matches_onnxruntime(build) -> None:
    model = build()
    _assert_parity(model, random_feeds(input_specs(model), seed=7, batch=3))


def test_interpreter_matches_onnxruntime_on_shape_ops() -> None:
    model = _shape_ops()
    feeds = random_feeds(input_specs(model), seed=8, batch=2)
    feeds["X"][0, 0, :3] = [0.0, 0.2, -0.3]  # a few Cast(2X) == 0 hits for Where
    feeds["idx"] = np.array([0, -1, 2], np.int64)
    _assert_parity(model, feeds)


@pytest.fixture(scope="module")
def state_mlp() -> ir.Model:
    from robopt_compile.compile.frontend import load_source

    kw = {"dynamic_batch": False, "opset": None, "seed": 0, "check_parity": False}
    return load_source("zoo:state-mlp", **kw, reference_inputs=None).model


@pytest.mark.parametrize("name", ["state-mlp", "act-policy"])
def test_interpreter_matches_onnxruntime_on_zoo(name: str, state_mlp: ir.Model) -> None:
    from robopt_compile.compile.frontend import load_source

    kw = {"dynamic_batch": False, "opset": None, "seed": 0, "check_parity": False}
    model = state_mlp if name == "state-mlp" else load_source(f"zoo:{name}", **kw).model
    feeds = random_feeds(input_specs(model), seed=3)
    ref, got = run_onnx(model, feeds), _interpret(model, feeds)
    for k, r in ref.items():
        assert np.max(np.abs(got[k] - r)) < 1e-4, k
    params = OnnxModule(model).named_onnx_parameters()
    assert params and all(p.requires_grad for p in params.values())


def test_unsupported_and_quantized_ops_are_refused() -> None:
    model = _model("g (float[N, 4] X) => (float[N, 4] Y) { Y = Hardmax(X) }")
    with pytest.raises(PassError, match=r"ONNX op 'Hardmax' \(node .*\) has no torch") as info:
        OnnxModule(model)
    assert "\n" not in str(info.value) and "drop --distill" in str(info.value)

    quant = _model(
        """
        g (float[N, 4] X) => (float[N, 4] Y)
        {
          s = Constant<value = float {0.1}>()
          z = Constant<value = uint8 {128}>()
          q = QuantizeLinear(X, s, z)
          Y = DequantizeLinear(q, s, z)
        }
        """
    )
    with pytest.raises(PassError, match=r"QuantizeLinear.*distil before quantizing"):
        OnnxModule(quant)


def _perturbed(model: ir.Model, rel: float, seed: int) -> ir.Model:
    """A copy of ``model`` with gaussian noise of ``rel`` x std added to every trained weight."""
    out = ir.from_proto(ir.to_proto(model))
    rng = np.random.default_rng(seed)
    for name in OnnxModule(model).param_names:
        init = out.graph.initializers[name]
        a = init.const_value.numpy()
        noisy = a + rel * a.std() * rng.standard_normal(a.shape)
        init.const_value = ir.tensor(noisy.astype(a.dtype), name=name)
    return out


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}


def test_distill_recovers_a_perturbed_student(state_mlp: ir.Model) -> None:
    student = _perturbed(state_mlp, 0.3, seed=1)
    before = _weights(student)
    specs = input_specs(state_mlp)
    train = [random_feeds(specs, seed=100 + i) for i in range(32)]
    held_out = [random_feeds(specs, seed=1000 + i) for i in range(16)]
    reference = run_onnx_many(state_mlp, held_out)
    drop_before = accuracy_figures(reference, run_onnx_many(student, held_out))["relative_l2"]
    seen: list[tuple[int, int, float]] = []

    result = distill(
        student, state_mlp, train, steps=300, threads=1, progress=lambda *a: seen.append(a)
    )

    drop_after = accuracy_figures(reference, run_onnx_many(result.model, held_out))["relative_l2"]
    assert drop_after < 0.65 * drop_before, (drop_before, drop_after)
    report = result.report
    assert report["final_loss"] < 0.1 * report["initial_loss"]
    assert report["steps"] == 300 and report["loss"] == "mse" and not report["batched"]
    assert report["vmapped"]  # a static batch of 1: mapped over the training batch
    assert report["trainable_parameters"] > 100_000 and set(report["normalisation"]) == {"action"}
    assert seen[-1][:2] == (300, 300)
    # The input student is untouched; the result is a separate, valid, runnable model.
    after = _weights(student)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert result.model is not student
    onnx.checker.check_model(ir.to_proto(result.model), full_check=True)
    assert [n.op_type for n in result.model.graph] == [n.op_type for n in student.graph]
    assert run_onnx(result.model, held_out[0])["action"].shape == (1, 7)


def test_distill_is_deterministic_and_batches_dynamic_models() -> None:
    teacher = _mlp()
    student = _perturbed(teacher, 0.3, seed=2)
    train = [random_feeds(input_specs(teacher), seed=i, batch=2) for i in range(8)]
    kw = {"steps": 40, "batch_size": 4, "threads": 1}
    a = distill(student, teacher, train, seed=5, **kw)
    b = distill(student, teacher, train, seed=5, **kw)
    c = distill(student, teacher, train, seed=6, **kw)
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)
    assert a.report["batched"]  # dynamic batch: samples are stacked into one forward pass
    assert a.report["final_loss"] < a.report["initial_loss"]

    kl = distill(student, teacher, train, loss="kl", augment=False, **kw)
    assert kl.report["loss"] == "kl" and kl.report["final_loss"] < kl.report["initial_loss"]


def test_distill_refuses_a_trainer_that_disagrees_with_onnxruntime(monkeypatch) -> None:
    teacher = _mlp()
    train = [random_feeds(input_specs(teacher), seed=0)]
    monkeypatch.setitem(interpreter.OPS, "Tanh", lambda s, x: x)  # a deliberately wrong kernel
    with pytest.raises(PassError, match="does not reproduce the student"):
        distill(teacher, teacher, train, steps=1)


def test_distill_rejects_bad_arguments() -> None:
    teacher = _mlp()
    train = [random_feeds(input_specs(teacher), seed=0)]
    with pytest.raises(InputError, match="lacks input"):
        distill(teacher, teacher, [{"x": np.zeros((1, 12), np.float32)}], steps=1)
    with pytest.raises(InputError, match="loss"):
        distill(teacher, teacher, train, steps=1, loss="l1")
    with pytest.raises(InputError, match="steps"):
        distill(teacher, teacher, train, steps=0)


def test_a_hard_coded_batch_is_not_batched_and_other_errors_propagate() -> None:
    """A graph that says "dynamic batch" but reshapes to batch 1 refuses stacked samples in
    both runners: that reads as "not batched"; an error of any other kind is a bug."""
    from robopt_compile.distill.data import runs_batched
    from robopt_compile.distill.train import OrtRunner

    rng = np.random.default_rng(4)
    teacher = _model(
        """
        g (float[N, 4] X) => (float[N, 3] Y)
        {
          one = Constant<value = int64[2] {1, 4}>()
          r = Reshape(X, one)
          Y = MatMul(r, W)
        }
        """,
        {"W": _w(rng, 4, 3)},
    )
    train = [random_feeds(input_specs(teacher), seed=i) for i in range(4)]
    runner = OrtRunner(teacher, threads=1)
    assert not runs_batched(runner, train, ["X"], runner.refusals)

    def student(feeds):
        with torch.no_grad():
            return {
                k: v.numpy() for k, v in OnnxModule(teacher)(X=torch.from_numpy(feeds["X"])).items()
            }

    assert not runs_batched(student, train, ["X"], (PassError,))

    def broken(feeds):
        raise ZeroDivisionError("a bug, not a batch refusal")

    with pytest.raises(ZeroDivisionError):
        runs_batched(broken, train, ["X"], (PassError,))

    result = distill(_perturbed(teacher, 0.3, seed=3), teacher, train, steps=5, threads=1)
    assert result.report["batched"] is False
    assert result.report["vmapped"] is True  # per sample the Reshape holds: vmap maps it


def _static_mlp() -> ir.Model:
    rng = np.random.default_rng(7)
    return _model(
        """
        smlp (float[1, 12] X) => (float[1, 4] Y)
        {
          h = Gemm<transB = 1>(X, W1, B1)
          a = Tanh(h)
          Y = MatMul(a, W2)
        }
        """,
        {"W1": _w(rng, 32, 12), "B1": _w(rng, 32), "W2": _w(rng, 32, 4)},
    )


def _teacher_calls(monkeypatch) -> list[int]:
    """A list that grows by one each time the distiller runs its teacher (ONNX Runtime)."""
    from robopt_compile.distill import train as dtrain

    calls: list[int] = []
    real_call = dtrain.OrtRunner.__call__
    monkeypatch.setattr(
        dtrain.OrtRunner, "__call__", lambda self, f: calls.append(1) or real_call(self, f)
    )
    return calls


def test_a_static_batch_is_mapped_and_teacher_labels_are_computed_once(monkeypatch) -> None:
    """A batch-1 graph trains one vmapped pass per step, with the same weights (to rounding)
    as one pass per sample; unaugmented samples are labelled by the teacher once each."""
    from robopt_compile.distill import train as dtrain

    teacher = _static_mlp()
    student = _perturbed(teacher, 0.3, seed=4)
    data = [random_feeds(input_specs(teacher), seed=i) for i in range(6)]
    calls = _teacher_calls(monkeypatch)
    kw = {"steps": 30, "batch_size": 4, "threads": 1, "lr": 1e-3, "augment": False}
    mapped = distill(student, teacher, data, **kw)
    assert mapped.report["vmapped"] and not mapped.report["batched"]
    assert mapped.report["teacher_labels"] == "computed once per sample"
    assert len(calls) == len(data)  # 30 steps x 4 samples read 6 labels
    assert mapped.report["final_loss"] < 0.5 * mapped.report["initial_loss"]

    monkeypatch.setattr(dtrain, "_runs_vmapped", lambda *a: False)
    looped = distill(student, teacher, data, **kw)
    assert not looped.report["vmapped"]
    w0, wm, wl = _weights(student), _weights(mapped.model), _weights(looped.model)
    assert max(float(np.abs(wm[k] - w0[k]).max()) for k in w0) > 1e-2  # it trained
    assert all(np.allclose(wm[k], wl[k], atol=2e-3) for k in w0)

    calls.clear()
    distill(student, teacher, data, **{**kw, "augment": True})
    assert len(calls) == len(data) + 30 * 4  # mixup makes new inputs: labelled every step


def test_a_kernel_that_cannot_be_mapped_trains_one_sample_at_a_time(monkeypatch) -> None:
    teacher = _static_mlp()
    data = [random_feeds(input_specs(teacher), seed=i) for i in range(4)]

    def tanh_reading_a_value(s, x):  # data-dependent Python: vmap refuses it
        return torch.tanh(x) if float(x.detach().sum()) == float(x.detach().sum()) else x

    monkeypatch.setitem(interpreter.OPS, "Tanh", tanh_reading_a_value)
    result = distill(_perturbed(teacher, 0.3, seed=5), teacher, data, steps=10, threads=1)
    assert result.report["vmapped"] is False and result.report["batched"] is False
    assert result.report["final_loss"] < result.report["initial_loss"]


def test_samples_of_different_shapes_are_not_mapped() -> None:
    """vmap stacks the batch: a graph whose non-batch dimension varies trains per sample."""
    rng = np.random.default_rng(8)
    teacher = _model(
        """
        seq (float[1, T, 6] X) => (float[1, 4] Y)
        {
          h = MatMul(X, W)
          Y = ReduceMean<keepdims = 0>(h, axes)
        }
        """,
        {"W": _w(rng, 6, 4), "axes": np.array([1], np.int64)},
    )
    data = [{"X": rng.standard_normal((1, 3 + i % 3, 6)).astype(np.float32)} for i in range(6)]
    student = _perturbed(teacher, 0.3, seed=6)
    for augment in (False, True):  # mixup + noise too: noise of one spread, any shape
        result = distill(student, teacher, data, steps=10, threads=1, augment=augment)
        assert result.report["vmapped"] is False and result.report["batched"] is False
        assert result.report["final_loss"] < result.report["initial_loss"]


def _static_conv() -> ir.Model:
    rng = np.random.default_rng(9)
    return _model(
        """
        sconv (float[1, 3, 12, 12] X) => (float[1, 4] Y)
        {
          c = Conv<pads = [1, 1, 1, 1]>(X, W1, B1)
          r = Relu(c)
          p = MaxPool<kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]>(r)
          g = GlobalAveragePool(p)
          f = Flatten(g)
          Y = Gemm<transB = 1>(f, W2, B2)
        }
        """,
        {"W1": _w(rng, 8, 3, 3, 3), "B1": _w(rng, 8), "W2": _w(rng, 4, 8), "B2": _w(rng, 4)},
    )


def test_conv_weights_train_channels_last_and_go_back_in_their_own_order() -> None:
    from robopt_compile.distill import train as dtrain

    model = _static_conv()
    module = OnnxModule(model)
    assert dtrain._channels_last(module) == 1  # W1; the Gemm's and the biases stay as they are
    w1 = module.named_onnx_parameters()["W1"]
    assert w1.is_contiguous(memory_format=torch.channels_last) and not w1.is_contiguous()
    back, before = _weights(dtrain._write_back(model, module)), _weights(model)
    assert all(np.array_equal(back[k], before[k]) for k in before)


def test_teacher_labels_are_kept_across_calls_on_growing_data(monkeypatch) -> None:
    """On-policy rounds distil again on the same frames plus new ones: with a shared
    ``label_cache`` the teacher labels only the new frames, and the weights are the same as
    when every call labels afresh."""

    teacher = _static_conv()
    student = _perturbed(teacher, 0.3, seed=10)
    data = [random_feeds(input_specs(teacher), seed=i) for i in range(10)]
    calls = _teacher_calls(monkeypatch)
    kw = {"steps": 12, "batch_size": 4, "threads": 1, "lr": 1e-3, "augment": False}
    cache: dict = {}
    first = distill(student, teacher, data[:6], label_cache=cache, **kw)
    assert first.report["vmapped"] and first.report["channels_last_tensors"] == 1
    assert len(calls) == 6 and sorted(cache) == list(range(6))
    calls.clear()
    kept = distill(first.model, teacher, data, label_cache=cache, **kw)
    assert len(calls) == 4 and sorted(cache) == list(range(10))  # the four new frames only
    calls.clear()
    fresh = distill(first.model, teacher, data, **kw)
    assert len(calls) == 10
    wk, wf = _weights(kept.model), _weights(fresh.model)
    assert all(np.array_equal(wk[k], wf[k]) for k in wk)
    assert kept.report["final_loss"] < first.report["initial_loss"]


def test_a_time_budget_fits_the_steps_to_it() -> None:
    """``seconds=``: after FIT_AFTER steps the step count is fitted to the call's budget (at
    most ``steps``); a budget that holds them all runs exactly ``steps``."""
    import time

    from robopt_compile.distill import train as dtrain

    teacher = _static_conv()
    student = _perturbed(teacher, 0.3, seed=11)
    data = [random_feeds(input_specs(teacher), seed=i) for i in range(10)]
    kw = {"batch_size": 4, "threads": 1, "lr": 1e-3, "augment": False}
    t0 = time.perf_counter()
    short = distill(student, teacher, data, steps=1_000_000, seconds=1.0, **kw)
    took = time.perf_counter() - t0
    fit = short.report["fitted"]
    assert dtrain.FIT_AFTER <= short.report["steps"] < 1_000_000
    assert fit["steps_asked"] == 1_000_000 and fit["seconds"] == 1.0
    assert fit["seconds_per_step"] > 0 and fit["measured_over"] >= dtrain.FIT_AFTER
    assert fit["fits"] >= 1 and isinstance(fit["stopped_at_budget"], bool)
    assert took < 3.0  # a second's budget, a loaded machine's slack; unfitted: hours
    assert short.report["final_loss"] < short.report["initial_loss"]
    roomy = distill(student, teacher, data, steps=30, seconds=600.0, **kw)
    assert roomy.report["steps"] == 30 and roomy.report["fitted"]["steps_asked"] == 30
    assert "fitted" not in distill(student, teacher, data, steps=12, **kw).report
