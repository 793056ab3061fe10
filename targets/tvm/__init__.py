"""Apache TVM backend: the bundle's ONNX compiled by Relax into one native library per board.

The engine is ``model.so``: the Relax VM program, its kernels and its weights, built by LLVM for a
CPU target given as a TVM 0.27 JSON dict (``backend_options.tvm.target`` in the hardware
profile; derived from this machine for ``host``). A target for another ISA (aarch64 on an x86
build machine) is linked with a cross g++ and checked to be an aarch64 ELF; where
``qemu-aarch64`` runs here, its kernels are also run under qemu and compared with the same
kernels built for the host (``check_kernels_under_qemu``).

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
from robopt_compile.paths import cache_dir
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


def _cross_compiler(target: dict[str, Any], opts: dict[str, Any]) -> str | None:
    """The g++ that links a library for ``target`` on this machine; None when it is native."""
    arch = target_arch(target)
    if arch == _machine():
        return None
    default, package = CROSS_COMPILERS.get(arch, (f"{arch}-linux-gnu-g++", ""))
    cc = str(opts.get("cross_compiler", default))
    package = str(opts.get("debian_package", package))
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
        # MetaSchedule logs everything to <work_dir>/logs and, at its logger's level, to stdout:
        # WARNING keeps its task tables off the console (its file logs stay at DEBUG).
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
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
        tmp = ledger_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        tmp.replace(ledger_path)  # atomic: a concurrent build reads the old or the new ledger
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
            self.trials = 0

        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            if not runner_results:
                return
            self.trials += len(runner_results)
            ok = [min(r.run_secs) for r in runner_results if r.run_secs and not r.error_msg]
            best = f", best {min(float(s) for s in ok) * 1e6:.1f} us" if ok else ""
            say(f"tvm tuning: kernel #{task_id}: {len(runner_results)} trials{best} "
                f"({self.trials} so far)")  # fmt: skip

    return Progress()


# --------------------------------------------------------------------------- qemu

# Runs kernels of a cross-built model.so under qemu-user without the TVM runtime: each kernel is
# a TVM FFI "safe call" symbol `__tvm_ffi_<name>`; the library reaches the runtime only through
# the function-pointer variables set below and TVMFFIErrorSetRaisedFromCStrParts. Parallel loops
# run serially (one task), which is a valid schedule for any of them.
_HARNESS_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void* sync_handle; int32_t num_task; } Env;
typedef int (*Lambda)(int, Env*, void*);
static void* ws_alloc(int dt, int di, uint64_t n, int c, int b) {
  return aligned_alloc(64, (n + 63) / 64 * 64 + 64);
}
static int ws_free(int dt, int di, void* p) { free(p); return 0; }
static int par_launch(Lambda f, void* cdata, int num_task) {
  Env env = {0, 1};
  return f(0, &env, cdata);
}
static int par_barrier(int task_id, Env* env) { return 0; }
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "%s:", kind);
  for (int i = 0; i < n; ++i) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}
static void set_ptr(void* lib, const char* name, void* value) {
  void** slot = (void**)dlsym(lib, name);
  if (slot) *slot = value;
}
int main(int argc, char** argv) {  /* model.so spec data out_dir */
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
  set_ptr(lib, "__TVMBackendAllocWorkspace", (void*)ws_alloc);
  set_ptr(lib, "__TVMBackendFreeWorkspace", (void*)ws_free);
  set_ptr(lib, "__TVMBackendParallelLaunch", (void*)par_launch);
  set_ptr(lib, "__TVMBackendParallelBarrier", (void*)par_barrier);
  FILE* spec = fopen(argv[2], "r");
  FILE* data = fopen(argv[3], "rb");
  int nk = 0;
  if (!spec || !data || fscanf(spec, "%d", &nk) != 1) return 3;
  for (int k = 0; k < nk; ++k) {
    char name[512], sym[600];
    int na = 0;
    if (fscanf(spec, "%511s %d", name, &na) != 2) return 3;
    DLTensor* ts = calloc(na, sizeof(DLTensor));
    TVMFFIAny* args = calloc(na, sizeof(TVMFFIAny));
    for (int a = 0; a < na; ++a) {
      int code, bits, ndim;
      if (fscanf(spec, "%d %d %d", &code, &bits, &ndim) != 3) return 3;
      int64_t* shape = calloc(ndim ? ndim : 1, sizeof(int64_t));
      uint64_t n = (bits + 7) / 8;
      for (int d = 0; d < ndim; ++d) {
        long long v; if (fscanf(spec, "%lld", &v) != 1) return 3; shape[d] = v; n *= v;
      }
      void* buf = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
      if (fread(buf, 1, n, data) != n) return 3;
      ts[a].data = buf; ts[a].device.device_type = kDLCPU; ts[a].device.device_id = 0;
      ts[a].ndim = ndim; ts[a].dtype.code = code; ts[a].dtype.bits = bits;
      ts[a].dtype.lanes = 1; ts[a].shape = shape; ts[a].strides = NULL; ts[a].byte_offset = 0;
      args[a].type_index = kTVMFFIDLTensorPtr; args[a].v_ptr = &ts[a];
    }
    snprintf(sym, sizeof sym, "__tvm_ffi_%s", name);
    TVMFFISafeCallType fn = (TVMFFISafeCallType)dlsym(lib, sym);
    if (!fn) { fprintf(stderr, "missing symbol %s\n", sym); return 4; }
    TVMFFIAny result; memset(&result, 0, sizeof result); result.type_index = kTVMFFINone;
    int rc = fn(NULL, args, na, &result);
    if (rc != 0) { fprintf(stderr, "kernel %s returned %d\n", name, rc); return 5; }
    char path[4096];
    snprintf(path, sizeof path, "%s/%d.bin", argv[4], k);
    FILE* out = fopen(path, "wb");
    for (int a = 0; a < na; ++a) {
      uint64_t n = (ts[a].dtype.bits + 7) / 8;
      for (int d = 0; d < ts[a].ndim; ++d) n *= ts[a].shape[d];
      fwrite(ts[a].data, 1, n, out);
    }
    fclose(out);
    printf("ok %s\n", name);
    fflush(stdout);
  }
  return 0;
}
"""
_DLPACK_CODES = {"int": 0, "uint": 1, "float": 2, "bfloat": 4, "bool": 6}


def _kernel_args(func: Any) -> list[tuple[str, list[int]]] | None:
    """(dtype, shape) of each buffer parameter; None when a parameter is not a static buffer."""
    args = []
    for p in func.params:
        try:  # TVM 0.27 TIR: a buffer parameter is a Var of buffer type
            if p.is_scalar():
                return None
            args.append((str(p.dtype), [int(d) for d in p.shape]))
        except (AttributeError, TypeError, ValueError):
            return None
    return args


def check_kernels_under_qemu(
    lowered: Any, arch: str, engine: Path, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Run every kernel of a cross-built ``engine`` under qemu-user and compare each with the
    same kernel built for this machine, on the same random inputs.

    This checks the target's generated code and the cross link, not the Relax VM that chains the
    kernels (the aarch64 TVM runtime is not available here): see docs/TVM.md.
    """
    import subprocess
    import tempfile

    import tvm

    qemu = shutil.which(f"qemu-{arch}")
    gcc = shutil.which(f"{arch}-linux-gnu-gcc")
    sysroot = Path(f"/usr/{arch}-linux-gnu")
    if qemu is None or gcc is None or not sysroot.is_dir():
        return {"status": "not run", "reason": f"needs qemu-{arch} (apt-get install qemu-user) "
                f"and {arch}-linux-gnu-gcc"}  # fmt: skip
    rng = np.random.default_rng(0)
    kernels, skipped = [], []
    host = tvm.target.Target({"kind": "llvm"})
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        spec = _kernel_args(func)
        if spec is None or any(d.rstrip("0123456789") not in _DLPACK_CODES for d, _ in spec):
            skipped.append(name)
            continue
        bufs = [
            rng.uniform(-1, 1, s).astype(d) if d.startswith(("float", "bfloat"))
            else np.zeros(s, dtype=d)
            for d, s in spec
        ]  # fmt: skip
        try:
            f = func.with_attr("global_symbol", "main").without_attr("target")
            ref = tvm.compile(tvm.IRModule({"main": f}), target=host)
        except Exception:
            skipped.append(name)
            continue
        tensors = [tvm.runtime.tensor(b.copy()) for b in bufs]
        ref(*tensors)
        kernels.append((name, spec, bufs, [t.numpy() for t in tensors]))
    with tempfile.TemporaryDirectory(prefix="robopt-qemu-") as tmp:
        d = Path(tmp)
        import tvm_ffi

        inc = [f"-I{Path(tvm_ffi.__file__).parent / 'include'}"]
        (d / "h.c").write_text(_HARNESS_C)
        cc = subprocess.run(
            [gcc, "-O1", "-rdynamic", *inc, "-o", str(d / "h"), str(d / "h.c"), "-ldl"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if cc.returncode != 0:
            return {"status": "not run", "reason": f"harness did not compile: {cc.stderr[:200]}"}
        lines = [str(len(kernels))]
        with open(d / "data.bin", "wb") as data:
            for name, spec, bufs, _ in kernels:
                lines.append(f"{name} {len(spec)}")
                for (dt, shape), b in zip(spec, bufs, strict=True):
                    bits = np.dtype(dt).itemsize * 8
                    code = _DLPACK_CODES[dt.rstrip("0123456789")]
                    lines.append(" ".join(map(str, [code, bits, len(shape), *shape])))
                    data.write(np.ascontiguousarray(b).tobytes())
        (d / "spec.txt").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        try:
            run = subprocess.run(
                [qemu, "-L", str(sysroot), str(d / "h"), str(engine), str(d / "spec.txt"),
                 str(d / "data.bin"), str(d)],
                capture_output=True, text=True, timeout=timeout_s,
            )  # fmt: skip
            rc, err = run.returncode, run.stderr.strip()
        except subprocess.TimeoutExpired:
            rc, err = None, f"timed out after {timeout_s:.0f} s"
        worst, mismatched, ran = 0.0, [], 0
        for i, (name, spec, _, want) in enumerate(kernels):
            path = d / f"{i}.bin"
            if not path.is_file():
                break
            raw = path.read_bytes()
            ran += 1
            off = 0
            for (dt, shape), w in zip(spec, want, strict=True):
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                got = np.frombuffer(raw[off : off + n], dtype=dt).reshape(shape)
                off += n
                diff = float(np.max(np.abs(got.astype(np.float64) - w))) if w.size else 0.0
                worst = max(worst, diff)
                # fp32 sums in another order (NEON FMA vs AVX-512): relative to the magnitude.
                scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
                if not np.allclose(got, w, rtol=1e-4, atol=1e-4 * scale):
                    mismatched.append(name)
    ok = rc == 0 and not mismatched and ran == len(kernels)
    return {
        "status": ("passed" if ran else "not run") if ok else "failed",
        "qemu": qemu,
        "kernels_run": ran,
        "kernels": len(kernels),
        "kernels_skipped": skipped,
        "mismatched": sorted(set(mismatched)),
        "max_abs_diff": worst,
        "seconds": round(time.perf_counter() - t0, 2),
        "error": None if rc == 0 else (err.splitlines() or ["?"])[-1][:200],
    }


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
        path = self.engine_file()
        # TVM binds the thread that starts its pool to core 0, which then confines every other
        # runtime and numpy in this process (measured: os.sched_getaffinity became {0}); a
        # control-loop process must keep its own affinity. The user's setting wins.
        os.environ.setdefault("TVM_BIND_THREADS", "0")
        if self.threads:
            # Read when TVM's thread pool starts (measured: sets its size up or down);
            # config_threadpool below only lowers a pool that already started in this process.
            os.environ["TVM_NUM_THREADS"] = str(self.threads)
        import tvm
        from tvm import relax

        if self.threads:
            tvm.get_global_func("runtime.config_threadpool")(1, self.threads)  # 1: big cores
        self._tvm = tvm
        lib = tvm.runtime.load_module(str(path))
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

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        if options.dynamic_batch is not None:
            raise BuildError(
                "the tvm backend builds static shapes: drop --dynamic-batch for --backend tvm."
            )
        opts = dict(getattr(profile, "backend_options", {}).get("tvm", {}))
        target_dict = resolve_target(profile, options.threads)
        arch = target_arch(target_dict)
        cross = _cross_compiler(target_dict, opts)
        os.environ.setdefault("TVM_BIND_THREADS", "0")  # see TvmRunner._activate
        import tvm

        try:
            target = tvm.target.Target(target_dict)
        except Exception as exc:
            raise BuildError(f"TVM rejects target {target_dict}: {_first_line(exc)}.") from exc
        mod, inputs, outputs = _import_onnx(model_path)

        tuning = None
        database = None
        if options.tune_trials:
            work_dir = cache_dir("tvm") / target_key(target_dict, tvm.__version__)
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
        if cross and opts.get("qemu_check", True):
            check = check_kernels_under_qemu(lowered, arch, engine)
            config["qemu_check"] = check
            if check["status"] == "failed":
                raise BuildError(
                    f"the {arch} library's kernels do not match the host build under qemu "
                    f"({check['mismatched'] or check['error']}); see docs/TVM.md (profile "
                    "option [backend_options.tvm] qemu_check = false skips this check)."
                )
        files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
        return Artifact(self.name, out_dir, files, config)

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        self.require()
        return TvmRunner(artifact, threads)
