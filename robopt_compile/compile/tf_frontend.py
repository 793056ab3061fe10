"""TensorFlow sources (issue 22): a SavedModel folder, a Keras ``.keras``/``.h5`` file, a
``.tflite`` file, converted to ONNX with tf2onnx (the ``[tf]`` extra).

- SavedModel: its ``serving_default`` signature (``tf2onnx.tf_loader.from_saved_model``, then
  ``from_graph_def``); inputs and outputs keep the signature's names.
- Keras: ``keras.models.load_model``, then ``tf2onnx.convert.from_keras`` with the model's
  input names.
- TFLite: ``tf2onnx.convert.from_tflite``; TFLite's tensor names (``serving_default_obs:0``)
  lose their signature prefix and ``:0``.

Then the parity rule of every source: the original, run by TensorFlow itself (the Keras model,
the SavedModel's signature, the TFLite interpreter), and the ONNX model in ONNX Runtime on fresh
seeded inputs must agree (``frontend.PARITY_TOLERANCE``), else exit 4. A symbolic batch is
fixed to 1 unless ``--dynamic-batch``. Without TensorFlow: one line naming the extra, exit 3.

TensorFlow runs in a child process (``python -m robopt_compile.compile.tf_frontend``, see
``load_tf``): it converts, runs the original and hands back the ONNX file, the reference
inputs and TensorFlow's outputs; robopt's own process never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile import ir as rir
from robopt_compile.errors import BackendUnavailableError, ExportError, install_hint

DEFAULT_OPSET = 17
SIGNATURE = "serving_default"


def tf_kind(source: str) -> str | None:
    """``savedmodel`` | ``keras`` | ``tflite`` for a TensorFlow source, else None."""
    p = Path(source)
    if p.is_dir() and (p / "saved_model.pb").is_file():
        return "savedmodel"
    suffix = p.suffix.lower()
    if suffix in (".keras", ".h5"):
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TensorFlow's C++ banners (absl writes them to fd 2 whatever TF_CPP_MIN_LOG_LEVEL
    says), tf2onnx's op reports and Python deprecation warnings off the console: what goes
    wrong is raised as robopt's one-line error instead."""
    import logging

    from robopt_compile.tasks import quiet_stdout

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(), quiet_stdout((1, 2)):
        warnings.simplefilter("ignore")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
        yield


def _require() -> tuple[Any, Any, str]:
    """(tensorflow, tf2onnx.convert, tf2onnx version), or the one-line missing-extra error."""
    try:
        with _quiet():
            import tensorflow as tf
            import tf2onnx
            import tf2onnx.convert
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorFlow sources need TensorFlow and tf2onnx ({exc.name or exc} is missing): "
            f"{install_hint('tf')}."
        ) from None
    return tf, tf2onnx.convert, tf2onnx.__version__


@contextlib.contextmanager
def keras_env() -> Iterator[None]:
    """TensorFlow present (else the one-line error) and quiet: for building a Keras model."""
    _require()
    with _quiet():
        yield


def _clean(name: str) -> str:
    name = name.removeprefix(f"{SIGNATURE}_").split(":")[0]
    return re.sub(r"[^A-Za-z0-9_.]", "_", name) or "x"


def convert(source: str, kind: str, opset: int | None) -> tuple[Any, Callable, dict[str, Any]]:
    """(ONNX ModelProto, run_original(feeds) -> {output: array}, what was used)."""
    tf, conv, version = _require()
    opset = opset or DEFAULT_OPSET
    try:
        with _quiet():
            if kind == "keras":
                proto, run = _keras(tf, conv, source, opset)
            elif kind == "savedmodel":
                proto, run = _saved_model(tf, conv, source, opset)
            else:
                proto, run = _tflite(tf, conv, source, opset)
    except (BackendUnavailableError, ExportError):
        raise
    except Exception as exc:  # TensorFlow and tf2onnx raise many types: one line
        raise ExportError(
            f"{source}: tf2onnx could not convert this {kind} model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "try another --opset, or export the model to ONNX yourself."
        ) from exc
    _refuse_unconverted(proto, source, kind)
    info = {"converter": f"tf2onnx {version}", "tensorflow": tf.__version__, "opset": opset,
            "kind": kind}  # fmt: skip
    return proto, run, info


def _refuse_unconverted(proto: Any, source: str, kind: str) -> None:
    """tf2onnx leaves a TensorFlow op it has no converter for in the graph as it is: name
    those ops in one line instead of the checker's "No Op registered"."""
    import onnx

    left = sorted({n.op_type for n in proto.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})  # fmt: skip
    if left:
        raise ExportError(
            f"{source}: tf2onnx has no converter for TensorFlow op(s) {', '.join(left)} in this "
            f"{kind} model; replace them in the model (e.g. gelu(approximate=True) for Erfc) "
            "or export it to ONNX yourself."
        )


def _keras(tf: Any, conv: Any, source: str, opset: int) -> tuple[Any, Callable]:
    import keras

    model = keras.models.load_model(source, compile=False)
    names = [_clean(t.name) for t in model.inputs]
    spec = tuple(
        tf.TensorSpec(tuple(t.shape), t.dtype, name=n)
        for t, n in zip(model.inputs, names, strict=True)
    )
    proto, _ = conv.from_keras(model, input_signature=spec, opset=opset)
    outs = [o.name for o in proto.graph.output]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = model([feeds[n] for n in names] if len(names) > 1 else feeds[names[0]])
        got = got if isinstance(got, (list, tuple)) else [got]
        return {n: np.asarray(g) for n, g in zip(outs, got, strict=True)}

    return proto, run


def _saved_model(tf: Any, conv: Any, source: str, opset: int) -> tuple[Any, Callable]:
    from tf2onnx import tf_loader

    graph_def, inputs, outputs, rename = tf_loader.from_saved_model(
        source, None, None, tag="serve", signatures=[SIGNATURE], return_tensors_to_rename=True
    )
    proto, _ = conv.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                   opset=opset, tensors_to_rename=rename)  # fmt: skip
    fn = tf.saved_model.load(source).signatures[SIGNATURE]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: np.asarray(v) for k, v in got.items()}

    return proto, run


def _tflite(tf: Any, conv: Any, source: str, opset: int) -> tuple[Any, Callable]:
    proto, _ = conv.from_tflite(source, opset=opset)
    for v in [*proto.graph.input, *proto.graph.output]:
        old, new = v.name, _clean(v.name)
        for node in proto.graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
            node.output[:] = [new if o == old else o for o in node.output]
        v.name = new
    interp = tf.lite.Interpreter(model_path=source)
    interp.allocate_tensors()
    ins = {_clean(d["name"]): d["index"] for d in interp.get_input_details()}
    outs = {_clean(d["name"]): d["index"] for d in interp.get_output_details()}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for k, v in feeds.items():
            interp.set_tensor(ins[k], v)
        interp.invoke()
        return {k: np.array(interp.get_tensor(i)) for k, i in outs.items()}

    return proto, run


def load_tf(
    source: str,
    kind: str,
    *,
    dynamic_batch: bool,
    opset: int | None,
    seed: int,
    check_parity: bool,
    given: dict[str, np.ndarray] | None,
    zoo: str | None = None,
) -> Any:
    """The ``SourceModel`` of a TensorFlow source (module doc); ``zoo``: the name of a Keras
    zoo model, built (into robopt's cache) by the child process first.

    TensorFlow runs in a child process (``_child``): loaded beside torch and MuJoCo's EGL
    renderer in one process it crashed that process here (a segmentation fault in a later
    simulated episode), and a robot's compile should not keep 1 GB of TensorFlow loaded.
    """
    import json
    import subprocess
    import sys
    import tempfile

    from robopt_compile import errors, numerics
    from robopt_compile.compile.source import (
        PARITY_TOLERANCE,
        SourceModel,
        check_model,
        parity_failed,
    )

    _require_installed()
    with tempfile.TemporaryDirectory(prefix="robopt-tf-") as tmp:
        d = Path(tmp)
        if given is not None:
            np.savez(d / "given.npz", **given)
        args = {"source": source, "kind": kind, "opset": opset, "seed": seed, "zoo": zoo,
                "dynamic_batch": dynamic_batch, "given": given is not None, "out": tmp}  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        r = subprocess.run([sys.executable, "-m", "robopt_compile.compile.tf_frontend",
                            json.dumps(args)], capture_output=True, text=True, env=env)  # fmt: skip
        if (d / "error.json").is_file():
            e = json.loads((d / "error.json").read_text())
            cls = getattr(errors, e["class"], None)
            cls = cls if isinstance(cls, type) and issubclass(cls, errors.RoboptError) else None
            raise (cls or ExportError)(e["message"])
        if r.returncode != 0 or not (d / "model.onnx").is_file():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise ExportError(
                f"{source}: the TensorFlow conversion process failed (exit {r.returncode}: "
                f"{last}); re-run with --debug."
            )
        model = rir.load(d / "model.onnx")
        info = json.loads((d / "info.json").read_text())
        with np.load(d / "io.npz") as z:
            feeds = {k[3:]: z[k] for k in z.files if k.startswith("in:")}
            ref = {k[4:]: z[k] for k in z.files if k.startswith("out:")}
    check_model(model, source)
    fig = numerics.judge(ref, numerics.run_onnx(model, feeds), PARITY_TOLERANCE)
    if check_parity and not fig["passed"]:
        parity_failed(fig, source, f"TensorFlow ({kind})")
    return SourceModel(
        model=model,
        name=zoo or Path(source).stem or Path(source).name,
        source=source,
        kind=kind,
        exporter="tf2onnx",
        reference_inputs=feeds,
        reference_outputs=ref,
        parity={"export": {**fig, **info}},
        notes=[
            f"converted by {info['converter']} at opset {info['opset']} from a {kind} model "
            f"(TensorFlow {info['tensorflow']}); reference outputs come from TensorFlow "
            "running the original"
        ],
    )


def _require_installed() -> None:
    """The extra's packages are present (found, not imported: TensorFlow loads in the child)."""
    import importlib.util

    for name in ("tensorflow", "tf2onnx"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise BackendUnavailableError(
                f"TensorFlow sources need TensorFlow and tf2onnx ({name} is missing): "
                f"{install_hint('tf')}."
            )


def _child(args: dict[str, Any]) -> None:
    """In the child process: convert, fix the batch, run the original on the reference inputs;
    writes model.onnx, io.npz and info.json, or error.json (a robopt error) into ``out``."""
    import json

    from robopt_compile import numerics
    from robopt_compile.compile.source import REFERENCE_SEED_OFFSET
    from robopt_compile.errors import RoboptError
    from robopt_compile.feeds import check_feeds_match

    out = Path(args["out"])
    try:
        source = args["source"]
        if args.get("zoo"):
            from robopt_compile.zoo import keras_zoo_file

            with keras_env():
                source = str(keras_zoo_file(args["zoo"], seed=args["seed"]))
        proto, run_original, info = convert(source, args["kind"], args["opset"])
        model = rir.from_proto(proto)
        if not args["dynamic_batch"]:
            rir.fix_batch(model, 1)
        specs = rir.input_specs(model)
        if args["given"]:
            with np.load(out / "given.npz") as z:
                feeds = {k: z[k] for k in z.files}
            check_feeds_match(feeds, specs, "--reference-inputs")
        else:
            feeds = numerics.random_feeds(specs, seed=args["seed"] + REFERENCE_SEED_OFFSET)
        with _quiet():
            got = run_original(feeds)
        names = [v.name for v in model.graph.outputs]
        missing = [n for n in names if n not in got]
        if missing:
            raise ExportError(
                f"{args['source']}: TensorFlow's outputs {sorted(got)} do not name the converted "
                f"model's {missing}; export the model to ONNX yourself."
            )
        rir.save(model, out / "model.onnx")
        np.savez(out / "io.npz", **{f"in:{k}": v for k, v in feeds.items()},
                 **{f"out:{n}": np.asarray(got[n]) for n in names})  # fmt: skip
        (out / "info.json").write_text(json.dumps(info))
    except RoboptError as exc:
        (out / "error.json").write_text(
            json.dumps({"class": type(exc).__name__, "message": str(exc)})
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    import json
    import sys

    _child(json.loads(sys.argv[1]))
