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

Two facts about the pinned TVM shape this package (both measured, see docs/TVM.md):
``apache-tvm-ffi`` 0.1.15 crashes MetaSchedule of ``apache-tvm`` 0.27.0.post1 (pinned below
0.1.15 in the ``tvm`` extra), and importing ``tvm.s_tir.tensor_intrin`` costs ~40 s, 28 s of it
CUDA intrinsics, in the tuner and in every builder worker, so only the CPU ones are registered.

The package, by job (lower modules never import higher ones):

- ``target.py``: the target dict (profile or host), its ISA and the tuning database key.
- ``lowering.py``: the Relax ONNX import and the CPU lowering passes.
- ``tuning.py``: MetaSchedule tuning with the reused JSON database; ``metaschedule.py`` runs
  it in this process, ``distributed.py`` as units on robopt's executor (``--executor ray``).
- ``cross.py``: the cross g++, the ELF check, the kernels run under qemu-user.
- ``runner.py``: ``TvmRunner``, what runs on the robot (numpy and tvm only).
- ``backend.py``: ``TvmBackend``, the class the ``TARGETS`` table names.
"""

from __future__ import annotations

from robopt_compile.targets.tvm.backend import ENGINE_FILE, TvmBackend
from robopt_compile.targets.tvm.cross import check_kernels_under_qemu, elf_machine
from robopt_compile.targets.tvm.runner import TvmRunner
from robopt_compile.targets.tvm.target import host_arch, resolve_target, target_arch, target_key
from robopt_compile.targets.tvm.tuning import tune

__all__ = [
    "ENGINE_FILE",
    "TvmBackend",
    "TvmRunner",
    "check_kernels_under_qemu",
    "elf_machine",
    "host_arch",
    "resolve_target",
    "target_arch",
    "target_key",
    "tune",
]
