"""Distillation: recover what pruning or low-rank factorisation cost by training the compressed
ONNX graph's own weights against its source model.

Layers, lowest first: ``kernel`` (what an op kernel receives), ``ops_nn`` and ``ops_tensor``
(the torch kernels), ``interpreter`` (``OnnxModule``: an ONNX graph run with torch, weights as
parameters), ``data`` (batching and augmentation of the samples, no torch), ``train``
(``distill``: the loop, the teacher in ONNX Runtime, the report).

Importing this package imports torch: the pipeline imports it inside the function that
distils, so ``robopt-compile --help`` and the robot-side tools never pay for it.
"""

from robopt_compile.distill.interpreter import OnnxModule
from robopt_compile.distill.train import DistillResult, distill

__all__ = ["DistillResult", "OnnxModule", "distill"]
