"""PassRunner: instruments time every pass, dump the IR, collect facts; errors are typed."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from robopt_compile.errors import PassError
from robopt_compile.passes import PASSES, get_pass_class
from robopt_compile.passes.base import (
    AnalysisPass,
    DumpIRInstrument,
    PassRunner,
    TimingInstrument,
)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
  a = Identity(x)
  y = Relu(a)
}
"""


def model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(TEXT))


class CountOps(AnalysisPass):
    name = "count-ops"

    def analyze(self, model):
        return {"n": len(model.graph)}


class DropIdentity(ir.passes.InPlacePass):
    def call(self, model):
        from onnx_ir.passes.common import IdentityEliminationPass

        return IdentityEliminationPass()(model)


class Evil(AnalysisPass):
    name = "evil"

    def analyze(self, model):
        model.graph.remove(next(iter(model.graph)), safe=False)
        return {}

    def call(self, model):
        super().call(model)
        return ir.passes.PassResult(model, modified=True)


class Crash(ir.passes.InPlacePass):
    def call(self, model):
        raise ValueError("boom")


def test_timing_dump_and_facts(tmp_path):
    timing = TimingInstrument()
    runner = PassRunner([timing, DumpIRInstrument(tmp_path)])
    out = runner.run([CountOps(), DropIdentity(), CountOps()], model())
    assert [r.name for r in timing.records] == ["count-ops", "drop-identity", "count-ops"]
    assert timing.records[1].modified and timing.records[1].nodes_before == 2
    assert timing.records[1].nodes_after == 1
    assert runner.facts["count-ops"] == {"n": 1}  # the later run's facts
    assert len(out.graph) == 1
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == [
        "00-input.onnx",
        "01-count-ops.onnx",
        "02-drop-identity.onnx",
        "03-count-ops.onnx",
    ]
    assert len(onnx.load(tmp_path / "02-drop-identity.onnx").graph.node) == 1


def test_analysis_pass_that_modifies_is_caught():
    with pytest.raises(PassError, match="changed the model"):
        PassRunner().run([Evil()], model())


def test_crash_becomes_pass_error():
    with pytest.raises(PassError, match="boom"):
        PassRunner().run([Crash()], model())


def test_every_registered_pass_imports():
    for name in PASSES:
        assert get_pass_class(name).__name__.endswith("Pass")
