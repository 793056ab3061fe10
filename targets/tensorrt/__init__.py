"""TensorRT backend: strongly typed engines for NVIDIA GPUs, or a deferred build for the device.

A TensorRT engine only runs on the GPU architecture and TensorRT version that built it, so:

- ``build`` always runs the static pre-flight check (``check.py``) and turns the request
  into a *recipe* (``make_recipe``): precision, network and builder flags, DLA, optimization
  profile, workspace, the TensorRT version it was checked against, the target profile and SM.
- With TensorRT >= 10 and a CUDA GPU here, ``build_engine`` executes the recipe. The engine file
  is named by GPU, compute capability and TensorRT version (``model.<key>.engine``), and the key
  is in ``Artifact.config``: a runner refuses an engine built for another GPU or version.
- Otherwise ``write_deferred`` writes the checked ONNX (``model.onnx``), the recipe
  (``build.json``) and its exact trtexec equivalent (``trtexec.sh``), and ``Artifact.config``
  says ``"deferred": true`` and why. ``robopt-bench`` completes it on the device with the same
  ``build_engine`` (``bench/deferred.py``). Nothing is reported as built unless it was.

One code path serves TensorRT 10 and 11. Networks are created STRONGLY_TYPED (ignored and
always on in 11), so the ONNX's own types are the precision: fp16 comes from robopt's float16
pass, int8 from explicit Q/DQ (``int8-static-trt``). The weakly typed flags (BuilderFlag.FP16 and
INT8, invalid with STRONGLY_TYPED and removed in 11) and implicit INT8 calibration (removed in
11) are never used. TF32 is cleared, so fp32 tensors compute in fp32 (``--noTF32``).

The runner moves data with cuda-python (``cuda.bindings.runtime``: cudaMalloc, cudaMemcpyAsync,
cudaStreamCreate, cudaStreamSynchronize), as NVIDIA's own TensorRT samples do, imported inside
the runner. The GPU probe uses the same module, not torch (a multi-GB wheel the robot does not
need) nor ``nvidia-smi`` (absent on Jetson, and a subprocess). Calls into ``tensorrt`` follow
the TensorRT 10.3 / 11.1 Python bindings (``python/src/infer/pyCore.cpp`` at those tags).

The package, by job (lower modules never import higher ones):

- ``support.py``: TensorRT's operator table, version and DLA facts with their sources, and the
  ``Finding`` record; ``context.py``, ``qdq.py``, ``check.py``: the static pre-flight check.
- ``probe.py``: cuda-python, the GPU and ``tensorrt`` on this machine; ``engine_key``.
- ``recipe.py``: ``make_recipe`` and ``trtexec_command``; ``deferred.py``: ``write_deferred``.
- ``build.py``: ``build_engine``; ``runner.py``: ``TensorRTRunner`` (what runs on the robot).
- ``backend.py``: ``TensorRTBackend``, the class the ``TARGETS`` table names.
"""

from __future__ import annotations

from robopt_compile.targets.tensorrt.backend import TensorRTBackend
from robopt_compile.targets.tensorrt.build import build_engine
from robopt_compile.targets.tensorrt.deferred import deferred_message, is_deferred, write_deferred
from robopt_compile.targets.tensorrt.probe import GpuInfo, builder_here, engine_key, probe_gpu
from robopt_compile.targets.tensorrt.recipe import make_recipe, trtexec_command
from robopt_compile.targets.tensorrt.runner import TensorRTRunner

__all__ = [
    "GpuInfo",
    "TensorRTBackend",
    "TensorRTRunner",
    "build_engine",
    "builder_here",
    "deferred_message",
    "engine_key",
    "is_deferred",
    "make_recipe",
    "probe_gpu",
    "trtexec_command",
    "write_deferred",
]
