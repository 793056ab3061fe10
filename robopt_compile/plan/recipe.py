"""Recipe files (``--recipe criteria.toml``): optimization criteria CI keeps in a repository.

Validated at the edge with a typed model (pydantic, strict: ``"fast"`` or ``true`` is not a
latency), so a bad value is one line naming the key, the value and what is allowed, exit 2,
before any work; the planner then receives plain ``OptimizationCriteria`` keyword arguments.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from robopt_compile.errors import InputError
from robopt_compile.plan.planner import OBJECTIVES, PERCENTILES, TECHNIQUES, parse_budget
from robopt_compile.precision import PRECISIONS as TABLE

PRECISIONS = tuple(TABLE)

# What each key allows, for the error line.
ALLOWED = {
    "max_latency_ms": "a number of milliseconds >= 0",
    "latency_percentile": f"one of {', '.join(PERCENTILES)}",
    "max_accuracy_drop": "a number >= 0",
    "max_size_mb": "a number of MB >= 0",
    "max_memory_mb": "a number of MB >= 0",
    "objective": f"one of {', '.join(OBJECTIVES)}",
    "techniques": f"a list (or comma-separated string) of {', '.join(TECHNIQUES)}",
    "search_budget": "seconds as a number, or a string such as 90s, 10m, 1.5h",
    "precisions": f"a list (or comma-separated string) of {', '.join(PRECISIONS)}",
}


def _model() -> Any:
    """The pydantic model, built on first use (pydantic is not needed by --help)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    bound = Field(None, ge=0, allow_inf_nan=False)
    seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
    duration = Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*[smhSMH]?\s*$")]

    class Recipe(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        max_latency_ms: float | None = bound
        latency_percentile: Literal[PERCENTILES] | None = None  # type: ignore[valid-type]
        max_accuracy_drop: float | None = bound
        max_size_mb: float | None = bound
        max_memory_mb: float | None = bound
        objective: Literal[OBJECTIVES] | None = None  # type: ignore[valid-type]
        techniques: list[Literal[TECHNIQUES]] | None = None  # type: ignore[valid-type]
        search_budget: seconds | duration | None = None
        precisions: list[Literal[PRECISIONS]] | None = None  # type: ignore[valid-type]

    return Recipe


def _split(data: dict[str, Any]) -> dict[str, Any]:
    """Comma-separated strings for the list keys, as the command-line flags take them."""
    out = dict(data)
    for key in ("techniques", "precisions"):
        if isinstance(out.get(key), str):
            out[key] = [t.strip() for t in out[key].split(",") if t.strip()]
    return out


def validate(data: Any, where: str) -> dict[str, Any]:
    """Check a parsed recipe table; return ``OptimizationCriteria`` keyword arguments.

    Raises:
        InputError: one line naming the first bad key, its value and what is allowed.
    """
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise InputError(f"{where}: the recipe must be a table of criteria.")
    data = data.get("criteria", data)
    if not isinstance(data, dict):
        raise InputError(f"{where}: [criteria] must be a table of criteria.")
    unknown = sorted(set(data) - set(ALLOWED))
    if unknown:
        raise InputError(f"{where}: unknown recipe keys {unknown}; known: {sorted(ALLOWED)}.")
    try:
        recipe = _model()(**_split(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0])
        value = data.get(key, err.get("input"))
        raise InputError(
            f"{where}: {key} = {value!r} is not allowed ({err['msg'].lower()}); "
            f"{key} takes {ALLOWED[key]}."
        ) from None
    out = {k: v for k, v in recipe.model_dump().items() if v is not None}
    if "search_budget" in out:
        out["search_budget_s"] = parse_budget(str(out.pop("search_budget")))
    for key in ("techniques", "precisions"):
        if key in out:
            out[key] = tuple(out[key])
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Criteria from a recipe file (TOML, or YAML with PyYAML installed).

    The file holds the criteria keys at top level or under ``[criteria]``; flags given on the
    command line override it.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such recipe file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the recipe ({exc}).") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InputError(
                f"{p}: YAML recipes need PyYAML (pip install pyyaml); or write it as TOML."
            ) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{p}: cannot parse the recipe: {exc}".splitlines()[0]) from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{p}: cannot parse the recipe: {exc}".splitlines()[0]) from None
    return validate(data, str(p))
