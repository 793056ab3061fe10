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
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError, install_hint
from robopt_compile.paths import member


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for, resolved: precision and runtime threading."""

    precision: str = "fp32"
    threads: int | None = None  # None: the runtime's default (all cores)
    robot_threads: int | None = None  # TVM num-cores; None: the board's cores (host: threads)
    tune_trials: int | None = None  # TVM MetaSchedule trial budget; None: the backend default
    dynamic_batch: tuple[int, int, int] | None = None  # (min, opt, max) for a symbolic batch
    # OpenVINO: the precision activations are computed in ("f32"/"bf16"), overriding what the
    # precision implies (multi-graph bundles' --activations); None: the precision's own.
    activations: str | None = None
    # Where independent build work may run (robopt's --executor: ``map`` and ``workers``);
    # TVM tunes its kernels there. Not part of what is built: compare=False, and ``key()``
    # leaves it out.
    executor: Any = field(default=None, compare=False, repr=False)

    def key(self) -> dict[str, Any]:
        """The options that decide the engine (a cache key's part)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}


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

    def infer_unchecked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``infer`` without its per-call checks, for a loop whose feeds were checked once
        (a closed-loop episode: the same names, shapes and dtypes every step)."""
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


class BareLoop(abc.ABC):
    """The runtime called directly, with the runner's settings, in the plainest timed loop:
    the floor ``robopt-bench --overhead`` measures the harness against.

    A backend's bare loop repeats its runner's session settings instead of calling into the
    runner, so the floor does not share code with what it measures; tests/bench checks the two
    agree so the comparison stays fair.
    """

    @abc.abstractmethod
    def __init__(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None
    ) -> None: ...

    @abc.abstractmethod
    def block(self, n: int) -> list[int]:
        """Latencies in ns of ``n`` back-to-back calls."""


# One node's per-layer figures, summed over runs: name -> {"op_type", "total_us", "calls", ...}
NodeTimes = dict[str, dict[str, Any]]
# (nodes, each run's ms, how it was measured) from a backend's own profiler
LayerProfile = tuple[NodeTimes, list[float], dict[str, Any]]


def add_node_time(nodes: NodeTimes, name: str, op_type: str, us: float, **extra: Any) -> None:
    """Add one node execution of ``us`` microseconds to ``nodes``."""
    entry = nodes.setdefault(name, {"op_type": op_type, "total_us": 0.0, "calls": 0, **extra})
    entry["total_us"] += us
    entry["calls"] += 1


class Backend(abc.ABC):
    """A target backend: builds engines for a profile and runs them.

    What a backend can do is declared here, next to its code, and read by everyone else: the
    precisions it builds, the quantization pass each precision needs, whether it builds where
    its runtime is missing (a deferred build completed on the device), whether it runs
    multi-graph bundles, and the options ``configure()`` takes.
    """

    name: str = ""
    runtime_module: str = ""  # the Python module the runner needs on the robot
    pip_extra: str = ""  # robopt's extra that installs the runtime (errors.install_hint)
    static_shapes: bool = False  # True: builds fixed shapes only (a symbolic batch gets 1)
    precisions: tuple[str, ...] = ("fp32",)
    # precision -> (registered quantize pass, its keyword arguments) for the precisions whose
    # ONNX must be rewritten before this backend builds it (Q/DQ, MatMulNBits, fp16 types)
    quantizers: dict[str, tuple[str, dict[str, Any]]] = {}  # noqa: RUF012 - read-only table
    builds_without_runtime: bool = False  # build() writes a recipe the device completes
    multigraph: bool = False  # runs the graphs of multi-graph bundles (VLA, diffusion policy)
    option_names: tuple[str, ...] = ()  # what configure() takes

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def configure(self, **options: Any) -> Backend:
        """Set backend options (e.g. TensorRT's ``dla_core``); returns self.

        Raises:
            InputError: an option this backend does not take (the message names the backends
                that take it).
        """
        for key in options:
            if key not in self.option_names:
                from robopt_compile.targets.registry import TARGETS, get_backend

                takers = [n for n in TARGETS if key in get_backend(n).option_names]
                flag = "--" + key.replace("_", "-")
                raise InputError(
                    f"{flag} needs the {' or '.join(takers) or 'no'} backend, not {self.name!r}."
                )
        self.options.update(options)
        return self

    def check_precision(self, precision: str) -> None:
        """Raises InputError when this backend does not build ``precision``."""
        if precision not in self.precisions:
            raise InputError(
                f"backend {self.name!r} does not build {precision!r} in this robopt version; "
                f"it builds {list(self.precisions)}."
            )

    def availability(self) -> tuple[bool, str]:
        """(available, reason). Checks the runtime is importable without importing it."""
        if importlib.util.find_spec(self.runtime_module) is None:
            return False, (
                f"{self.runtime_module} is not installed ({install_hint(self.pip_extra)})"
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

    def build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        """Build an engine from the ONNX at ``model_path`` into ``out_dir``.

        Raises:
            BuildError: a precision this backend does not build (the compile refuses that
                earlier with ``check_precision``), or the runtime rejected the model.
        """
        if options.precision not in self.precisions:
            raise BuildError(
                f"{self.name} backend builds {list(self.precisions)}, not {options.precision!r}."
            )
        return self._build(model_path, profile, options, out_dir)

    @abc.abstractmethod
    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact: ...

    @abc.abstractmethod
    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        """A runner for ``artifact``; it imports only numpy and the runtime."""

    def bare_loop(
        self, artifact: Artifact, feeds: dict[str, np.ndarray], threads: int | None
    ) -> BareLoop:
        """The runtime's plainest timed loop over ``artifact`` (``robopt-bench --overhead``).

        Raises:
            InputError: this backend has none yet.
        """
        raise InputError(f"no bare-loop reference for backend {self.name!r} yet.")

    def profile_layers(
        self, model: Path, config: dict[str, Any], feeds: dict[str, Any], runs: int,
        warmup: int, threads: int | None,
    ) -> LayerProfile:  # fmt: skip
        """Per-node times of the engine file ``model`` from the runtime's own profiler.

        Raises:
            BackendUnavailableError: this backend has no profiler robopt reads.
        """
        from robopt_compile.targets.registry import TARGETS, get_backend

        have = [n for n in TARGETS
                if type(get_backend(n)).profile_layers is not Backend.profile_layers]  # fmt: skip
        raise BackendUnavailableError(
            f"per-layer profiling supports {sorted(have)}; this bundle's engine is {self.name}."
        )
