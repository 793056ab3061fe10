"""Complete a bundle's deferred TensorRT build on the device: once, into the engine cache.

A bundle compiled where TensorRT or a GPU was missing holds a recipe instead of an engine
(``targets/tensorrt/``: ``model.onnx``, ``build.json``, ``trtexec.sh``; engine config
``"deferred": true``). On a machine with TensorRT >= 10 and a CUDA GPU, ``robopt-bench`` builds
it with the backend's own ``build_engine`` into

    $ROBOPT_CACHE/engines/<bundle key>-<gpu>-sm<cc>-trt<version>/

(default ``~/.cache/robopt/engines``), where ``<bundle key>`` is a sha256 over the recipe and
the ONNX. The folder is written under a temporary name and renamed when complete, so a crash
never leaves a half-written engine; later runs reuse it while its ``engine.json`` names this
machine's GPU and TensorRT version and the engine file has its recorded size. An engine built
for another GPU or TensorRT version lands under another key and is never used here. Deleting
the cache folder is always safe.

Module level imports only the standard library: TensorRT loads when a build starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.jsonutil import sha256_file
from robopt_compile.paths import cache_dir, member

ENGINE_JSON = "engine.json"


def is_deferred(engine: dict[str, Any]) -> bool:
    """Whether a manifest's ``engine`` entry is a deferred TensorRT build."""
    return bool((engine.get("config") or {}).get("deferred"))


def require_device_build(bundle_dir: Path, engine: dict[str, Any]) -> None:
    """Raise one ``BackendUnavailableError`` line if this machine cannot build the engine."""
    from robopt_compile.targets.tensorrt import builder_here, deferred_message

    found = builder_here()
    if isinstance(found, str):
        edir = Path(bundle_dir) / str(engine.get("dir", "engine"))
        raise BackendUnavailableError(deferred_message(engine["config"], found, edir))


def _bundle_key(recipe_text: str, onnx_files: list[Path]) -> str:
    parts = [hashlib.sha256(recipe_text.encode()).hexdigest()]
    parts += [sha256_file(p) for p in onnx_files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _recipe_files(rpath: Path, engine_dir: Path, recipe: Any, files: list[str]) -> list[Path]:
    """The ONNX and external data files the recipe names, each a listed file of the engine
    folder (``robopt_compile.paths.member``): build.json is hashed, but a bundle made by hand
    hashes whatever it names."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("onnx_external_data", []), list):
        raise InputError(f"{rpath} (the deferred TensorRT recipe) is malformed; copy the bundle "
                         "again.")  # fmt: skip
    onnx = member(engine_dir, recipe.get("onnx"), f"{rpath}: onnx", files)
    extra = [member(engine_dir, name, f"{rpath}: onnx_external_data", files)
             for name in recipe.get("onnx_external_data", [])]  # fmt: skip
    return [onnx, *extra]


def _cached(folder: Path, key: str) -> dict[str, Any] | None:
    """The cached engine's ``{files, config}`` if complete and built for ``key``, else None."""
    try:
        entry = json.loads((folder / ENGINE_JSON).read_text())
        config = entry["config"]
        engine = member(folder, config["model"], f"{folder}: engine.config.model", entry["files"])
        if config.get("engine_key") != key or engine.stat().st_size != entry["engine_bytes"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None
    return {"files": entry["files"], "config": config}


def complete_deferred(
    engine_dir: Path, engine: dict[str, Any]
) -> tuple[Path, dict[str, Any], float | None]:
    """Build (or reuse) the engine of a deferred bundle for this machine.

    Returns:
        (folder holding the engine, the engine entry ``{files, config}`` to run, the build
        time in ms or None when the cached engine was reused).

    Raises:
        BackendUnavailableError: no TensorRT >= 10 or no GPU here.
        BuildError: TensorRT rejected the recipe.
        InputError: the recipe is missing or corrupt, or the cache cannot be written.
    """
    from robopt_compile.targets.tensorrt import (
        build_engine,
        builder_here,
        deferred_message,
        engine_key,
    )

    config = engine["config"]
    files = list(engine.get("files") or [])
    rpath = member(Path(engine_dir), config.get("recipe", "build.json"),
                   f"{engine_dir}: engine.config.recipe", files)  # fmt: skip
    try:
        text = rpath.read_text()
        recipe = json.loads(text)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{rpath} (the deferred TensorRT recipe) cannot be read ({exc}); copy the bundle again."
        ) from exc
    onnx_files = _recipe_files(rpath, Path(engine_dir), recipe, files)
    found = builder_here()
    if isinstance(found, str):
        raise BackendUnavailableError(deferred_message(config, found, engine_dir))
    trt, gpu = found
    device = engine_key(gpu, trt.__version__)
    root = cache_dir("engines")
    final = root / f"{_bundle_key(text, onnx_files)}-{device}"
    cached = _cached(final, device)
    if cached is not None:
        return final, cached, None

    t0 = time.perf_counter()
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}.tmp-", dir=root))
        built = build_engine(recipe, onnx_files[0], tmp)
        entry = {
            "files": [built["model"]],
            "config": built,
            "engine_bytes": (tmp / built["model"]).stat().st_size,
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / ENGINE_JSON).write_text(json.dumps(entry, indent=2) + "\n")
        if final.exists() and _cached(final, device) is None:
            shutil.rmtree(final)  # an incomplete or stale entry
        try:
            tmp.rename(final)
            tmp = None
        except OSError:
            if _cached(final, device) is None:  # else another process won the race: use its copy
                raise
    except OSError as exc:
        raise InputError(
            f"cannot write the TensorRT engine into {root} ({exc.strerror or exc}); set "
            "ROBOPT_CACHE to a writable folder."
        ) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    done = _cached(final, device)
    if done is None:
        raise InputError(f"the TensorRT engine in {final} is incomplete; delete that folder.")
    return final, done, (time.perf_counter() - t0) * 1e3
