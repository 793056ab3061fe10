"""Apache TVM backend: the bundle's ONNX compiled by Relax into one native library per board.

The engine is ``model.so``: the Relax VM program, its kernels and its weights, built by LLVM for a
CPU target given as a TVM 0.27 JSON dict (``backend_options.tvm.target`` in the hardware
profile; derived from this machine for ``host``). A target for another ISA (aarch64 on an x86
build machine) is linked with a cross g++ and checked to be an aarch64 ELF; where
``qemu-aarch64`` runs here, its kernels are also run under qemu and compared with the same
kernels built for the host (``robopt_compile.targets.tvm_qemu``).

Untuned, TVM's CPU kernels are plain loop nests: 100-1000x slower than ONNX Runtime (see
docs/TVM.md). ``BuildOptions.tune_trials`` runs MetaSchedule on every fused kernel and keeps the
records in a JSON database under ``$ROBOPT_CACHE/tvm/<target hash>/`` (default
``~/.cache/robopt``), so a second build of the same model, or of any model sharing kernels,
reuses them instead of measuring again.

Two facts about the pinned TVM shape this file (both measured, see docs/TVM.md):
``apache-tvm-ffi`` 0.1.15 crashes MetaSchedule of ``apache-tvm`` 0.27.0.post1 (pinned below
0.1.15 in the ``tvm`` extra), and importing ``tvm.s_tir.tensor_intrin`` costs ~40 s, 28 s of it
CUDA intrinsics, in the tuner and in every builder worker, so only the CPU ones are registered.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, BuildError, InputError
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

log = logging.getLogger("robopt.tvm")

ENGINE_FILE = "model.so"
# target arch -> (default cross g++, Debian package that provides it)
CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # ELF e_machine values (System V ABI)


# --------------------------------------------------------------------------- targets


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def target_arch(target: dict[str, Any]) -> str:
    """The ISA a target dict compiles for: its ``mtriple``'s first field, else this machine."""
    triple = str(target.get("mtriple", ""))
    return triple.split("-")[0] if triple else _machine()


def host_target(threads: int | None, cores: int) -> dict[str, Any]:
    """This machine as a TVM target: LLVM's name for its CPU, so all its vector units are used."""
    from tvm.target import codegen

    return {
        "kind": "llvm",
        "mcpu": str(codegen.llvm_get_system_cpu()),
        "num-cores": threads or cores,
    }


def resolve_target(profile: Any, threads: int | None) -> dict[str, Any]:
    """The profile's ``backend_options.tvm.target``, or the host's when the profile is the host.

    ``threads`` (the build's thread count) overrides ``num-cores``: MetaSchedule sizes its
    parallel loops by it, so kernels tuned for 4 cores are not the ones a 1-thread loop wants.
    """
    opts = dict(getattr(profile, "backend_options", {}).get("tvm", {}))
    target = opts.get("target")
    if target is None:
        if getattr(profile, "path", "") != "detected":
            raise BuildError(
                f"hardware profile {getattr(profile, 'name', '?')!r} names no TVM target: add "
                '[backend_options.tvm] target = { kind = "llvm", mtriple = ..., mcpu = ... }.'
            )
        return host_target(threads, getattr(profile, "cpu_cores", 1))
    if isinstance(target, str):
        raise BuildError(
            f"TVM 0.27 takes targets as JSON dicts, not strings ({target!r}): write "
            '{ kind = "llvm", mcpu = "...", ... } in the profile.'
        )
    target = dict(target)
    if threads:
        target["num-cores"] = threads
    return target


def target_key(target: dict[str, Any], tvm_version: str) -> str:
    """Tuning records are valid for one target and one TVM version: their folder's name."""
    blob = json.dumps({"target": target, "tvm": tvm_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("ROBOPT_CACHE", Path.home() / ".cache" / "robopt")) / "tvm"


def _cross_compiler(target: dict[str, Any], opts: dict[str, Any]) -> str | None:
    """The g++ that links a library for ``target`` on this machine; None when it is native."""
    arch = target_arch(target)
    if arch == _machine():
        return None
    default, package = CROSS_COMPILERS.get(arch, (f"{arch}-linux-gnu-g++", ""))
    cc = str(opts.get("cross_compiler", default))
    if shutil.which(cc) is None:
        how = f": apt-get install {package} (Debian package {package})" if package else ""
        raise BuildError(f"cross-compiling for {arch} needs the cross compiler `{cc}`{how}.")
    return cc


def elf_machine(path: Path) -> str:
    """The ISA an ELF file is for, from its header's ``e_machine`` field."""
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return "not an ELF file"
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(code, f"e_machine {code}")


# --------------------------------------------------------------------------- ONNX import


def _onnx_io(model: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Graph inputs (name, static shape, dtype) in graph order, and output names."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if symbolic:
            raise BuildError(
                f"the tvm backend builds static shapes; input {vi.name!r} has symbolic dim(s) "
                f"{symbolic}: export with a fixed batch (no --dynamic-batch)."
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        inputs.append({"name": vi.name, "shape": dims, "dtype": dtype})
    return inputs, [o.name for o in model.graph.output]


def _import_onnx(model_path: Path) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """ONNX -> Relax IRModule with the weights bound as constants."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise BuildError(f"cannot read ONNX model {model_path}: {_first_line(exc)}.") from exc
    inputs, outputs = _onnx_io(model)
    try:
        mod = from_onnx(model, shape_dict={i["name"]: i["shape"] for i in inputs})
    except NotImplementedError as exc:  # tvm.error.OpNotImplemented lists the missing ops
        ops = str(exc).split(":")[-1].strip()
        raise BuildError(
            f"TVM's Relax ONNX frontend has no converter for operator(s) {ops}; "
            "use --backend onnxruntime or openvino for this model."
        ) from exc
    except Exception as exc:
        raise BuildError(f"TVM could not import the ONNX model: {_first_line(exc)}.") from exc
    mod = relax.transform.DecomposeOpsForInference()(mod)
    return relax.transform.CanonicalizeBindings()(mod), inputs, outputs


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


# --------------------------------------------------------------------------- compile


def _fuse_passes(target: Any) -> list[Any]:
    """Legalize and fuse: tuning tasks are extracted after these, and applied after them too."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline

    return [
        *pipeline.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def lower(mod: Any, target: Any, database: Any = None) -> Any:
    """Relax IRModule -> the module ``relax.build`` turns into code (kernels scheduled or not)."""
    import tvm
    from tvm import relax

    # TVM 0.27's relax.pipeline.dataflow_lower_passes names a function its cpu_generic package
    # does not export: take the CPU pipeline's module directly (only LLVM CPU targets come here).
    from tvm.relax.backend.cpu_generic import pipeline

    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(_fuse_passes(target))(mod)
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return tvm.transform.Sequential(
            pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
        )(mod)


def _register_cpu_tensor_intrinsics(arch: str) -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` cheap: register only this CPU's intrinsics.

    The package's ``__init__`` builds every CUDA/ROCm/Hexagon intrinsic (~40 s); MetaSchedule
    imports it in the tuner and in each builder worker, whose 30 s build timeout it overruns.
    CPU schedule rules use only the x86 (VNNI/AMX) or Arm (NEON dot product) ones.
    """
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        sys.modules[name] = importlib.util.module_from_spec(spec)
    importlib.import_module(f"{name}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")


# --------------------------------------------------------------------------- tuning


def _task_key(task: Any) -> str:
    return hashlib.sha256(task.dispatched[0].script().encode()).hexdigest()[:24]


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tune(
    mod: Any,
    target: Any,
    arch: str,
    trials: int,
    work_dir: Path,
    *,
    threads: int,
    can_measure: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Tune ``mod``'s kernels into the JSON database at ``work_dir``; returns (database, report).

    ``trials`` is the budget for the whole model, split evenly over its kernels. A kernel that
    already got its share in an earlier build (``robopt_trials.json`` beside the database) is
    not tuned again: its records are reused.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    say = progress or log.info
    t0 = time.perf_counter()
    _register_cpu_tensor_intrinsics(arch)
    work_dir.mkdir(parents=True, exist_ok=True)
    with target:
        fused = tvm.transform.Sequential(_fuse_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    per_task = max(1, math.ceil(trials / max(1, len(tasks))))
    ledger_path = work_dir / "robopt_trials.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    records_before = len(db)
    keys = [_task_key(t) for t in tasks]
    todo_idx = [i for i, k in enumerate(keys) if ledger.get(k, {}).get("trials", 0) < per_task]
    todo = [tasks[i] for i in todo_idx]
    reused = sum(
        len(db.get_top_k(db.commit_workload(t.dispatched[0]), 1 << 20))
        for i, t in enumerate(tasks)
        if i not in todo_idx and db.has_workload(t.dispatched[0])
    )
    cost_model = "xgb" if _has_module("xgboost") else "random"
    if todo and not can_measure:
        raise BuildError(
            f"{len(todo)} of {len(tasks)} kernels have no tuning records for this target and "
            "cannot be measured from this machine: tune on the board (robopt-compile there) and "
            f"copy {work_dir} here, or build without --tune-trials."
        )
    say(
        f"tvm tuning: {len(tasks)} kernels, {len(tasks) - len(todo)} already tuned "
        f"({reused} records reused), {len(todo)} to tune with {per_task} trials each "
        f"(cost model {cost_model}); database {work_dir}"
    )
    if todo:
        contexts = _tune_contexts(todo, work_dir, cost_model, per_task)
        builder = ms.builder.LocalBuilder(
            initializer=functools.partial(_register_cpu_tensor_intrinsics, arch)
        )
        # Measure with the thread count the robot will use.
        with _env(TVM_NUM_THREADS=str(threads)):
            ms.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in todo],
                work_dir=str(work_dir),
                max_trials_global=per_task * len(todo),
                max_trials_per_task=per_task,
                num_trials_per_iter=min(64, per_task),
                builder=builder,
                database=db,
                cost_model=cost_model,
                measure_callbacks=[*ms.MeasureCallback.create("default"), _progress(say)],
            )
        for i in todo_idx:
            ledger[keys[i]] = {"task": tasks[i].task_name, "trials": per_task}
        ledger_path.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    report = {
        "trials_requested": trials,
        "trials_per_kernel": per_task,
        "kernels": len(tasks),
        "kernels_tuned": len(todo),
        "kernels_reused": len(tasks) - len(todo),
        "records_reused": reused,
        "new_trials": len(db) - records_before,
        "seconds": round(time.perf_counter() - t0, 2),
        "database": str(work_dir),
        "cost_model": cost_model,
    }
    say(
        f"tvm tuning done in {report['seconds']} s: {report['new_trials']} new trials, "
        f"{reused} records reused"
    )
    return db, report


def _tune_contexts(tasks: list[Any], work_dir: Path, cost_model: str, per_task: int) -> list[Any]:
    """One TuneContext per kernel (as MetaSchedule's own helper, with a search sized to suit)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts = []
    loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    for task, logger, seed in zip(tasks, loggers, fork_seed(0, n=len(tasks)), strict=True):
        if cost_model == "random":
            # Without xgboost the search cannot rank candidates: a big population only costs time.
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=max(32, 2 * per_task), init_min_unmeasured=min(50, per_task)
            )
        else:
            strategy = "evolutionary"
        contexts.append(
            ms.TuneContext(
                mod=task.dispatched[0],
                target=task.target,
                space_generator="post-order-apply",
                search_strategy=strategy,
                task_name=task.task_name,
                logger=logger,
                rand_state=seed,
                num_threads=os.cpu_count() or 1,
            ).clone()
        )
    return contexts


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _progress(say: Callable[[str], None]) -> Any:
    """A MeasureCallback that reports each measured batch: tuning takes minutes."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self) -> None:
            self.batches = 0
            self.trials = 0

        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            self.batches += 1
            self.trials += len(runner_results)
            ok = [min(r.run_secs) for r in runner_results if r.run_secs and not r.error_msg]
            best = f", best {min(float(s) for s in ok) * 1e6:.1f} us" if ok else ""
            say(f"tvm tuning: kernel #{task_id}: {len(runner_results)} trials{best} "
                f"({self.trials} so far)")  # fmt: skip

    return Progress()


# --------------------------------------------------------------------------- qemu


def check_kernels_under_qemu(lowered: Any, target: Any, engine: Path) -> dict[str, Any]:
    return {"status": "not run"}


# --------------------------------------------------------------------------- runner


class TvmRunner(Runner):
    """Loads ``model.so`` into a Relax VM on the CPU; imports only numpy and tvm."""

    def _activate(self) -> None:
        cfg = self.artifact.config
        arch = cfg.get("arch", _machine())
        if arch != _machine():
            raise BackendUnavailableError(
                f"this TVM engine is a {arch} library (target {cfg.get('target')}); it runs only "
                f"on an {arch} machine and this one is {_machine()}: run it on the robot."
            )
        if self.threads:
            # Read when TVM's thread pool starts; config_threadpool resizes one already started.
            os.environ["TVM_NUM_THREADS"] = str(self.threads)
        import tvm
        from tvm import relax

        if self.threads:
            tvm.get_global_func("runtime.config_threadpool")(0, self.threads)
        self._tvm = tvm
        lib = tvm.runtime.load_module(str(self.artifact.root / cfg["model"]))
        self.vm = relax.VirtualMachine(lib, tvm.cpu())
        self._main = self.vm["main"]
        self._inputs = list(cfg["inputs"])
        self.input_names = [i["name"] for i in self._inputs]
        self.output_names = list(cfg["outputs"])

    def _args(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        args = []
        for spec in self._inputs:
            a = np.ascontiguousarray(feeds[spec["name"]], dtype=spec["dtype"])
            if list(a.shape) != list(spec["shape"]):
                raise InputError(
                    f"input {spec['name']!r} has shape {list(a.shape)}; this TVM engine was "
                    f"built for {spec['shape']}."
                )
            args.append(self._tvm.runtime.tensor(a))
        return args

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._main(*self._args(feeds))
        outs = [out] if len(self.output_names) == 1 else list(out)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        return functools.partial(self._main, *self._args(feeds))

    def _deactivate(self) -> None:
        self._main = None
        self.vm = None


# --------------------------------------------------------------------------- backend


class TvmBackend(Backend):
    name = "tvm"
    runtime_module = "tvm"
    pip_extra = "tvm"
    precisions = ("fp32",)

    def build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        if options.precision not in self.precisions:
            raise BuildError(
                f"tvm backend builds {list(self.precisions)} here, not {options.precision!r}."
            )
        if options.dynamic_batch is not None:
            raise BuildError(
                "the tvm backend builds static shapes: drop --dynamic-batch for --backend tvm."
            )
        opts = dict(getattr(profile, "backend_options", {}).get("tvm", {}))
        target_dict = resolve_target(profile, options.threads)
        arch = target_arch(target_dict)
        cross = _cross_compiler(target_dict, opts)
        import tvm

        try:
            target = tvm.target.Target(target_dict)
        except Exception as exc:
            raise BuildError(f"TVM rejects target {target_dict}: {_first_line(exc)}.") from exc
        mod, inputs, outputs = _import_onnx(model_path)

        tuning = None
        database = None
        if options.tune_trials:
            work_dir = cache_root() / target_key(target_dict, tvm.__version__)
            work_dir.mkdir(parents=True, exist_ok=True)
            (work_dir / "target.json").write_text(
                json.dumps({"target": target_dict, "tvm": tvm.__version__}, indent=1)
            )
            database, tuning = tune(
                mod,
                target,
                arch,
                options.tune_trials,
                work_dir,
                threads=options.threads or int(target_dict.get("num-cores", 1)),
                can_measure=cross is None,
            )
        try:
            lowered = lower(mod, target, database)
            executable = tvm.compile(lowered, target=target, relax_pipeline=None)
        except Exception as exc:
            raise BuildError(f"TVM could not compile the model: {_first_line(exc)}.") from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        engine = out_dir / ENGINE_FILE
        if cross:
            from tvm.support import cc

            executable.export_library(str(engine), fcompile=cc.cross_compiler(cross))
        else:
            executable.export_library(str(engine))
        machine = elf_machine(engine)
        if machine != arch:
            raise BuildError(f"TVM wrote {engine.name} for {machine}, not the target's {arch}.")
        config: dict[str, Any] = {
            "model": ENGINE_FILE,
            "inputs": inputs,
            "outputs": outputs,
            "target": target_dict,
            "arch": arch,
            "cross_compiled": cross is not None,
            "cross_compiler": cross,
            "tuned": tuning is not None,
            "tuning": tuning,
            "threads_env": "TVM_NUM_THREADS",
            "tvm_version": tvm.__version__,
        }
        if cross:
            config["qemu_check"] = check_kernels_under_qemu(lowered, target, engine)
        files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
        return Artifact(self.name, out_dir, files, config)

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        self.require()
        return TvmRunner(artifact, threads)
