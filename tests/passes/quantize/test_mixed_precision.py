"""Mixed precision: graph surgery back to fp32 and the sensitivity-ordered search."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from robopt_compile.errors import PassError
from robopt_compile.passes.quantize.mixed_precision import (
    dequantize_nodes,
    quantized_compute_nodes,
    search,
)


def _export_and_quantize(module, shape, d):
    """``module`` exported to ``d/f.onnx`` and ONNX Runtime's QDQ int8 of it (8 random
    calibration samples of ``shape``): the (float, quantized) models."""
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    torch.onnx.export(module, (torch.randn(*shape),), str(d / "f.onnx"), dynamo=True,
                      verbose=False, input_names=["x"])  # fmt: skip
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal(shape, np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "f.onnx"), str(d / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)  # fmt: skip
    f, q = ir.load(d / "f.onnx"), ir.load(d / "q.onnx")
    ir.external_data.load_to_model(f)
    ir.external_data.load_to_model(q)
    return f, q


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A Conv-Relu-Conv-Gemm model and ONNX Runtime's QDQ int8 version of it."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
        torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 4),
    ).eval()  # fmt: skip
    return _export_and_quantize(m, (1, 3, 16, 16), tmp_path_factory.mktemp("mp"))


def run(model, x):
    import onnxruntime as ort

    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.random.default_rng(1).standard_normal((1, 3, 16, 16), np.float32)


def test_quantized_nodes_found(models):
    _, q = models
    names = quantized_compute_nodes(q)
    ops = {n.name: n.op_type for n in q.graph}
    assert {ops[n] for n in names} >= {"Conv", "Gemm"}


def test_all_layers_back_to_fp32_is_exactly_fp32(models):
    f, q = models
    d = dequantize_nodes(q, f, quantized_compute_nodes(q))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in d.graph)
    # the Relu ORT's quantizer folded into the unsigned Q is restored
    assert [n.op_type for n in d.graph].count("Relu") == 1
    np.testing.assert_array_equal(run(d, X), run(f, X))
    assert len(q.graph) > len(d.graph)  # the input model is untouched
    assert np.abs(run(q, X) - run(f, X)).max() > 0


def test_one_layer_back_to_fp32(models):
    f, q = models
    first = next(n for n in q.graph if n.op_type == "Conv")
    d = dequantize_nodes(q, f, [first.name])
    node = next(n for n in d.graph if n.name == first.name)
    assert all(
        v.producer() is None or v.producer().op_type != "DequantizeLinear" for v in node.inputs
    )
    fw = next(n for n in f.graph if n.name == first.name).inputs[1].const_value.numpy()
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), fw)  # fp32 weights
    others = [n for n in d.graph if n.op_type == "Conv" and n.name != first.name]
    assert any(v.producer() and v.producer().op_type == "DequantizeLinear"
               for n in others for v in n.inputs)  # fmt: skip


def test_unknown_node_is_an_error(models):
    f, q = models
    with pytest.raises(PassError, match="not in the quantized model"):
        dequantize_nodes(q, f, ["no_such_node"])


def test_search_keeps_fewest_sensitive_layers(models):
    f, q = models
    names = quantized_compute_nodes(q)
    # A synthetic score: each layer contributes a known error while quantized.
    cost = {n: 0.001 * (i + 1) for i, n in enumerate(names)}
    cost[names[0]] = 0.05  # one very sensitive layer

    def score(model):
        quantized = set(quantized_compute_nodes(model))
        return {"drop": sum(c for n, c in cost.items() if n in quantized)}

    res = search(q, f, score, bound=0.02)
    assert res.met and res.fp32_nodes == [names[0]]
    assert res.figures["drop"] <= 0.02
    table = {r["node"]: r for r in res.table()}
    assert table[names[0]]["precision"] == "fp32"
    assert table[names[0]]["sensitivity"] == pytest.approx(0.05)
    unreachable = search(q, f, score, bound=-1.0)
    assert not unreachable.met and unreachable.fp32_nodes == []
    met_already = search(q, f, score, bound=1.0)
    assert met_already.met and met_already.evaluations == 1


def test_a_bottleneck_block_input_restored_once(tmp_path):
    """Issue 22: in a ResNet bottleneck the block's input (a Relu that ORT's quantizer folds
    into its Q) feeds the first 1x1 conv and the shortcut's Add; with both back in fp32 the
    Relu was restored twice under one node name, which ONNX Runtime refused to load."""
    import torch

    class Bottleneck(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c1, self.c2 = torch.nn.Conv2d(16, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1)
            self.c3, self.c4 = torch.nn.Conv2d(4, 16, 1), torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            r = torch.relu(self.stem(x))
            y = self.c3(torch.relu(self.c2(torch.relu(self.c1(r)))))
            return self.c4(torch.relu(y + r))

    torch.manual_seed(0)
    f, q = _export_and_quantize(Bottleneck().eval(), (1, 3, 8, 8), tmp_path)
    names = quantized_compute_nodes(q)
    d = dequantize_nodes(q, f, names)
    node_names = [n.name for n in d.graph if n.name]
    assert len(node_names) == len(set(node_names))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8), np.float32)
    np.testing.assert_allclose(run(d, x), run(f, x), rtol=1e-5, atol=1e-5)
