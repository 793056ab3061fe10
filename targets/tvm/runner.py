"""The TVM runner: ``model.so`` loaded into a Relax VM on the CPU.

It runs on the robot, so it imports only numpy at module level and ``tvm`` when it is entered,
after setting ``TVM_NUM_THREADS`` (read when TVM's thread pool starts) and ``TVM_BIND_THREADS``.
Inputs go in by ONNX name in graph order; outputs come back as fresh numpy arrays by ONNX output
name. A library for another ISA is refused with one line.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.targets.base import Runner
from robopt_compile.targets.tvm.target import host_arch


class TvmRunner(Runner):
    """Loads ``model.so`` into a Relax VM on the CPU; imports only numpy and tvm."""

    def _activate(self) -> None:
        cfg = self.artifact.config
        arch = cfg.get("arch", host_arch())
        if arch != host_arch():
            raise BackendUnavailableError(
                f"this TVM engine is a {arch} library (target {cfg.get('target')}); it runs only "
                f"on an {arch} machine and this one is {host_arch()}: run it on the robot."
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
