"""The TVM backend class: ONNX to one native library, ``model.so``, for an LLVM CPU target.

``build`` resolves the target (``target.py``), imports the ONNX into Relax (``lowering.py``),
tunes with MetaSchedule when asked (``tuning.py``), compiles and exports the library (with a
cross g++ for another ISA, then the ELF and qemu checks of ``cross.py``), and records in
``Artifact.config`` what the runner (``runner.py``) needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError
from robopt_compile.paths import cache_dir
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner
from robopt_compile.targets.tvm.cross import check_kernels_under_qemu, cross_compiler, elf_machine
from robopt_compile.targets.tvm.lowering import first_line, import_onnx, lower
from robopt_compile.targets.tvm.runner import TvmRunner
from robopt_compile.targets.tvm.target import resolve_target, target_arch, target_key
from robopt_compile.targets.tvm.tuning import tune

ENGINE_FILE = "model.so"


class TvmBackend(Backend):
    """``model.so`` for the profile's LLVM CPU target, tuned with MetaSchedule when asked."""

    name = "tvm"
    runtime_module = "tvm"
    pip_extra = "tvm"
    precisions = ("fp32",)
    static_shapes = True  # a symbolic batch is fixed to 1 before the build (the pipeline)

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        self.require()
        if options.dynamic_batch is not None:
            raise BuildError(
                "the tvm backend builds static shapes: drop --dynamic-batch for --backend tvm "
                "(a model whose batch dim is symbolic is then built for batch 1)."
            )
        opts = dict(getattr(profile, "backend_options", {}).get("tvm", {}))
        target_dict = resolve_target(profile, options.threads, options.robot_threads)
        arch = target_arch(target_dict)
        cross = cross_compiler(target_dict, opts)
        os.environ.setdefault("TVM_BIND_THREADS", "0")  # see TvmRunner._activate
        import tvm

        try:
            target = tvm.target.Target(target_dict)
        # TVM's target parser raises ValueError for an unknown key or a badly typed value
        except (ValueError, TypeError) as exc:
            raise BuildError(f"TVM rejects target {target_dict}: {first_line(exc)}.") from exc
        mod, inputs, outputs = import_onnx(model_path)

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
                executor=options.executor,
            )
        try:
            lowered = lower(mod, target, database)
            executable = tvm.compile(lowered, target=target, relax_pipeline=None)
        # Broad on purpose: TVM's C++ passes and codegen raise any of its FFI error types.
        except Exception as exc:
            raise BuildError(f"TVM could not compile the model: {first_line(exc)}.") from exc
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
