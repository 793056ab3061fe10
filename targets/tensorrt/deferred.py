"""Deferred TensorRT builds: the recipe written out for the device when no engine can be made here.

``write_deferred`` copies the checked ONNX (``model.onnx``, with its external data), writes the
recipe (``build.json``) and its exact trtexec equivalent (``trtexec.sh``), and returns an
``Artifact`` whose config says ``"deferred": true`` and why. ``robopt-bench`` completes it on the
device with the same builder (``bench/deferred.py``); ``deferred_message`` is the one line a user
gets where it cannot be completed. Nothing is reported as built unless it was.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from robopt_compile.targets.base import Artifact
from robopt_compile.targets.tensorrt.recipe import ONNX_FILE, RECIPE_FILE, TRTEXEC_FILE


def deferred_message(config: dict[str, Any], why: str, engine_dir: Path | str = "engine") -> str:
    """The one line a user gets when a deferred build cannot be completed on this machine."""
    cmd = config.get("trtexec_command") or "sh trtexec.sh"
    return (
        "this bundle holds a deferred TensorRT build; run robopt-bench on the device with "
        "TensorRT installed (JetPack 6: python3-libnvinfer) or run "
        f"`cd {shlex.quote(str(engine_dir))} && {cmd}` there (here: {why})"
    )


_SCRIPT = """#!/bin/sh
# Deferred TensorRT build written by robopt: the trtexec equivalent of build.json.
# Run it on the target device (TensorRT >= 10; on JetPack trtexec is /usr/src/tensorrt/bin).
# It writes model.engine and timing.cache next to this file; extra arguments are passed on.
set -eu
cd "$(dirname "$0")"
PATH="$PATH:/usr/src/tensorrt/bin"
exec {command} "$@"
"""


def write_deferred(recipe: dict[str, Any], model_path: Path, out_dir: Path, why: str) -> Artifact:
    """Write the checked ONNX, ``build.json`` and ``trtexec.sh``; nothing is built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, out_dir / ONNX_FILE)
    for name in recipe["onnx_external_data"]:
        shutil.copyfile(model_path.parent / name, out_dir / name)
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    script = out_dir / TRTEXEC_FILE
    script.write_text(_SCRIPT.format(command=recipe["trtexec"]))
    script.chmod(0o755)
    config = {
        "deferred": True,
        "deferred_reason": why,
        "model": ONNX_FILE,
        "recipe": RECIPE_FILE,
        "trtexec_script": TRTEXEC_FILE,
        "trtexec_command": recipe["trtexec"],
        "precision": recipe["precision"],
        "strongly_typed": True,
        "builder_flags": recipe["builder_flags"],
        "sparse_weights": recipe["sparsity"]["sparse_weights"],
        "dla_core": recipe["dla"]["core"] if recipe["dla"] else None,
        "optimization_profile": recipe["optimization_profile"],
        "workspace_mib": recipe["workspace_mib"],
        "tensorrt_checked_against": recipe["tensorrt"]["checked_against"],
        "tensorrt_min_version": recipe["tensorrt"]["min_version"],
        "target_sm": recipe["target"]["sm"],
    }
    files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
    return Artifact("tensorrt", out_dir, files, config)


def is_deferred(artifact: Artifact) -> bool:
    """Whether ``artifact`` is a deferred build (a recipe, not an engine)."""
    return bool(artifact.config.get("deferred"))
