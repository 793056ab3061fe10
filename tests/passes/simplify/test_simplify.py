"""SimplifyPass: structure and numerics on tiny graphs, for every simplifier that is installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from robopt_compile import ir as rir
from robopt_compile.errors import (
    BackendUnavailableError,
    CheckFailedError,
    PassError,
    UnknownNameError,
)
from robopt_compile.numerics import compare, random_feeds, run_onnx, worst
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.simplify import simplify
from robopt_compile.passes.simplify.simplify import SimplifyPass


def _tool_param(name: str):
    module = simplify.TOOLS[name].module.partition(".")[0]
    missing = importlib.util.find_spec(module) is None
    return pytest.param(
        name, marks=pytest.mark.skipif(missing, reason=f"{module} is not installed")
    )


TOOLS = [_tool_param(t) for t in ("onnxscript", "onnxslim", "onnxsim")]

_W = ", ".join(f"{v:.4f}" for v in np.linspace(-1.0, 1.0, 24 * 3))

# Shape->Gather->Mul->Concat->Reshape on the static dims of a dynamic-batch input, a Constant
# Add, an Identity chain and two dead nodes: all of it should fold away.
FOLDABLE = f"""
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 4, 6] X, int64[N] ids, bool[N] flag) => (float[N, 3] Y, float[N, 4, 6] Z, int64[N] K)
<float[24, 3] W = {{{_W}}}>
{{
  s = Shape(X)
  i1 = Constant<value = int64[1] {{1}}>()
  i2 = Constant<value = int64[1] {{2}}>()
  d1 = Gather<axis = 0>(s, i1)
  d2 = Gather<axis = 0>(s, i2)
  prod = Mul(d1, d2)
  m1 = Constant<value = int64[1] {{-1}}>()
  shp = Concat<axis = 0>(m1, prod)
  r = Reshape(X, shp)
  a = Constant<value = float[1] {{1.5}}>()
  b = Constant<value = float[1] {{2.0}}>()
  c = Add(a, b)
  id1 = Identity(r)
  id2 = Identity(id1)
  y0 = Mul(id2, c)
  Y = MatMul(y0, W)
  dead = Relu(X)
  dead2 = Sigmoid(dead)
  Z = Relu(X)
  zero = Constant<value = int64[1] {{0}}>()
  K = Where(flag, ids, zero)
}}
"""

SIMPLE = f"""
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 24] X) => (float[N, 3] Y)
<float[24, 3] W = {{{_W}}}, float[3] B = {{0.1, -0.2, 0.3}}>
{{
  h = MatMul(X, W)
  y = Add(h, B)
  Y = Relu(y)
}}
"""


def _model(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _ops(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph)


def _io(model: ir.Model) -> tuple[list, list]:
    return [(s.name, s.dtype, s.shape) for s in rir.input_specs(model)], [
        (s.name, s.dtype) for s in rir.output_specs(model)
    ]


def _assert_same_outputs(a: ir.Model, b: ir.Model, batch: int = 3) -> None:
    feeds = random_feeds(rir.input_specs(a), seed=7, batch=batch)
    w = worst(compare(run_onnx(a, feeds), run_onnx(b, feeds)))
    assert w["allclose"] and w["cosine"] > 0.99999, w


def _set_weight(model: ir.Model, name: str, scale: float) -> None:
    """A wrong rewrite: rebind (not mutate: clones share tensors) one weight to a new value."""
    init = model.graph.initializers[name]
    init.const_value = ir.tensor(init.const_value.numpy() * scale, name=name)


def test_registered() -> None:
    assert get_pass_class("simplify") is SimplifyPass


@pytest.mark.parametrize("tool", TOOLS)
def test_folds_chains_constants_identities_and_dead_nodes(tool: str) -> None:
    model = _model(FOLDABLE)
    p = SimplifyPass(tool=tool)
    result = p(model)
    out = result.model

    assert result.modified
    assert out is not model
    ops = _ops(out)
    for gone in ("Shape", "Gather", "Concat", "Identity", "Add", "Sigmoid"):
        assert ops[gone] == 0, (gone, ops)
    assert ops["Relu"] == 1 and ops["Reshape"] == 1 and ops["MatMul"] == 1
    reshape = next(n for n in out.graph if n.op_type == "Reshape")
    shape_in = reshape.inputs[1]
    assert shape_in.const_value is not None or shape_in.producer().op_type == "Constant"
    _assert_same_outputs(model, out)

    rep = p.report
    assert rep["tool"] == tool and rep["tool_version"]
    assert rep["nodes_before"] == len(model.graph) == 21
    assert rep["nodes_after"] == len(out.graph) < 10
    assert rep["op_delta"]["Sigmoid"] == -1 and rep["op_delta"]["Shape"] == -1
    parity = rep["parity"]
    assert parity["cosine"] >= 0.99999 and parity["max_abs"] <= 1e-5
    assert "batch1" in parity and "batch2" in parity  # symbolic N: checked at two batches
    json.dumps(rep)  # goes into report.json as is
    assert len(model.graph) == 21, "the input model must be left alone"


@pytest.mark.parametrize("tool", TOOLS)
def test_keeps_inputs_and_outputs(tool: str) -> None:
    model = _model(FOLDABLE)
    out = SimplifyPass(tool=tool)(model).model
    assert _io(out) == _io(model)
    assert rir.output_specs(out)[0].shape[0] == "N"  # batch stays symbolic


@pytest.mark.parametrize("tool", TOOLS)
def test_simple_graph_is_not_modified(tool: str) -> None:
    model = _model(SIMPLE)
    p = SimplifyPass(tool=tool)
    result = p(model)
    assert not result.modified
    assert result.model is not model  # a functional pass always returns a new model
    assert _ops(result.model) == _ops(model)
    assert p.report["parity"] is None and p.report["op_delta"] == {}
    _assert_same_outputs(model, result.model)


def test_renamed_and_resorted_graph_is_not_modified(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools rename values and re-sort nodes; that alone is not a change."""
    import onnxscript.optimizer

    def shuffle(model: ir.Model) -> None:
        for i, node in enumerate(model.graph):
            node.name = f"n{i}"
            for out in node.outputs:
                if out not in model.graph.outputs:
                    out.name = f"renamed_{out.name}"
        relu = next(
            n for n in model.graph if n.inputs[0] is model.graph.inputs[0] and n.op_type == "Relu"
        )
        model.graph.remove(relu)
        model.graph.insert_before(model.graph[0], relu)  # still topologically sorted

    monkeypatch.setattr(onnxscript.optimizer, "optimize", shuffle)
    model = _model(SIMPLE.replace("Y = Relu(y)", "Y = Relu(y)\n  Z = Relu(X)").replace(
        "(float[N, 3] Y)", "(float[N, 3] Y, float[N, 24] Z)"
    ))  # fmt: skip
    p = SimplifyPass(tool="onnxscript")
    result = p(model)
    assert not result.modified and p.report["parity"] is None
    assert result.model.graph[0].op_type == "MatMul"  # the input model's order, not the tool's


def test_none_returns_an_unmodified_copy() -> None:
    model = _model(FOLDABLE)
    p = SimplifyPass(tool="none")
    result = p(model)
    assert not result.modified and result.model is not model
    assert _ops(result.model) == _ops(model)
    assert p.report["tool_version"] is None


def test_wrong_rewrite_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    real = onnxscript.optimizer.optimize

    def bad_optimize(model: ir.Model) -> ir.Model:
        real(model)
        _set_weight(model, "W", 1.01)
        return model

    monkeypatch.setattr(onnxscript.optimizer, "optimize", bad_optimize)
    model = _model(FOLDABLE)
    before = model.graph.initializers["W"].const_value.numpy().copy()
    p = SimplifyPass(tool="onnxscript")
    with pytest.raises(CheckFailedError, match=r"changed output 'Y' at batch 1: cosine") as exc:
        p(model)
    assert "max_abs" in str(exc.value) and "try --simplify onnxslim" in str(exc.value)
    assert p.report["parity"]["max_abs"] > 1e-3  # the figures are kept for the compile report
    np.testing.assert_array_equal(model.graph.initializers["W"].const_value.numpy(), before)


@pytest.mark.parametrize("tool", [t for t in TOOLS if t.values[0] != "onnxscript"])
def test_changed_weight_alone_counts_as_a_change(
    tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same structure, different bytes: still ``modified``, so the check runs and fails."""
    run = simplify.TOOLS[tool].run

    def bad_run(mod: object, model: ir.Model) -> ir.Model:
        out = run(mod, model)
        _set_weight(out, next(iter(out.graph.initializers)), -1.0)
        return out

    monkeypatch.setitem(
        simplify.TOOLS, tool, dataclasses.replace(simplify.TOOLS[tool], run=bad_run)
    )
    with pytest.raises(CheckFailedError, match="changed output 'Y'"):
        SimplifyPass(tool=tool)(_model(SIMPLE))


def test_check_false_skips_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    monkeypatch.setattr(onnxscript.optimizer, "optimize", lambda m: _set_weight(m, "W", 2.0))
    p = SimplifyPass(tool="onnxscript", check=False)
    assert p(_model(SIMPLE)).modified
    assert p.report["parity"] is None


def test_baked_batch_is_caught_at_batch_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that folds the dynamic batch to 1 passes at batch 1 and must fail at 2."""
    import onnxscript.optimizer

    real = onnxscript.optimizer.optimize

    def bake_batch(model: ir.Model) -> None:
        real(model)
        reshape = next(n for n in model.graph if n.op_type == "Reshape")
        fixed = ir.Value(name="baked_shape", const_value=ir.tensor(np.array([1, 24], np.int64)))
        model.graph.register_initializer(fixed)
        reshape.replace_input_with(1, fixed)

    monkeypatch.setattr(onnxscript.optimizer, "optimize", bake_batch)
    with pytest.raises(CheckFailedError, match="cannot run at batch 2"):
        SimplifyPass(tool="onnxscript")(_model(FOLDABLE))


def test_tool_crash_is_a_pass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    def crash(model: ir.Model) -> None:
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(onnxscript.optimizer, "optimize", crash)
    with pytest.raises(PassError) as exc:
        SimplifyPass(tool="onnxscript")(_model(FOLDABLE))
    msg = str(exc.value)
    assert "simplify with onnxscript failed: RuntimeError: boom with a second line" in msg
    assert "try --simplify onnxslim or --simplify none" in msg and "\n" not in msg


def test_changed_outputs_are_a_pass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    real = onnxscript.optimizer.optimize

    def rename(model: ir.Model) -> None:
        real(model)
        model.graph.outputs[0].name = "renamed"

    monkeypatch.setattr(onnxscript.optimizer, "optimize", rename)
    with pytest.raises(PassError, match=r"changed the model outputs from \['Y', 'Z', 'K'\]"):
        SimplifyPass(tool="onnxscript")(_model(FOLDABLE))


def test_fixed_input_batch_is_a_pass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    def fix_batch(model: ir.Model) -> None:
        model.graph.inputs[0].shape = ir.Shape([1, 4, 6])

    monkeypatch.setattr(onnxscript.optimizer, "optimize", fix_batch)
    with pytest.raises(PassError, match="changed input 'X': shape"):
        SimplifyPass(tool="onnxscript")(_model(FOLDABLE))


CUSTOM_OP = """
<ir_version: 9, opset_import: ["" : 17, "com.example" : 1]>
g (float[N, 4] X) => (float[N, 4] Y)
{
  a = Identity(X)
  b = Identity(a)
  Y = com.example.MyPlugin(b)
}
"""


def test_unrunnable_input_model_asks_for_check_false() -> None:
    """A custom op ORT lacks: the check cannot run, so say so rather than guess."""
    model = ir.serde.deserialize_model(onnx.parser.parse_model(CUSTOM_OP))
    with pytest.raises(PassError, match=r"cannot run the input model.*check=False"):
        SimplifyPass(tool="onnxscript")(model)
    result = SimplifyPass(tool="onnxscript", check=False)(model)
    assert result.modified and [n.op_type for n in result.model.graph] == ["MyPlugin"]


def test_unknown_tool() -> None:
    with pytest.raises(UnknownNameError, match="onnxslim"):
        SimplifyPass(tool="onnxslm")


def test_missing_tool_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = dataclasses.replace(simplify.TOOLS["onnxsim"], module="robopt_no_such_module")
    monkeypatch.setitem(simplify.TOOLS, "onnxsim", fake)
    with pytest.raises(BackendUnavailableError, match="pip install onnxsim"):
        SimplifyPass(tool="onnxsim")(_model(SIMPLE))


@pytest.mark.parametrize("tool", [t for t in TOOLS if t.values[0] != "onnxscript"])
def test_proto_tools_refuse_models_past_the_protobuf_limit(
    tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simplify, "PROTO_WEIGHT_LIMIT", 100)
    with pytest.raises(PassError, match=r"limited to 2 GB.*--simplify onnxscript"):
        SimplifyPass(tool=tool)(_model(FOLDABLE))


@pytest.mark.parametrize("tool", TOOLS)
def test_external_data_model(tool: str, tmp_path) -> None:
    """Weights in a side file (how models over 1 GiB are stored) survive every tool."""
    path = tmp_path / "m.onnx"
    ir.save(_model(FOLDABLE), path, external_data="m.onnx.data", size_threshold_bytes=0)
    model = ir.load(path)  # rir.load reads small models into memory; giant ones stay like this
    assert isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)
    result = SimplifyPass(tool=tool)(model)
    assert result.modified and _ops(result.model)["Shape"] == 0
    _assert_same_outputs(model, result.model)
