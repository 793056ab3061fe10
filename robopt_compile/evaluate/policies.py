"""The engines under evaluation as policies (feeds -> outputs), each call timed.

The original runs as fp32 ONNX in ONNX Runtime (``onnx_policy``, ``source_policy``); a bundle
runs through the benchmark harness's runner for its backend (``bundle_policy``), as on the
robot. Runtimes are imported when a policy is opened, never at import.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import InputError
from robopt_compile.evaluate.spec import looks_like_bundle
from robopt_compile.tasks import Task


@dataclass
class TimedPolicy:
    """Wraps feeds -> outputs, recording each call's latency (ns)."""

    fn: Callable[[dict[str, np.ndarray]], Any]
    output_names: list[str]
    latencies_ns: list[int] = field(default_factory=list)
    # The model's input names, in order, where known: a task that feeds "the one input"
    # (a user's gymnasium task, ``tasks/gym.py``) names its feed after it.
    input_names: list[str] | None = None

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter_ns()
        out = self.fn(feeds)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        if isinstance(out, dict):
            return [out[n] for n in self.output_names]
        return list(out)

    def latency(self) -> dict[str, float] | None:
        if not self.latencies_ns:
            return None
        ms = np.asarray(self.latencies_ns, np.float64) / 1e6
        p50, p99 = np.percentile(ms, [50, 99])
        return {"p50": float(p50), "p99": float(p99), "calls": int(ms.size)}


@contextlib.contextmanager
def onnx_policy(model: Any, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """An fp32 ONNX model (path or ``ir.Model``) in ONNX Runtime, as the reference."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="robopt-ref-") as tmp:
        path = model
        if not isinstance(model, (str, Path)):
            from robopt_compile import ir as rir

            path = Path(tmp) / "reference.onnx"
            rir.save(model, path)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        inputs = [i.name for i in sess.get_inputs()]
        yield TimedPolicy(lambda feeds: sess.run(names, feeds), names, input_names=inputs)


Adapter = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def adapted(step: Callable[[dict[str, np.ndarray]], np.ndarray], adapter: Adapter) -> TimedPolicy:
    """A policy whose model reads its task through ``adapter`` (task feeds -> the model's
    observation, e.g. a VLA's image and prompt tokens); ``step`` returns the action. The timed
    call includes the adapter (tokenizing the prompt, resizing the frame)."""

    def act(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(step(adapter(feeds)), np.float32).reshape(1, -1)]

    return TimedPolicy(act, ["actions"])


def vla_eager_policy(model: Any, adapter: Adapter) -> TimedPolicy:
    """A VLA's torch model (fp32, greedy decoding with its key/value cache) as the reference."""
    return adapted(model.act, adapter)


def adapter_for(manifest: dict[str, Any]) -> Adapter | None:
    """The task adapter of a bundle's zoo model (None: the model reads the feeds as they are)."""
    from robopt_compile.zoo import task_adapter

    return task_adapter(str(manifest.get("model", {}).get("source", "")))


@contextlib.contextmanager
def driver_policy(bundle_dir: str | Path, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """A multi-graph bundle (VLA, diffusion policy): its driver loop over an engine per graph,
    as ``robopt-bench`` runs it, fed through its model's task adapter."""
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.bench.multigraph import open_driver

    root = Path(bundle_dir)
    manifest = load_manifest(root, verify=True)
    adapter = adapter_for(manifest)
    if adapter is None:
        raise InputError(
            f"{root}: a {manifest['driver']['kind']} bundle of {manifest['model'].get('source')} "
            "has no task adapter (only trained zoo VLAs such as zoo:metaworld-vla run in a "
            "task); evaluate it open loop with robopt-bench."
        )
    with contextlib.ExitStack() as stack:
        drv = open_driver(root, manifest, threads, stack)
        yield adapted(lambda obs: drv.step(obs).actions, adapter)


@contextlib.contextmanager
def bundle_policy(bundle_dir: str | Path, threads: int | None = 1) -> Iterator[TimedPolicy]:
    """A bundle's engine through the harness's runner (the backend runs it as on the robot);
    a multi-graph bundle through its driver (:func:`driver_policy`)."""
    import json

    from robopt_compile.bench.harness import enter_runner, open_bundle

    if "graphs" in json.loads((Path(bundle_dir) / "manifest.json").read_text()):
        with driver_policy(bundle_dir, threads) as p:
            yield p
        return
    b = open_bundle(bundle_dir, verify=True)
    names = [o["name"] for o in b.manifest["outputs"]]
    with contextlib.ExitStack() as stack:
        runner = enter_runner(stack, b, threads)
        # The runner's unchecked call, as in the harness's timed loop: the task builds feeds
        # of the right names, shapes and dtypes, so per-step checks would only add overhead.
        inputs = [i["name"] for i in b.manifest["inputs"]]
        yield TimedPolicy(runner.infer_unchecked, names, input_names=inputs)


# source -> its fp32 ONNX model: the compiler's frontend, handed in by the layer above (the
# evaluation runs below the compiler, which itself evaluates closed loop at compile time)
Loader = Callable[[str], Any]


@contextlib.contextmanager
def source_policy(source: str, threads: int | None, load: Loader) -> Iterator[TimedPolicy]:
    """A model source (zoo:NAME, .onnx, .pt2, module:factory) exported to fp32 ONNX by
    ``load`` (``robopt_compile.compile.frontend.load_fp32``); a trained zoo VLA as its torch
    model (it is several graphs and a loop, not one ONNX)."""
    from robopt_compile.zoo import is_vla, load_vla, task_adapter

    adapter = task_adapter(source)
    if is_vla(source) and adapter is not None:
        yield vla_eager_policy(load_vla(source.removeprefix("zoo:")), adapter)
        return
    with onnx_policy(load(source), threads) as p:
        yield p


@contextlib.contextmanager
def any_policy(spec: str | Path, threads: int | None, load: Loader) -> Iterator[TimedPolicy]:
    """A bundle folder or a model source (exported by ``load``)."""
    if looks_like_bundle(spec):
        with bundle_policy(spec, threads) as p:
            yield p
    else:
        with source_policy(str(spec), threads, load) as p:
            yield p


def check_policy_fits(task: Task, manifest_inputs: Sequence[dict[str, Any]], what: str,
                      adapter: Adapter | None = None, option: str = "--task") -> None:  # fmt: skip
    """Refuse, in one line, a model whose input names or fixed shapes the task cannot feed.
    With the model's task ``adapter`` the feeds it reads (its ``task_feeds``) are checked
    instead: the adapter builds the model's inputs from them."""
    if adapter is not None:
        want = dict(getattr(adapter, "task_feeds", {}))
        have = dict(getattr(task, "feed_shapes", None) or {})
        if any(tuple(have.get(k, ())) != tuple(v) for k, v in want.items()):
            raise InputError(
                f"{what} reads task feeds {want} but task {task.name} feeds {have}; pick the "
                f"task the model was trained for ({option})."
            )
        return
    names = [i["name"] for i in manifest_inputs]
    if getattr(task, "single_input", False):
        # a user task feeding its observation as the model's one input, whatever its name
        obs = list(task.feed_shapes["obs"])
        if len(names) != 1:
            raise InputError(
                f"{what} takes {len(names)} inputs {names} but task {task.name} feeds one "
                f"observation of shape {['B', *obs]}; give --task a package.module:factory "
                "returning (env, to_feeds) to map it (docs/EVALUATION.md)."
            )
        got = list(manifest_inputs[0].get("shape", [])[1:])
        if got and all(isinstance(d, int) for d in got) and got != obs:
            raise InputError(
                f"{what} takes {names[0]} of shape {['B', *got]} but task {task.name}'s "
                f"observation is {['B', *obs]}; pick the environment the model was trained "
                f"for ({option}), or map it with a factory's to_feeds."
            )
        return
    if list(task.input_names) != names:
        raise InputError(
            f"{what} takes inputs {names} but task {task.name} feeds {list(task.input_names)}; "
            f"pick the task the model was trained for ({option})."
        )
    shapes = getattr(task, "feed_shapes", None) or {}
    for spec in manifest_inputs:
        want = shapes.get(spec["name"])
        got = list(spec.get("shape", [])[1:])
        fixed = got and all(isinstance(d, int) for d in got)
        if want is not None and fixed and tuple(got) != tuple(want):
            raise InputError(
                f"{what} takes {spec['name']} of shape {['B', *got]} but task {task.name} "
                f"feeds {['B', *want]}; pick the task the model was trained for ({option})."
            )


def bundle_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """What the results say about a bundle engine: its folder, precision, backend, target."""
    import json

    m = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    return {
        "bundle": str(Path(bundle_dir).resolve()),
        "precision": m.get("precision"),
        "backend": m.get("backend"),
        "target": m.get("target", {}).get("profile"),
    }
