"""OpHistogramPass: node counts per (domain, op_type), subgraphs and functions included."""

from __future__ import annotations

import json

from robopt_compile.passes.analysis.op_histogram import OpHistogramPass

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "custom.x": 1, "local": 1]>
g (float[N,4] x, bool c) => (float[N,4] y) {
  r = Relu(x)
  s = Relu(r)
  t = custom.x.Foo(s)
  u = local.double(t)
  y = If(c) <
    then_branch: graph = g1 () => (float[N,4] a) { a = Add(u, u) },
    else_branch: graph = g2 () => (float[N,4] b) { b0 = Mul(u, u)
      b = Relu(b0) }
  >
}
<domain: "local", opset_import: ["" : 17]>
double (p) => (q) {
  q = Add(p, p)
}
"""


def test_counts_include_subgraphs_and_domains(build, unchanged) -> None:
    facts = unchanged(OpHistogramPass(), build(MODEL))
    assert facts["by_op"] == {
        "Relu": 3,  # two in the main graph, one in the else branch
        "custom.x::Foo": 1,
        "local::double": 1,
        "If": 1,
        "Add": 1,
        "Mul": 1,
    }
    assert facts["total_nodes"] == 8
    assert facts["top_level_nodes"] == 5
    assert facts["subgraph_nodes"] == 3
    assert facts["distinct_ops"] == 6
    assert facts["ops"][0] == {
        "domain": "",
        "op_type": "Relu",
        "key": "Relu",
        "count": 3,
        "opset": 17,
    }
    foo = next(o for o in facts["ops"] if o["op_type"] == "Foo")
    assert foo["domain"] == "custom.x" and foo["opset"] == 1
    json.dumps(facts)


def test_opsets_and_function_bodies(build, unchanged) -> None:
    facts = unchanged(OpHistogramPass(), build(MODEL))
    assert facts["opset_imports"] == {"": 17, "custom.x": 1, "local": 1}
    assert facts["function_nodes"] == 1
    assert [(o["key"], o["count"]) for o in facts["function_ops"]] == [("Add", 1)]


def test_ai_onnx_domain_is_the_default_domain(build, unchanged) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }
        """
    )
    model.graph[0].domain = "ai.onnx"
    facts = unchanged(OpHistogramPass(), model)
    assert facts["by_op"] == {"Relu": 1}
