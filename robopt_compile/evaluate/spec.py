"""What to evaluate: the ``--eval`` spec, and the task a model or bundle was trained for.

No simulator, runtime or torch here: the CLI parses ``--eval`` before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.tasks import Task

DEFAULT_EPISODES = 50


@dataclass
class EvalSpec:
    """``--eval task:episodes=50,seed=0,name=TASK,metric=return|success``."""

    episodes: int = DEFAULT_EPISODES
    seed: int = 0
    task: str | None = None  # None: the zoo model's task
    metric: str | None = None  # None: the task's default (success for Reacher, else return)
    samples: int | None = None  # --calibration only: steps kept (None: 512)


def parse_eval_spec(spec: str, option: str = "--eval") -> EvalSpec:
    """Parse ``task[:key=value,...]``; a bad spec is one ``InputError`` line."""
    kind, _, rest = spec.partition(":")
    if kind != "task":
        raise InputError(
            f"--eval {spec!r}: only closed-loop task evaluation is supported here, e.g. "
            "--eval task:episodes=50 (open-loop datasets: robopt-compile evaluate --dataset)."
        )
    out = EvalSpec()
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            if key == "episodes":
                out.episodes = int(value)
            elif key == "seed":
                out.seed = int(value)
            elif key in ("name", "task"):
                out.task = value
            elif key == "metric":
                if value not in ("return", "success"):
                    raise ValueError
                out.metric = value
            elif key == "samples" and option == "--calibration":
                out.samples = int(value)
                if not 16 <= out.samples <= 100_000:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            extra = ", samples=16..100000" if option == "--calibration" else ""
            raise InputError(
                f"{option} {spec!r}: cannot read {item!r}; keys are episodes=N, seed=N, "
                f"name=TASK, metric=return|success{extra}."
            ) from None
    if out.episodes < 2:
        raise InputError(f"{option} {spec!r}: episodes must be at least 2.")
    return out


def default_metric(task: Task) -> str:
    """The task's own choice: success for Reacher and Meta-World, return for pybullet."""
    return task.metric


def looks_like_bundle(path: str | Path) -> bool:
    """A folder with a manifest is a bundle; anything else is a model source."""
    return (Path(path) / "manifest.json").is_file()


def task_for_manifest(manifest: dict[str, Any]) -> str | None:
    """The zoo task of a bundle's model, if its source is a trained zoo model."""
    return task_for_source(str(manifest.get("model", {}).get("source", "")))


def task_for_source(source: str) -> str | None:
    """The task of a trained zoo model (``zoo:NAME``), or of a bundle built from one."""
    from robopt_compile.zoo import ZOO

    if looks_like_bundle(source):
        import json

        return task_for_manifest(json.loads((Path(source) / "manifest.json").read_text()))
    if source.startswith("zoo:"):
        entry = ZOO.get(source.removeprefix("zoo:"))
        return entry.task if entry else None
    return None
