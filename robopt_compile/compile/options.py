"""What a compile was asked to do (``CompileOptions``, with its quantization and compression
options), resolved from the CLI, a recipe or the Python API; frozen, so a stage never changes
what the user asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopt_compile.errors import InputError


def parse_duration(text: str, flag: str) -> float:
    """``90s``, ``20m``, ``1.5h`` or a plain number of seconds (``--search-budget``,
    ``--distill time=``); ``flag`` names the option in the one-line error."""
    t = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:])
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise InputError(f"{flag} {text!r}: give seconds, or 90s, 20m, 1.5h.") from None


@dataclass(frozen=True)
class QuantOptions:
    calibration: str | None = None  # folder, .npz, module:iterator or "random"
    method: str | None = None  # calibration method: minmax, entropy, percentile
    max_drop: float | None = None  # None: DEFAULT_MAX_DROP
    strict: bool = False
    metric: str | None = None  # module:function
    # evaluate.ClosedLoopGuard: judge candidates by closed-loop task figures.
    closed_loop: Any = None
    measure_sensitivity: bool = False
    block_size: int | None = None  # weight-only block/group size
    holdout_fraction: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class CompressOptions:
    prune: tuple[str, ...] = ()  # "channels:0.5,criterion=l1", "2:4", "unstructured:0.8"
    prune_layers: tuple[str, ...] = ()  # "NODE=RATIO" overrides for channel pruning
    low_rank: str | None = None  # "energy=0.95" | "rank=0.25"
    distill: str | None = None  # "steps=2000,lr=1e-3,batch=8,loss=mse,onpolicy=4"
    # The task --calibration task recorded in (set by the pipeline): where --distill
    # onpolicy=R lets the student drive (compile/onpolicy.py).
    task: str | None = None
    # --search-arch "latency=0.5x,tune=30" (archsearch/search.py) and its --search-budget
    search_arch: str | None = None
    search_budget_s: float | None = None
    # evaluate.ClosedLoopGuard judging the search's finalists (set by the pipeline with --eval)
    arch_guard: Any = field(default=None, compare=False)

    @property
    def active(self) -> bool:
        return bool(self.prune or self.low_rank or self.search_arch)


@dataclass(frozen=True)
class CompileOptions:
    target: str = "host"
    hwprofile: Path | None = None  # a user's TOML file; overrides ``target``
    backend: str | None = None  # None: the profile's first available backend
    precision: str = "fp32"
    threads: int | None = None  # None: the runtime's default (all cores)
    # The robot's threads, for backends that bake them into the engine (TVM num-cores);
    # None: the board profile's cores (the host profile: ``threads``).
    robot_threads: int | None = None
    dynamic_batch: bool = False
    opset: int | None = None
    simplify: str = "default"  # a SimplifyPass tool name, "default" or "none"
    dump_ir: Path | None = None
    check_parity: bool = True
    seed: int = 0
    reference_inputs: Path | None = None  # .npz of real samples keyed by input name
    quant: QuantOptions = field(default_factory=QuantOptions)
    compress: CompressOptions = field(default_factory=CompressOptions)
    tune_trials: int | None = None  # TVM MetaSchedule budget
    max_batch: int = 16  # upper bound of a dynamic batch (TensorRT optimization profile)
    dla_core: int | None = None  # TensorRT: run on this DLA core, GPU fallback
    eval: Any = None  # robopt_compile.evaluate.EvalSpec: closed-loop task evaluation
    eval_criteria: Any = None  # robopt_compile.evaluate.Criteria for that evaluation
    cache: bool = True  # the build cache in the store (robopt_compile/store/cache.py)
    # Where units of work run (--executor: local, ray, ray://HOST:PORT, auto; docs/SCALE.md):
    # the --eval episodes, the planner's plans, the boards of --target a,b,c. Never part of a
    # cache key: a unit gives the same result wherever it runs.
    executor: str = "local"
    # Set by compile_model's fallback across the board's backends (never by a user): which
    # backend was chosen and why ({"chosen", "order", "failed": [{"backend", "reason"}]}).
    backend_choice: dict[str, Any] | None = None
    # Multi-graph bundles on OpenVINO: compute activations in "fp32" or "bf16" (None: the
    # precision's own); see graph_bundle.check_activations.
    activations: str | None = None
    # VLA bundles: the runtime of the language model's decode steps when it is not --backend's
    # (an ``llm-decode`` graph; see vla_compile.validate).
    decode_backend: str | None = None
