"""Calibration data for quantization: read the user's samples, check them, split them.

Quantizers pick their ranges from the *calibration* samples; every accuracy figure comes from
the *held-out* samples, which no quantizer ever sees. A figure measured on calibration samples
flatters the quantized model, so the split is made here, once, and the two parts are disjoint
by construction.

Sources (``spec``): a folder of ``.npy``/``.npz`` files (one sample per file), a single
``.npz`` (or, for one-input models, ``.npy``) with a leading sample axis, a
``package.module:callable`` returning an iterable of sample dicts, or the literal ``random``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.compile.userimport import brief as _brief
from robopt_compile.compile.userimport import cwd_on_path as _cwd_on_path
from robopt_compile.compile.userimport import import_callable
from robopt_compile.compile.userimport import is_callable_ref as _is_callable_ref
from robopt_compile.errors import InputError
from robopt_compile.feeds import check_feeds_match, load_npz_inputs
from robopt_compile.ir import TensorSpec

Sample = dict[str, np.ndarray]

# A module:callable may yield forever (data loaders often loop); stop there and say so.
ITER_LIMIT = 100_000
SUFFIXES = (".npy", ".npz")
_HOW = (
    "give a folder of .npy/.npz samples, an .npz with a leading sample axis, "
    "package.module:callable, or random"
)


class RandomCalibrationWarning(UserWarning):
    """Calibration uses random data: ranges and every accuracy figure are meaningless."""


@dataclass(frozen=True)
class CalibrationSet:
    """Samples split into calibration (for quantizers) and held-out (for accuracy figures)."""

    calibration: tuple[Sample, ...]
    holdout: tuple[Sample, ...]
    calibration_ids: tuple[str, ...]
    holdout_ids: tuple[str, ...]
    source: str
    random: bool

    def __post_init__(self) -> None:
        # Not a bare ``assert``: this guarantee must hold under ``python -O`` too.
        if len(self.calibration) != len(self.calibration_ids) or len(self.holdout) != len(
            self.holdout_ids
        ):
            raise ValueError("CalibrationSet: every sample needs exactly one id")
        shared = set(self.calibration_ids) & set(self.holdout_ids)
        if shared:
            raise ValueError(f"CalibrationSet: samples {sorted(shared)} are in both parts")

    def to_json(self) -> dict[str, Any]:
        """Counts, ids and per-input dtypes and shapes (distinct, sorted); no array data."""
        inputs: dict[str, dict[str, Any]] = {}
        for sample in (*self.calibration, *self.holdout):
            for name, a in sample.items():
                entry = inputs.setdefault(name, {"dtype": str(a.dtype), "shapes": set()})
                entry["shapes"].add(tuple(a.shape))
        for entry in inputs.values():
            entry["shapes"] = [list(s) for s in sorted(entry["shapes"])]
        return {
            "source": self.source,
            "random": self.random,
            "calibration_count": len(self.calibration),
            "holdout_count": len(self.holdout),
            "calibration_ids": list(self.calibration_ids),
            "holdout_ids": list(self.holdout_ids),
            "inputs": inputs,
        }


def load_calibration(
    spec: str,
    specs: Sequence[TensorSpec],
    *,
    holdout_fraction: float = 0.25,
    seed: int = 0,
    max_samples: int | None = None,
    random_samples: int = 32,
) -> CalibrationSet:
    """Read, check and split the calibration samples named by ``spec``.

    The samples are shuffled with ``seed``; ``max_samples`` keeps the first ones of that
    order (a ``module:callable`` stream is cut at ``max_samples`` before shuffling, so an
    endless generator is fine); of the N kept, the last ``max(1, round(N * holdout_fraction))``
    are held out, and at least one stays for calibration. Files not kept are never read.

    Every kept sample must name exactly the model's inputs with their dtypes and static dims
    (symbolic dims are free) and hold no NaN/inf. An array one axis short of an input whose
    batch dim is 1 or symbolic gets a batch axis of 1.

    Raises:
        InputError: one line naming the sample, the input and what was expected.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout fraction must be between 0 and 1, not {holdout_fraction}.")
    if max_samples is not None and max_samples < 2:
        raise InputError(
            f"max samples is {max_samples}; need at least 2 (1 for calibration, 1 held out)."
        )
    specs = list(specs)
    if not specs:
        raise InputError("the model has no inputs; there is nothing to calibrate.")

    one_file = False
    if spec == "random":
        ids, get = _random_source(specs, seed, random_samples)
    elif Path(spec).is_dir():
        ids, get = _folder_source(Path(spec), specs)
    elif Path(spec).is_file():
        ids, get = _array_file_source(Path(spec), specs)
        one_file = True
    elif _is_callable_ref(spec):
        ids, get = _callable_source(spec, max_samples)
    else:
        raise InputError(f"calibration data not found: {spec}. Check the path, or {_HOW}.")

    cal_idx, hold_idx = split_indices(len(ids), holdout_fraction, seed, max_samples, spec)
    # Samples of one file are views of its arrays; when only some are kept, copy those so
    # the rest of the file can be freed.
    copy = one_file and len(cal_idx) + len(hold_idx) < len(ids)

    def prepared(i: int) -> Sample:
        sample = _prepare(get(i), specs, f"calibration sample {ids[i]} from {spec}")
        return {k: a.copy() for k, a in sample.items()} if copy else sample

    result = CalibrationSet(
        calibration=tuple(prepared(i) for i in cal_idx),
        holdout=tuple(prepared(i) for i in hold_idx),
        calibration_ids=tuple(ids[i] for i in cal_idx),
        holdout_ids=tuple(ids[i] for i in hold_idx),
        source=spec,
        random=spec == "random",
    )
    if result.random:
        warnings.warn(
            RandomCalibrationWarning(
                f"calibrating on random data (seed {seed}): quantization ranges are not those "
                "of real inputs and every accuracy figure is meaningless. Pass real samples "
                "(a folder, an .npz or package.module:callable) for a result you can trust."
            ),
            stacklevel=2,
        )
    return result


def split_indices(
    n: int,
    holdout_fraction: float,
    seed: int,
    max_samples: int | None = None,
    source: str = "calibration data",
) -> tuple[list[int], list[int]]:
    """Seeded shuffle of ``range(n)``, capped at ``max_samples``, split (calibration, held out).

    Each part is returned in source order, so a report lists files as the user sees them.
    """
    order = np.random.default_rng(seed).permutation(n)[:max_samples]
    if len(order) < 2:
        capped = f" (max samples {max_samples})" if max_samples is not None else ""
        raise InputError(
            f"{source}: {len(order)} sample(s){capped}; need at least 2, one for calibration and "
            "one held out for accuracy (a few hundred real inputs give good ranges)."
        )
    n_hold = min(max(1, round(len(order) * holdout_fraction)), len(order) - 1)
    cut = len(order) - n_hold
    return sorted(int(i) for i in order[:cut]), sorted(int(i) for i in order[cut:])


# --------------------------------------------------------------------------- sources
# Each source returns (ids, get): a stable id per sample and a reader for sample i, so only
# the samples that survive ``max_samples`` are ever read.

Getter = Callable[[int], Mapping[str, Any]]


def _folder_source(folder: Path, specs: list[TensorSpec]) -> tuple[list[str], Getter]:
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    if not entries:
        raise InputError(f"calibration folder {folder} is empty; put one .npy/.npz per sample.")
    files = [p for p in entries if p.suffix.lower() in SUFFIXES]
    if not files:
        seen = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise InputError(
            f"calibration folder {folder} holds no .npy or .npz files (found {seen}); "
            "save one sample per file with numpy.savez(path, input_name=array, ...)."
        )

    def get(i: int) -> Mapping[str, Any]:
        p = files[i]
        if p.suffix.lower() == ".npz":
            return load_npz_inputs(p, "calibration file")
        return {_single_input(specs, p): _load_npy(p)}

    return [p.name for p in files], get


def _array_file_source(path: Path, specs: list[TensorSpec]) -> tuple[list[str], Getter]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = load_npz_inputs(path, "calibration file")
    elif suffix == ".npy":
        arrays = {_single_input(specs, path): _load_npy(path)}
    else:
        raise InputError(f"{path}: unsupported calibration file type {suffix or '(none)'}; {_HOW}.")
    flat = [k for k, a in arrays.items() if a.ndim == 0]
    if flat:
        raise InputError(
            f"{path}: arrays {flat} have no leading sample axis; a single calibration file "
            "holds N samples as arrays of shape (N, ...)."
        )
    counts = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputError(
            f"{path}: arrays hold different numbers of samples {counts}; the leading axis is "
            "the sample axis and must be the same length in every array."
        )
    n = next(iter(counts.values()))

    def get(i: int) -> Mapping[str, Any]:
        return {k: a[i] for k, a in arrays.items()}  # views, no copies

    return [f"{path.name}[{i}]" for i in range(n)], get


def _callable_source(spec: str, max_samples: int | None) -> tuple[list[str], Getter]:
    fn = import_callable(spec, "calibration")
    with _cwd_on_path():  # a generator may import lazily while it is iterated
        try:
            result = fn()
            if isinstance(result, Mapping):
                raise InputError(
                    f"calibration {spec} returned one dict; return an iterable of sample dicts "
                    "(a list or a generator), one per sample."
                )
            samples = list(_take(iter(result), spec, max_samples))
        except InputError:
            raise
        except Exception as exc:  # the user's own iterator may raise anything: one line
            raise InputError(
                f"calibration {spec} raised {_brief(exc)}. It must return an iterable of "
                "dicts {input_name: array}."
            ) from exc
    return [f"iter[{i}]" for i in range(len(samples))], samples.__getitem__


def _take(it: Iterator[Any], spec: str, max_samples: int | None) -> Iterator[Mapping[str, Any]]:
    """At most ``max_samples`` items, never pulling one more from the user's iterator."""
    limit = ITER_LIMIT + 1 if max_samples is None else max_samples
    for i, item in enumerate(itertools.islice(it, limit)):
        if max_samples is None and i == ITER_LIMIT:
            raise InputError(
                f"calibration {spec} yielded more than {ITER_LIMIT} samples; pass "
                "max_samples to read only the first ones."
            )
        if not isinstance(item, Mapping):
            raise InputError(
                f"calibration {spec}: sample iter[{i}] is a {type(item).__name__}, not a dict "
                "{input_name: array}."
            )
        yield item


def _random_source(specs: list[TensorSpec], seed: int, count: int) -> tuple[list[str], Getter]:
    from robopt_compile.numerics import random_feeds

    def get(i: int) -> Mapping[str, Any]:
        # One independent stream per (seed, sample): no overlap with other seeds' samples.
        sample_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        try:
            return random_feeds(specs, seed=sample_seed)
        except ValueError as exc:
            raise InputError(f"calibration random: {exc}; pass real samples.") from exc

    return [f"random[{i}]" for i in range(max(count, 0))], get


# --------------------------------------------------------------------------- checks


def _prepare(raw: Mapping[str, Any], specs: list[TensorSpec], where: str) -> Sample:
    """Arrays with the model's batch axis, checked against ``specs``; no copies of arrays."""
    by_name = {s.name: s for s in specs}
    sample: Sample = {}
    for name, value in raw.items():
        try:
            a = np.asarray(value)
        except Exception as exc:  # a user's object's __array__ may raise anything: one line
            raise InputError(f"{where}: input {name!r} is not an array ({_brief(exc)}).") from exc
        if a.dtype == object:
            raise InputError(
                f"{where}: input {name!r} is an object array; give numeric arrays of the "
                "model's dtypes."
            )
        spec = by_name.get(name)
        sample[str(name)] = _fit_batch(a, spec) if spec is not None else a
    check_feeds_match(sample, specs, where)
    for name, a in sample.items():
        bad = _count_nonfinite(a)
        if bad:
            raise InputError(
                f"{where}: input {name!r} has {bad} NaN/inf value(s); quantizers derive ranges "
                "from min/max and histograms, which NaN/inf break. Clean or drop the sample."
            )
    return sample


def _fit_batch(a: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Add the batch axis of 1 that a sample saved without it is missing."""
    batch_like = bool(spec.shape) and (spec.shape[0] == 1 or isinstance(spec.shape[0], str))
    return a[np.newaxis] if batch_like and a.ndim == len(spec.shape) - 1 else a


def _count_nonfinite(a: np.ndarray) -> int:
    if a.dtype.kind not in "fcV":  # V: ml_dtypes' bfloat16 / float8
        return 0
    try:
        return int(a.size - np.count_nonzero(np.isfinite(a)))
    except TypeError:  # a structured dtype: isfinite does not apply
        return 0


def _load_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise InputError(
                f"{path} holds a pickled object array, which robopt does not load (unsafe). "
                "Save a plain numeric array with numpy.save."
            ) from exc
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # numpy's readers raise a dozen types on a corrupt file: one line
        raise _unreadable(path, exc) from exc
    if not isinstance(a, np.ndarray):  # an .npz saved under an .npy name
        a.close()
        raise InputError(f"{path} is an .npz archive, not an .npy array; rename it to .npz.")
    return a


def _unreadable(path: Path, exc: Exception) -> InputError:
    return InputError(
        f"{path} is not a readable .npy array ({_brief(exc)}). Write it with numpy.save."
    )


def _single_input(specs: list[TensorSpec], path: Path) -> str:
    if len(specs) != 1:
        raise InputError(
            f"{path}: an .npy file holds one array but the model has {len(specs)} inputs "
            f"{[s.name for s in specs]}; save each sample as .npz keyed by input name."
        )
    return specs[0].name
