"""The layer rules of docs/ARCHITECTURE.md hold (import-linter's contracts in pyproject.toml),
and the check fails when one is broken."""

from __future__ import annotations

from pathlib import Path

import pytest
from layers import check


def test_every_layer_contract_is_kept() -> None:
    proc = check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 5 kept, 0 broken." in proc.stdout


def _append(rel: str, line: str):
    def edit(pkg: Path) -> None:
        path = pkg / rel
        path.write_text(path.read_text() + "\n" + line + "\n")

    return edit


@pytest.mark.parametrize(
    ("contract", "rel", "line"),
    [
        ("robot-side", "bench/stats.py", "import torch"),
        ("passes-ir-only", "passes/base.py", "import robopt_compile.compile.pipeline"),
        ("targets-no-bench", "targets/onnxruntime.py", "import robopt_compile.bench.harness"),
        ("layers", "store/records.py", "import robopt_compile.plan.planner"),
        ("no-circles", "evaluate/spec.py", "import robopt_compile.compile.stages"),
    ],
)
def test_a_broken_rule_is_caught(contract: str, rel: str, line: str) -> None:
    proc = check(contract, edit=_append(rel, line))
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout + proc.stderr
