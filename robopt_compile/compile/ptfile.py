"""What a ``.pt``/``.pth`` file is, read without unpickling it, and what to do with it.

robopt compiles ``.onnx``, ``.pt2`` (torch.export), ``zoo:NAME`` and ``package.module:factory``
sources. A ``.pt`` file is one of three things, and none carries what a compile needs (an
architecture and example inputs) in a form robopt loads safely: a TorchScript archive (code
and weights, no example inputs), a ``state_dict`` (weights only) or a pickled module
(unpickling runs code). :func:`advice` tells them apart from the zip's member names and the
pickle's opcodes (``pickletools``: nothing is executed) and says the next step for each.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

# What a state_dict's pickle references: the dict type and torch's tensor rebuilders.
_STATE_DICT_GLOBALS = ("collections", "torch._utils", "torch")


def _globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in a pickle, without running it."""
    found, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    return found


def kind_of(path: Path) -> tuple[str, str]:
    """("torchscript" | "state_dict" | "module" | "unknown", detail)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any("/code/" in n or n.endswith("constants.pkl") for n in names):
                return "torchscript", ""
            pkl = next((n for n in names if n.endswith("data.pkl")), None)
            if pkl is None:
                return "unknown", "a zip without data.pkl"
            refs = _globals(zf.read(pkl))
    except zipfile.BadZipFile:
        try:
            refs = _globals(path.read_bytes()[:50_000_000])
        except Exception:  # not a pickle either (pickletools raises several types)
            return "unknown", "neither a torch zip archive nor a pickle"
    except OSError as exc:
        return "unknown", str(exc)
    own = [g for g in refs if not g.startswith(_STATE_DICT_GLOBALS)]
    return ("module", own[0]) if own else ("state_dict", "")


def _parts(path: Path) -> tuple[str, str]:
    """(what the file is, what to do), for a sentence about ``path``."""
    kind, detail = kind_of(path)
    name = path.name
    if kind == "torchscript":
        return ("is a TorchScript archive, which carries no example inputs",
                "compile it through a factory (package.module:make, where make() returns "
                f"torch.jit.load('{name}') and a dict of example input tensors)")  # fmt: skip
    if kind == "state_dict":
        return ("holds a state_dict (weights, no architecture)",
                "write a factory that builds your module, calls load_state_dict(torch.load("
                f"'{name}', weights_only=True)) and returns (module, example inputs); compile "
                "package.module:factory")  # fmt: skip
    if kind == "module":
        return (f"is a pickled module ({detail}), and robopt does not unpickle files (that runs "
                "code)", "load it in a factory of yours (torch.load(..., weights_only=False), "
                "only for files you trust) returning (module, example inputs), or save it with "
                "torch.export.save as a .pt2")  # fmt: skip
    return (f"is not a file robopt reads ({detail})", "give an .onnx file, a .pt2 torch.export "
            "program, zoo:NAME or package.module:factory")  # fmt: skip


def advice(path: Path) -> str:
    """One line: what the file is and how to compile the policy it holds."""
    what, todo = _parts(path)
    return f"{path} {what}: {todo}."


def pt2_advice(path: Path) -> str:
    """For a ``.pt2`` that ``torch.save`` (not ``torch.export.save``) wrote."""
    what, todo = _parts(path)
    return f"{path} was written by torch.save, not torch.export.save; it {what}: {todo}."
