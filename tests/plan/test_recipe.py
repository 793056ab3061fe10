"""Recipe files: typed at the edge, one line naming the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from robopt_compile.errors import EXIT_BAD_INPUT, InputError
from robopt_compile.plan.planner import OptimizationCriteria
from robopt_compile.plan.recipe import load_recipe


def test_recipe_toml(tmp_path: Path) -> None:
    p = tmp_path / "recipe.toml"
    p.write_text(
        '[criteria]\nmax_latency_ms = 5\nobjective = "size"\ntechniques = "quantize,prune"\n'
        'search_budget = "10m"\nprecisions = ["int8", "fp32"]\n'
    )
    kw = load_recipe(p)
    assert kw == {"max_latency_ms": 5, "objective": "size", "techniques": ("quantize", "prune"),
                  "search_budget_s": 600.0, "precisions": ("int8", "fp32")}  # fmt: skip
    OptimizationCriteria(**kw)
    (tmp_path / "bad.toml").write_text("max_latency = 5\n")
    with pytest.raises(InputError, match="unknown recipe keys"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("max_latency_ms = \n")
    with pytest.raises(InputError, match="cannot parse"):
        load_recipe(tmp_path / "broken.toml")
    with pytest.raises(InputError, match="no such recipe"):
        load_recipe(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("line", "key", "allowed"),
    [
        ('max_latency_ms = "fast"', "max_latency_ms = 'fast'", "milliseconds"),
        ("max_latency_ms = true", "max_latency_ms = True", "milliseconds"),
        ("max_accuracy_drop = -0.1", "max_accuracy_drop = -0.1", ">= 0"),
        ("max_size_mb = inf", "max_size_mb = inf", ">= 0"),
        ('precisions = ["int7"]', "precisions = ['int7']", "int4-weight"),
        ('precisions = "fp32,int7"', "precisions = 'fp32,int7'", "int8"),
        ('objective = "speed"', "objective = 'speed'", "latency, size, memory"),
        ('techniques = ["quantize", 3]', "techniques = ['quantize', 3]", "prune"),
        ('search_budget = "soon"', "search_budget = 'soon'", "10m"),
        ('latency_percentile = "p95"', "latency_percentile = 'p95'", "p50, p99"),
    ],
)
def test_recipe_values_are_typed(tmp_path: Path, line: str, key: str, allowed: str) -> None:
    p = tmp_path / "r.toml"
    p.write_text(line + "\n")
    with pytest.raises(InputError) as info:
        load_recipe(p)
    msg = str(info.value)
    assert key in msg and allowed in msg and "\n" not in msg, msg
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_cli_refuses_a_bad_recipe_in_one_line(tmp_path: Path, capsys) -> None:
    from helpers import run_cli

    p = tmp_path / "r.toml"
    p.write_text('max_latency_ms = "fast"\n')
    out = tmp_path / "o"
    code, _, err = run_cli(["zoo:state-mlp", "--recipe", str(p), "-o", str(out)], capsys)
    assert code == EXIT_BAD_INPUT
    assert err.strip().splitlines()[-1].startswith("robopt-compile: error:")
    assert "max_latency_ms = 'fast'" in err and "Traceback" not in err
    assert not out.exists()
