"""NVIDIA Model Optimizer's FastNAS as a row of the ``archsearch`` section (issue 21 part 5).

``modelopt.torch.prune.prune(model, mode="fastnas", constraints={"flops": ...}, dummy_input,
config={"data_loader", "collect_func", "score_func"})`` on the torch ResNet-18 of
``zoo:metaworld-resnet18``, with its own defaults otherwise: its search space (channel
multiples per Conv/BN group), its BatchNorm recalibration on ``data_loader`` and its search.
Its constraint is FLOPs, not latency: the section gives it the searched sub-network's FLOPs
ratio. ``score_func`` is the negative relative L2 of the action against the original on
the search's validation observations (what robopt's search scores). The sub-network is
exported to ONNX with robopt's frontend and built as FastNAS leaves it (its flow ends with
the user's own fine-tuning); ``benchmarks/archsearch.py`` can distil it like the other rows
(``distil=True``: the original fp32 ONNX as the teacher, the same recordings and options).

Runs on the CPU here (nvidia-modelopt 0.47 with torch 2.13 CPU); not a robopt dependency:
``make bench`` installs it into the venv if PyPI serves it, and the row says why when it is
missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 16


def fastnas_subnet(
    flops_ratio: float,
    train: list[dict[str, np.ndarray]],
    val: list[dict[str, np.ndarray]],
    out: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """FastNAS at ``flops_ratio`` of the original's FLOPs; the sub-network as ONNX at
    ``out``; {"onnx", "seconds", "flops_ratio", ...} or {"skipped": why}."""
    try:
        import modelopt
        import modelopt.torch.prune as mtp
    except ImportError as exc:
        return {
            "skipped": f"nvidia-modelopt is not importable here ({exc}); "
            "pip install nvidia-modelopt==0.47.0"
        }
    import torch

    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import ModuleSource, load_source
    from robopt_compile.zoo.metaworld import make_metaworld_resnet18

    torch.manual_seed(0)
    model = make_metaworld_resnet18()[0].eval()
    x = (torch.from_numpy(val[0]["image"]), torch.from_numpy(val[0]["state"]))
    with torch.no_grad():
        want = [
            model(torch.from_numpy(s["image"]), torch.from_numpy(s["state"])).numpy() for s in val
        ]

    def score(m: torch.nn.Module) -> float:
        with torch.no_grad():
            got = [
                m(torch.from_numpy(s["image"]), torch.from_numpy(s["state"])).numpy() for s in val
            ]
        num = sum(float(np.sum((g - w) ** 2)) for g, w in zip(got, want, strict=True))
        return -float(np.sqrt(num / sum(float(np.sum(w**2)) for w in want)))

    batches = [
        (
            torch.from_numpy(np.concatenate([s["image"] for s in train[i : i + BATCH]])),
            torch.from_numpy(np.concatenate([s["state"] for s in train[i : i + BATCH]])),
        )
        for i in range(0, len(train), BATCH)
    ]
    log(
        f"[bench] archsearch: FastNAS (modelopt {modelopt.__version__}) at "
        f"{flops_ratio:.0%} of the FLOPs ..."
    )
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    try:
        sub, _ = mtp.prune(
            model,
            mode="fastnas",
            constraints={"flops": f"{flops_ratio:.1%}"},
            dummy_input=x,
            config={"data_loader": batches, "collect_func": lambda b: b, "score_func": score},
        )
    except Exception as exc:  # a third-party search: its failure is the row
        return {"skipped": f"FastNAS failed on the CPU here: {type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - t0
    sub = sub.eval()
    sub.output_names = ("action",)
    src = load_source(ModuleSource(sub, {"image": x[0], "state": x[1]}, "fastnas-subnet"))
    rir.save(src.model, out)
    return {
        "onnx": str(out),
        "seconds": seconds,
        "flops_ratio": flops_ratio,
        "score": score(sub),
        "modelopt": modelopt.__version__,
    }
