"""The TensorRT backend class: what it builds, where, and which runner runs it.

``build`` always makes the recipe (``recipe.py``, which runs the pre-flight check); with TensorRT
>= 10 and a CUDA GPU here it builds the engine (``build.py``), otherwise it writes a deferred
build (``deferred.py``) for ``robopt-bench`` to complete on the device.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from robopt_compile.errors import BackendUnavailableError
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner
from robopt_compile.targets.tensorrt.build import build_engine
from robopt_compile.targets.tensorrt.deferred import deferred_message, write_deferred
from robopt_compile.targets.tensorrt.probe import INSTALL_HINT, builder_here, probe_gpu
from robopt_compile.targets.tensorrt.recipe import RECIPE_FILE, make_recipe
from robopt_compile.targets.tensorrt.runner import TensorRTRunner


class TensorRTBackend(Backend):
    """TensorRT engines where TensorRT >= 10 and a CUDA GPU exist, deferred builds elsewhere.

    Options (``configure``): ``dla_core``: run on this DLA core with GPU fallback (else the
    profile's ``backend_options.tensorrt.dla_core``; the profile's ``dla_cores`` bounds it).
    """

    name = "tensorrt"
    runtime_module = "tensorrt"
    pip_extra = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    # TensorRT 10/11 strongly typed networks take their precision from the ONNX itself:
    # explicit symmetric Q/DQ for int8 (implicit calibration is gone in TensorRT 11), fp16 types.
    quantizers = {  # noqa: RUF012 - read-only table
        "int8": ("int8-static-trt", {}),
        "fp16": ("float16", {"dtype": "fp16"}),
    }
    builds_without_runtime = True  # no TensorRT or GPU here: build() writes a deferred build
    option_names = ("dla_core",)

    def availability(self) -> tuple[bool, str]:
        """Needs the tensorrt module and a CUDA GPU (probed with cuda-python, not torch)."""
        if importlib.util.find_spec(self.runtime_module) is None:
            return False, f"{self.runtime_module} is not installed ({INSTALL_HINT})"
        gpu, why = probe_gpu()
        if gpu is None:
            return False, why
        return True, f"{self.runtime_module} is installed and {why} is present"

    def _build(
        self, model_path: Path, profile: Any, options: BuildOptions, out_dir: Path
    ) -> Artifact:
        model_path = Path(model_path)
        recipe = make_recipe(model_path, profile, options, self.options.get("dla_core"))
        ok, why = self.availability()
        if ok:
            found = builder_here()
            if isinstance(found, str):
                ok, why = False, found
        if not ok:
            return write_deferred(recipe, model_path, out_dir, why)
        config = build_engine(recipe, model_path, out_dir)
        (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
        files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
        return Artifact(self.name, out_dir, files, config)

    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if artifact.config.get("deferred"):
            raise BackendUnavailableError(
                deferred_message(artifact.config, "this is a deferred build", artifact.root)
            )
        self.require()
        return TensorRTRunner(artifact, threads)
