"""What identifies a source's content for the build cache's export key
(``buildcache.export_key``): robopt's own code and the tools' versions are in every key
already (``store.cache``), so a source is identified by its name (zoo), its files' bytes
(``.onnx`` with its external data, ``.pt2``), its factory module's source file, or, for a
module in memory, its classes, structure, weights and example inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from robopt_compile.compile.frontend import source_kind
from robopt_compile.jsonutil import sha256_file
from robopt_compile.store.cache import Uncacheable


def _onnx_files(path: Path) -> list[Path]:
    """An .onnx file and the external data files it names."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    found = [path]
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and (path.parent / loc) not in found:
                found.append(path.parent / loc)
    return found


def source_identity(source: str) -> dict[str, Any]:
    """What identifies a source's content (robopt's own code is in every key already).

    ``zoo:NAME`` -> the name (the zoo's code and weights are in :func:`code_fingerprint`);
    ``.onnx`` -> sha256 of the file and its external data; ``.pt2``, ``.keras``, ``.tflite``
    -> sha256 of the file; a SavedModel folder -> sha256 of each of its files;
    ``pkg.mod:fn`` -> sha256 of the module's source file; a module in memory (the Python
    API's ``ModuleSource``) -> :func:`module_identity`. Raises :class:`Uncacheable`.
    """
    kind = source_kind(source)
    if kind == "module":
        return {"kind": kind, **module_identity(source.module, source.example_inputs)}
    if kind == "zoo":
        return {"kind": kind, "zoo": source.removeprefix("zoo:")}
    if kind == "savedmodel":  # a TensorFlow SavedModel folder: every file in it
        root = Path(source)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {"kind": kind, "files": [[str(p.relative_to(root)), sha256_file(p)] for p in files]}
    if kind in ("onnx", "pt2", "keras", "tflite"):
        path = Path(source)
        if not path.is_file():
            raise Uncacheable(f"{source} is not a file")
        try:
            files = _onnx_files(path) if kind == "onnx" else [path]
        except Exception as exc:  # onnx.load raises protobuf, OS or onnx errors: re-raised
            raise Uncacheable(f"{source} cannot be read as ONNX ({type(exc).__name__})") from exc
        return {
            "kind": kind,
            "files": [[p.name, sha256_file(p)] for p in files if p.is_file()],
        }
    import importlib.util

    from robopt_compile.compile.userimport import cwd_on_path

    mod = source.partition(":")[0]
    try:
        with cwd_on_path():  # the path the factory itself is imported from
            spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError) as exc:
        raise Uncacheable(f"factory module {mod} cannot be located ({exc})") from exc
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise Uncacheable(f"factory module {mod} has no source file to hash")
    return {"kind": kind, "factory": source, "module_sha256": sha256_file(Path(spec.origin))}


def module_identity(module: Any, example_inputs: Any) -> dict[str, Any]:
    """A torch module in memory as key data: its classes (torch's own by name, since torch's
    version is in every key; the user's by the sha256 of their source files), its structure
    (``repr``), the bytes of every parameter and buffer, and the example inputs (their values
    shape the reference inputs). Raises :class:`Uncacheable` for a class without a source file
    (defined in a notebook cell or by ``exec``) or a tensor whose bytes cannot be read."""
    import inspect

    import torch

    classes = {}
    for sub in module.modules():
        cls = type(sub)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in classes:
            continue
        if cls.__module__.split(".")[0] == "torch":
            classes[name] = None
            continue
        try:
            path = inspect.getsourcefile(cls)
        except (OSError, TypeError) as exc:
            raise Uncacheable(f"class {name} has no source file to hash ({exc})") from exc
        if not path or not Path(path).is_file():
            raise Uncacheable(f"class {name} has no source file to hash")
        classes[name] = sha256_file(Path(path))

    def tensors(named: Any) -> list[list[Any]]:
        rows = []
        for key, t in named:
            if not isinstance(t, torch.Tensor):
                raise Uncacheable(f"{key} is a {type(t).__name__}, not a tensor")
            try:
                flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            except (RuntimeError, TypeError) as exc:  # sparse, quantized or meta tensors
                raise Uncacheable(f"tensor {key} cannot be hashed ({exc})") from exc
            digest = hashlib.sha256(flat.tobytes()).hexdigest()
            rows.append([str(key), str(t.dtype), list(t.shape), digest])
        return rows

    if isinstance(example_inputs, dict):
        inputs = list(example_inputs.items())
    elif isinstance(example_inputs, tuple | list):
        inputs = list(enumerate(example_inputs))
    else:
        inputs = [(0, example_inputs)]
    return {
        "classes": classes,
        "structure": repr(module),
        "state": tensors(module.state_dict().items()),
        "inputs": tensors(inputs),
    }
