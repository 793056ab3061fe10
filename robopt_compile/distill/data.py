"""Distillation's training data: whether samples may be stacked into one batch, and the
mixup + noise augmentation that lets a few tens of calibration samples train the student.

Samples are dicts of numpy arrays at the model's exported batch; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

Sample = dict[str, np.ndarray]


# Gaussian noise std as a fraction of each input element's spread over the samples. On state-mlp
# with i.i.d. normal inputs more noise kept helping (held-out relative L2 after 300 steps: 0.23
# at 0.05, 0.19 at 0.2, 0.16 at 1.0), but such inputs have no manifold to leave; real
# observations do, so the default stays small and mixup does the exploring.
NOISE_SCALE = 0.1


def batch_dim_symbolic(model: ir.Model) -> bool:
    graph = model.graph
    for v in graph.inputs:
        if v.name in graph.initializers:
            continue
        if v.shape is None or len(v.shape) == 0 or isinstance(v.shape[0], int):
            return False
    return True


def stack_samples(
    samples: Sequence[Sample], names: Sequence[str], new_axis: bool = False
) -> Sample:
    """The samples joined along axis 0 (``new_axis``: along a new leading axis, each sample
    keeping its own batch axis, as ``torch.func.vmap`` takes them)."""
    join = np.stack if new_axis else np.concatenate
    return {n: join([s[n] for s in samples], axis=0) for n in names}


def same_outputs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    for name, x in a.items():
        y = b[name]
        if np.shape(x) != np.shape(y):
            return False
        scale = float(np.max(np.abs(x))) if np.size(x) else 0.0
        if not np.allclose(x, y, rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
            return False
    return True


def runs_batched(
    run: Callable[[Sample], dict[str, np.ndarray]],
    samples: Sequence[Sample],
    names: Sequence[str],
    refusals: tuple[type[BaseException], ...],
) -> bool:
    """Whether stacking samples along axis 0 gives the per-sample outputs stacked.

    A graph whose inputs say "dynamic batch" can still hard-code the batch in a Reshape; this
    catches both the run that refuses the stacked inputs and silent mixing of samples.

    Args:
        run: the graph, samples in, outputs by name out.
        samples: at least two give an answer; with fewer the graph is taken as not batched.
        names: the inputs to stack.
        refusals: what ``run`` raises for inputs it cannot take (a hard-coded batch): that
            means "not batched". Anything else is a bug and propagates.
    """
    if len(samples) < 2:
        return False
    pair = samples[:2]
    try:
        together = run(stack_samples(pair, names))
    except refusals:
        return False
    apart = [run(s) for s in pair]
    stacked = {k: np.concatenate([np.asarray(o[k]) for o in apart], axis=0) for k in together}
    return same_outputs(stacked, together)


@dataclass(frozen=True)
class Augment:
    """Mixup of random pairs plus gaussian noise; see ``distill``'s docstring."""

    float_names: tuple[str, ...]
    noise_std: dict[str, np.ndarray]

    def draw(self, samples: Sequence[Sample], rng: np.random.Generator) -> Sample:
        i, j = rng.integers(len(samples), size=2)
        lam = float(rng.random())
        out = {}
        for name, a in samples[i].items():
            b = samples[j][name]
            if name in self.float_names and a.shape == b.shape:
                mixed = lam * a + (1.0 - lam) * b
                noise = rng.standard_normal(a.shape).astype(a.dtype) * self.noise_std[name]
                out[name] = (mixed + noise).astype(a.dtype)
            else:  # ids, flags: take the dominant sample's value
                out[name] = a if lam >= 0.5 else b
        return out


def make_augment(samples: Sequence[Sample], names: Sequence[str]) -> Augment:
    floats, noise = [], {}
    for n in names:
        first = samples[0][n]
        if first.dtype.kind != "f":
            continue
        floats.append(n)
        same_shape = all(s[n].shape == first.shape for s in samples)
        if same_shape and len(samples) > 1:
            spread = np.stack([s[n] for s in samples]).std(axis=0)
        else:
            # shapes that vary (a sequence length): one spread for all, broadcast to each
            spread = np.asarray(np.concatenate([s[n].ravel() for s in samples]).std())
        noise[n] = (NOISE_SCALE * spread).astype(first.dtype)
    return Augment(tuple(floats), noise)
