"""Pass infrastructure: analysis passes, the pass runner and its instruments.

Transform passes are plain ``onnx_ir.passes`` passes (``InPlacePass`` / ``FunctionalPass``):
their constructor arguments are their configuration and ``call(model)`` returns
``PassResult(model, modified)``. Analysis passes add one rule: they never change the model and
leave what they found in ``facts`` (JSON-serialisable), which the pipeline collects by pass name.

``PassRunner`` runs a sequence with instruments (TVM's ``run_before_pass``/``run_after_pass``),
which is how per-pass timing and ``--dump-ir DIR`` work without any pass knowing about them.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from robopt_compile.errors import PassError, RoboptError


class AnalysisPass(ir.passes.InPlacePass):
    """A pass that reads the model and writes facts; ``modified`` is always False."""

    name: str = "analysis"

    def __init__(self) -> None:
        super().__init__()
        self.facts: dict[str, Any] = {}

    @abc.abstractmethod
    def analyze(self, model: ir.Model) -> dict[str, Any]:
        """Return JSON-serialisable facts about ``model`` without changing it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.facts = self.analyze(model)
        return ir.passes.PassResult(model, modified=False)


def pass_name(p: ir.passes.PassBase) -> str:
    name = getattr(p, "name", None)
    if isinstance(name, str) and name not in ("analysis", ""):
        return name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", type(p).__name__.removesuffix("Pass")).lower()


class PassInstrument:
    """Hooks called around every pass the runner executes."""

    def run_before_pass(self, p: ir.passes.PassBase, model: ir.Model) -> None:
        """Called before ``p`` runs on ``model``."""

    def run_after_pass(
        self, p: ir.passes.PassBase, result: ir.passes.PassResult, seconds: float
    ) -> None:
        """Called after ``p`` returned ``result`` in ``seconds``."""


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 6),
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
        }


@dataclass
class TimingInstrument(PassInstrument):
    """Records wall time, node counts and ``modified`` for every pass."""

    records: list[PassRecord] = field(default_factory=list)
    _nodes_before: int = 0

    def run_before_pass(self, p: ir.passes.PassBase, model: ir.Model) -> None:
        self._nodes_before = len(model.graph)

    def run_after_pass(
        self, p: ir.passes.PassBase, result: ir.passes.PassResult, seconds: float
    ) -> None:
        self.records.append(
            PassRecord(
                pass_name(p), seconds, result.modified, self._nodes_before, len(result.model.graph)
            )
        )


@dataclass
class DumpIRInstrument(PassInstrument):
    """Writes the input to ``DIR/00-input.onnx`` and the model after every pass to
    ``DIR/NN-<pass>.onnx`` (``--dump-ir DIR``). Dumps stay after a failed compile on purpose:
    they are how a failing pass is debugged."""

    directory: Path
    _count: int = 0

    def run_before_pass(self, p: ir.passes.PassBase, model: ir.Model) -> None:
        from robopt_compile import ir as rir

        if self._count == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            rir.save(model, self.directory / "00-input.onnx")

    def run_after_pass(
        self, p: ir.passes.PassBase, result: ir.passes.PassResult, seconds: float
    ) -> None:
        from robopt_compile import ir as rir

        self._count += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        rir.save(result.model, self.directory / f"{self._count:02d}-{pass_name(p)}.onnx")


class PassRunner:
    """Runs passes in order with instruments; collects analysis facts by pass name."""

    def __init__(self, instruments: Sequence[PassInstrument] = ()) -> None:
        self.instruments = list(instruments)
        self.facts: dict[str, Any] = {}

    def run(self, passes: Sequence[ir.passes.PassBase], model: ir.Model) -> ir.Model:
        for p in passes:
            for inst in self.instruments:
                inst.run_before_pass(p, model)
            start = time.perf_counter()
            try:
                result = p(model)
            except RoboptError:
                raise
            except Exception as exc:  # any pass (onnx_ir's too) may raise any type; named here
                raise PassError(
                    f"pass {pass_name(p)!r} failed on this model: {type(exc).__name__}: "
                    f"{str(exc)[:200]}. Re-run with --debug for details, or skip the pass."
                ) from exc
            seconds = time.perf_counter() - start
            if result.modified:
                from robopt_compile.ir import duplicate_names

                dups = duplicate_names(result.model)
                if dups:  # ONNX Runtime refuses such a graph; say which pass made it
                    raise PassError(
                        f"pass {pass_name(p)!r} made an invalid graph ({'; '.join(dups[:3])}); "
                        "this is a robopt bug: re-run with --debug and report it, or skip the "
                        "pass."
                    )
            for inst in self.instruments:
                inst.run_after_pass(p, result, seconds)
            if isinstance(p, AnalysisPass):
                if result.modified or result.model is not model:
                    raise PassError(f"analysis pass {pass_name(p)!r} changed the model (a bug).")
                self.facts[pass_name(p)] = p.facts
            model = result.model
        return model
