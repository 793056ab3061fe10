"""robopt's Python API: compile, plan, analyze, evaluate and bench a robot policy.

    import robopt_compile.api as robopt

    r = robopt.compile("zoo:state-mlp", out="out/mlp", threads=1)
    r = robopt.compile(module, example_inputs=(torch.rand(1, 12),), out="out/m")
    s = robopt.plan("zoo:visuomotor-cnn", out="out/auto", criteria={"max_latency_ms": 5})
    a = robopt.analyze("zoo:state-mlp", target="x86-64-avx512")
    e = robopt.evaluate("out/hop", episodes=20)
    b = robopt.bench("out/mlp", runs=200)

This is the layer every interface calls: the ``robopt-compile`` CLI (``robopt_compile.cli``)
only parses its options into these calls and prints what they return, and the web service
(``robopt_compile.service``) does the same. A source is a string (``zoo:NAME``, an ``.onnx``
or ``.pt2`` file, ``package.module:factory``, a local model folder) or a
``torch.nn.Module`` with ``example_inputs`` (a tensor, a tuple of tensors, or a dict name ->
tensor, as a factory returns them). Results are frozen dataclasses with ``to_json()`` (a
search returns the planner's ``SearchResult``). Errors are ``robopt_compile.errors.RoboptError``
children, each with the ``exit_code`` the CLI exits with. docs/API.md has examples.

Layout: ``common`` (callback types, sources, ``compile_options``), ``build`` (compile,
compile_fleet, plan, resume), ``measure`` (inspect, analyze, evaluate, bench), ``bundles``
(quant_report, report, targets). Nothing heavy is imported here (no torch, numpy or
runtime): each call imports what it needs.
"""

from __future__ import annotations

from robopt_compile.api.build import Compiled, compile, compile_fleet, plan, resume
from robopt_compile.api.bundles import QuantReport, Targets, quant_report, report, targets
from robopt_compile.api.common import Log, Progress, StorePath, Warn, compile_options
from robopt_compile.api.measure import (
    Analysis,
    Benchmark,
    Evaluation,
    analyze,
    bench,
    evaluate,
    inspect,
)

__all__ = [
    "Analysis", "Benchmark", "Compiled", "Evaluation", "Log", "Progress", "QuantReport",
    "StorePath", "Targets", "Warn", "analyze", "bench", "compile", "compile_fleet",
    "compile_options", "evaluate", "inspect", "plan", "quant_report", "report", "resume",
    "targets",
]  # fmt: skip
