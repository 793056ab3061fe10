"""The one interface every backend implements.

``Backend.build(model_path, profile, options, out_dir) -> Artifact`` turns the bundle's optimized
ONNX into an engine for one board; ``Backend.runner(artifact)`` returns a ``Runner``, a context
manager with ``infer(feeds) -> outputs`` (Polygraphy's loader/runner split). Runners are what the
on-robot harness uses, so this module and every backend's runner import nothing heavier than
numpy at module level; build code imports onnx/onnx_ir inside ``build``.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.paths import member


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for, resolved: precision and runtime threading."""

    precision: str = "fp32"
    threads: int | None = None  # None: the runtime's default (all cores)
    tune_trials: int | None = None  # TVM MetaSchedule trial budget; None: the backend default
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) for a symbolic batch
    # OpenVINO: the precision activations are computed in ("f32"/"bf16"), overriding what the
    # precision implies (multi-graph bundles' --activations); None: the precision's own.
    activations: str | None = None


@dataclass(frozen=True)
class Artifact:
    """An engine on disk: its files (relative to ``root``) and how to run them.

    ``config`` is what the runner needs to reproduce the build's runtime settings on the robot
    (execution provider, precision hint, graph optimisation level); it is stored in the manifest.
    """

    backend: str
    root: Path
    files: tuple[str, ...]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "files": list(self.files), "config": self.config}

    @classmethod
    def from_json(cls, d: dict[str, Any], root: Path) -> Artifact:
        return cls(d["backend"], Path(root), tuple(d["files"]), dict(d.get("config", {})))


class Runner(abc.ABC):
    """Runs an engine: ``with backend.runner(artifact) as r: outputs = r.infer(feeds)``.

    Public methods validate; subclasses implement ``_activate``, ``_infer`` and ``_deactivate``.
    """

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        self.artifact = artifact
        self.threads = threads
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._active = False

    def __enter__(self) -> Runner:
        self._activate()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        self._deactivate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise RuntimeError("Runner.infer called outside its `with` block")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}; the engine takes {self.input_names}.")
        return self._infer(feeds)

    def engine_file(self, key: str = "model") -> Path:
        """The file ``config[key]`` names: one of the artifact's files, inside its folder and
        reached without a symbolic link (``robopt_compile.paths.member``). Runners open engine
        files only through this, before they import their runtime."""
        root = self.artifact.root
        return member(root, self.artifact.config.get(key), f"{root}: engine.config.{key}",
                      self.artifact.files)  # fmt: skip

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call that runs the engine on ``feeds`` with the least overhead.

        The harness times this call: backends override it to preset inputs once (OpenVINO input
        tensors, ONNX Runtime feed dict) so that only the runtime's own work is measured.
        """
        return partial(self._infer, dict(feeds))

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:  # noqa: B027 - optional hook
        """Release the session; the default relies on garbage collection."""


class Backend(abc.ABC):
    """A target backend: builds engines for a profile and runs them."""

    name: str = ""
    runtime_module: str = ""  # the Python module the runner needs on the robot
    pip_extra: str = ""  # what to install: `pip install robopt-compile[<extra>]`
    precisions: tuple[str, ...] = ("fp32",)

    def availability(self) -> tuple[bool, str]:
        """(available, reason). Checks the runtime is importable without importing it."""
        if importlib.util.find_spec(self.runtime_module) is None:
            return False, (
                f"{self.runtime_module} is not installed "
                f"(pip install 'robopt-compile[{self.pip_extra}]')"
            )
        return True, f"{self.runtime_module} is installed"

    def runs_here(self, profile: Any) -> tuple[bool, str]:
        """(runs, reason): whether an engine built for ``profile`` can run on this machine,
        beyond the runtime being installed and the CPU architecture matching (a device)."""
        return True, ""

    def require(self) -> None:
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r} cannot run here: {why}.")

    @abc.abstractmethod
    def build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        """Build an engine from the ONNX at ``model_path`` into ``out_dir``."""

    @abc.abstractmethod
    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        """A runner for ``artifact``; it imports only numpy and the runtime."""
