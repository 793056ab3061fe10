"""The TensorRT runner: a built engine on this machine's GPU, with one CUDA stream.

It runs on the robot, so it imports only numpy at module level; ``tensorrt`` and cuda-python
(``cuda.bindings.runtime``: cudaMalloc, cudaMemcpyAsync, cudaStreamCreate,
cudaStreamSynchronize, as NVIDIA's own TensorRT samples do) load when it is entered. It refuses
a deferred build (a recipe, not an engine) and an engine whose ``engine_key`` is not this
machine's GPU and TensorRT version. The timed call includes the host-to-device and
device-to-host copies: a robot's data starts and ends on the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import robopt_compile.targets.tensorrt.probe as probe
from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.targets.base import Runner
from robopt_compile.targets.tensorrt.deferred import deferred_message


class TensorRTRunner(Runner):
    """Runs a built engine with one CUDA stream and device buffers sized on first use."""

    def _activate(self) -> None:
        cfg = self.artifact.config
        if cfg.get("deferred"):
            raise BackendUnavailableError(
                deferred_message(cfg, "this is the recipe, not an engine", self.artifact.root)
            )
        path = self.engine_file()
        found = probe.builder_here()
        if isinstance(found, str):
            raise BackendUnavailableError(f"cannot run a TensorRT engine here: {found}.")
        trt, gpu = found
        key = probe.engine_key(gpu, trt.__version__)
        if cfg.get("engine_key") != key:
            raise BackendUnavailableError(
                f"engine {cfg.get('model')} was built for {cfg.get('engine_key')} and this "
                f"machine is {key}: TensorRT engines do not move between GPUs or TensorRT "
                "versions; rebuild it here from the bundle's ONNX."
            )
        self._cudart = probe.load_cudart()  # looked up here: tests swap in a fake
        self._log = probe.make_logger(trt)
        self._runtime = trt.Runtime(self._log)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            why = self._log.errors[-1] if self._log.errors else "no reason was logged"
            raise BackendUnavailableError(f"TensorRT could not load {cfg['model']}: {why}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = {n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.input_names = [n for n in names if n in inputs]
        self.output_names = [n for n in names if n not in inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._stream = self._cuda(self._cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _cuda(self, result: Any, what: str) -> Any:
        return probe.cuda_check(self._cudart, result, what)

    def _address(self, name: str, nbytes: int) -> int:
        ptr, size = self._device.get(name, (0, 0))
        if size < nbytes or not ptr:
            if ptr:
                self._cuda(self._cudart.cudaFree(ptr), "cudaFree")
            size = max(nbytes, 1)
            ptr = int(self._cuda(self._cudart.cudaMalloc(size), "cudaMalloc"))
            self._device[name] = (ptr, size)
        self._context.set_tensor_address(name, ptr)
        return ptr

    def _prepare(
        self, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Host arrays for inputs and outputs, with shapes set and device buffers bound."""
        host_in = {}
        for n in self.input_names:
            a = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
            if not self._context.set_input_shape(n, a.shape):
                raise InputError(
                    f"input {n!r} of shape {list(a.shape)} does not fit the engine "
                    f"(optimization profile {self.artifact.config.get('optimization_profile')})."
                )
            self._address(n, a.nbytes)
            host_in[n] = a
        host_out = {}
        for n in self.output_names:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise InputError(f"output {n!r} has no concrete shape ({list(shape)}).")
            out = np.empty(shape, self._dtypes[n])
            self._address(n, out.nbytes)
            host_out[n] = out
        return host_in, host_out

    def _run(
        self, host_in: dict[str, np.ndarray], host_out: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        rt, kind = self._cudart, self._cudart.cudaMemcpyKind
        for n, a in host_in.items():
            ptr = self._device[n][0]
            self._cuda(
                rt.cudaMemcpyAsync(
                    ptr, a.ctypes.data, a.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                ),
                "cudaMemcpyAsync",
            )
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for n, a in host_out.items():
            ptr = self._device[n][0]
            self._cuda(
                rt.cudaMemcpyAsync(
                    a.ctypes.data, ptr, a.nbytes, kind.cudaMemcpyDeviceToHost, self._stream
                ),
                "cudaMemcpyAsync",
            )
        self._cuda(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host_out

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(*self._prepare(feeds))

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        # Copies in and out stay in the timed call: a robot's data starts and ends on the host.
        return partial(self._run, *self._prepare(feeds))

    def _deactivate(self) -> None:
        rt = getattr(self, "_cudart", None)
        # Cleanup after any error: cuda-python may raise anything here, and that must not hide
        # the error that ended the `with` block.
        for ptr, _ in getattr(self, "_device", {}).values():
            with contextlib.suppress(Exception):
                rt.cudaFree(ptr)
        self._device = {}
        if getattr(self, "_stream", None) is not None:
            with contextlib.suppress(Exception):
                rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = self._runtime = None
