"""Recovery fine-tuning: train a pruned ONNX graph's own weights to match its source model.

After structured pruning or low-rank factorisation the student graph has the right structure and
the wrong numbers. ``distill`` runs the student graph in torch (``interpreter.OnnxModule``: an
interpreter of the ONNX nodes, with the graph's float weights as parameters), fits its outputs
to the teacher's on unlabeled inputs, and writes the trained weights back into a copy of the
same graph. Nothing is re-exported, so every graph check that held before still holds, and any
source works (zoo, torch factory or a bare ONNX file).

This module imports torch at the top: import it inside the function that distils (the pipeline
does), so ``robopt-compile --help`` and the robot-side tools never pay for torch.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from robopt_compile.distill.data import (
    NOISE_SCALE,
    Sample,
    batch_dim_symbolic,
    make_augment,
    runs_batched,
    same_outputs,
    stack_samples,
)
from robopt_compile.distill.interpreter import OnnxModule
from robopt_compile.errors import InputError, PassError

# The interpreter must reproduce ONNX Runtime on the student before training starts.
PARITY_COSINE_MIN = 0.9999
_LOG_EVERY = 10  # progress() is called every this many steps, and at the last
PROBE_SAMPLES = 256  # samples behind the loss figures and the output normalisation


# Measured on the 2-core build machine, 1 thread, batch 8, student = teacher with gaussian noise
# on every trained weight; held-out relative L2 to the teacher, untrained, then after training:
#   model           steps samples  untrained  lr 1e-4  3e-4   1e-3   3e-3
#   state-mlp        300    32      0.437       0.232  0.207  0.266* 0.35*
#   visuomotor-cnn    40    16      0.169       0.059  0.057  0.064  0.197
#   act-policy        30    16      0.157       0.053  0.067  0.067
#   (* with NOISE_SCALE 0.05, the rest 0.1)
# 1e-4 is never more than 12% off the best; 3e-4 is 26% off on the transformer and 3e-3
# diverges on the CNN, so the default is 1e-4.
# Speed: visuomotor-cnn (11.4M trained parameters) runs 0.81 steps/s at batch 8 on 1 thread
# when exported with a static batch (8 batch-1 passes a step) and 1.0 steps/s with a dynamic
# batch (one batch-8 pass): 1000 steps take about 17-20 minutes on one core. state-mlp: ~140/s.
# A static batch-1 graph is now mapped over the batch with torch.func.vmap (one batched pass):
# metaworld-resnet18 pruned 40%, batch 16, forward + backward: 1.09 s as 16 passes vs 0.91 s
# mapped on 1 thread, 0.64 vs 0.51 s on 2 (AMD EPYC, 2026-12-07).
# Teacher outputs of samples that are not augmented are computed once and kept
# (MAX_LABEL_BYTES): on-policy rounds revisit every frame many times, and keep them across
# rounds (``label_cache``): each round's call relabelled every frame it drew, about 9,600
# teacher runs of ~12 ms in the fifth round of 600 steps x 16 (that round: 1.69 steps/s). On
# the searched metaworld-resnet18 network, a second call on 1,600 frames of which 200 are new,
# 100 steps: 2.65 steps/s with the labels kept, 1.91 without (AMD EPYC Zen 4, 2026-12-07).
MAX_LABEL_BYTES = 1 << 30
# With a time budget (``seconds``) the pace is read after this many steps, run at the full lr.
FIT_AFTER = 10


@dataclass(frozen=True)
class DistillResult:
    """The student with trained weights (a new model) and what the training did."""

    model: ir.Model
    report: dict[str, Any]


class OrtRunner:
    """One ONNX Runtime session for the teacher, kept across steps.

    ORT, not the interpreter under ``no_grad``: on visuomotor-cnn at 1 thread a teacher batch of
    8 took 0.20 s in ORT vs 0.41 s in the interpreter (batch-1 export, 8 runs) and 0.27 s vs
    0.38 s (dynamic-batch export, one run). It also lets the teacher hold ops the trainer lacks.
    """

    def __init__(self, model: ir.Model, threads: int | None) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        from robopt_compile import ir as rir

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Through a file: handles weights past protobuf's 2 GiB and external tensors alike.
        with tempfile.TemporaryDirectory(prefix="robopt-distill-") as tmp:
            path = Path(tmp) / "teacher.onnx"
            rir.save(model, path)
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # What ``run`` raises for inputs the graph cannot take (a batch it hard-codes): a wrong
        # input shape (InvalidArgument) or a kernel that fails on it (RuntimeException, Fail).
        self.refusals: tuple[type[Exception], ...] = (
            state.InvalidArgument,
            state.RuntimeException,
            state.Fail,
        )

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))


def _vmap_runner(module: OnnxModule, names: Sequence[str]):
    """The module mapped over a new leading axis of its inputs (a batch of batch-1 samples)."""
    mapped = torch.func.vmap(lambda *xs: module(**dict(zip(names, xs, strict=True))))

    def run(feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return mapped(*[feeds[n] for n in names])

    return run


def _runs_vmapped(module: OnnxModule, run, samples: Sequence[Sample], names: Sequence[str]):
    """Whether ``run`` (``_vmap_runner``) gives the per-sample outputs stacked and its
    gradients flow: a kernel with data-dependent Python (``.item()``) fails under vmap."""
    if len(samples) < 2:
        return False
    if any(s[n].shape != samples[0][n].shape for s in samples for n in names):
        return False  # vmap stacks the batch: a dimension that varies cannot be mapped

    def tensors(feeds: Sample) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names}

    pair = stack_samples(samples[:2], names, new_axis=True)
    try:
        with torch.no_grad():
            together = {k: v.numpy() for k, v in run(tensors(pair)).items()}
            apart = [module(**tensors(s)) for s in samples[:2]]
        stacked = {k: np.stack([o[k].numpy() for o in apart]) for k in together}
        if not same_outputs(stacked, together):
            return False
        out = run(tensors(pair))
        floats = [v.sum() for v in out.values() if v.is_floating_point()]
        if floats:
            torch.stack(floats).sum().backward()
    except (RuntimeError, PassError):
        return False
    finally:
        module.zero_grad(set_to_none=True)
    return True


def _loss_fn(kind: str, norm: Mapping[str, float]):
    def loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]):
        terms = []
        for name, t in teacher.items():
            s = student[name]
            if kind == "mse":
                terms.append(torch.mean((s - t) ** 2) / norm[name])
            else:
                logp = torch.log_softmax(s, dim=-1)
                logq = torch.log_softmax(t, dim=-1)
                kl = (logq.exp() * (logq - logp)).sum(-1)
                terms.append(kl.mean())
        return torch.stack(terms).mean()

    return loss


def _check_trainer(
    student: ir.Model,
    run: Callable[[Sample], dict[str, np.ndarray]],
    sample: Sample,
    threads: int | None,
) -> dict[str, np.ndarray]:
    """ONNX Runtime's student outputs on ``sample``, after checking the trainer reproduces
    them: a trainer bug must never silently train the wrong graph."""
    from robopt_compile.numerics import compare, run_onnx

    ref = run_onnx(student, sample, threads)
    fig = compare(ref, run(sample))
    bad = {k: c for k, c in fig.items() if not c["cosine"] >= PARITY_COSINE_MIN}
    if bad:
        name, c = next(iter(bad.items()))
        raise PassError(
            f"distillation: robopt's trainer does not reproduce the student on output "
            f"{name!r} (cosine {c['cosine']:.6f} < {PARITY_COSINE_MIN}, max abs "
            f"{c['max_abs']:.3g} vs ONNX Runtime); drop --distill and report it"
        )
    return ref


def _channels_last(module: OnnxModule) -> int:
    """4-D weights (convolution kernels) in channels-last memory: oneDNN then runs the
    convolutions, their gradients and the max pools between them channels-last.

    Measured on the searched metaworld-resnet18 sub-network (0.53 GMAC), batch 16 mapped,
    forward + backward + Adam, 2 threads (AMD EPYC Zen 4, 2026-12-07): 0.320 s a step in the
    default layout, 0.281 s channels-last; the max pool's forward alone went from 27.6 to
    2.9 ms. The loss agrees to 1e-4 relative (summation order only)."""
    four = [p for p in module.params.values() if p.dim() == 4]
    for param in four:
        param.data = param.data.contiguous(memory_format=torch.channels_last)
    return len(four)


class _Fit:
    """A call's step count under a time budget (``distill(seconds=)``): fitted after
    ``FIT_AFTER`` steps, fitted again from the pace so far each time a quarter of the steps
    left is done (a loaded machine slows down as it goes), stopped when the budget is spent;
    the learning rate decays on a cosine over the current count. ``clocks``: when the call
    and its training started, and how long the first loss probe took (the final one takes as
    long again); ``labelling``: the teacher's seconds and runs on frames it had not labelled,
    costed apart from the steps' pace."""

    def __init__(self, opt: Any, steps: int, seconds: float, clocks: tuple[float, float, float],
                 labelling: Sequence[float], epoch_per_step: float) -> None:  # fmt: skip
        self.opt, self.steps, self.seconds = opt, steps, seconds
        self.t_call, self.t_train, self.probe_s = clocks
        self.labelling, self.epoch_per_step = labelling, epoch_per_step
        self.todo, self.span, self.first, self.next = steps, 1, 0, min(FIT_AFTER, steps)
        self.sched: Any = None  # set with ``report`` at the first fit
        self.report: dict[str, Any] = {}

    def after(self, step: int, unlabelled: int) -> int:
        """Called after each optimizer step with the frames still unlabelled; returns the
        step count to run to."""
        if self.sched is not None:
            self.sched.step()
            if time.perf_counter() - self.t_call > self.seconds - self.probe_s:
                self.todo, self.report["stopped_at_budget"] = step, True
                return step
        if step < self.next:
            return self.todo
        if self.sched is None:
            self.first = step
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(1.0, k / self.span)))
            )
        self.todo = self._fit(step, unlabelled)
        self.span = max(1, self.todo - self.first)
        self.next = step + max(FIT_AFTER, (self.todo - step) // 4)
        return self.todo

    def _fit(self, done: int, unlabelled: int) -> int:
        """The step count that ends the call within ``seconds``, from the pace of the ``done``
        steps less the teacher's runs on new frames, those still to come (``unlabelled``
        frames, each drawn once an epoch) and the final loss probe."""
        now = time.perf_counter()
        label_s, runs = self.labelling
        pace = (now - self.t_train - label_s) / done
        per_label = label_s / runs if runs else 0.0
        left = self.seconds - (now - self.t_call) - self.probe_s
        more = left / pace
        for _ in range(2):  # the labels still to run shorten the steps that run them
            labels_s = per_label * unlabelled * min(1.0, more * self.epoch_per_step)
            more = max(0.0, left - labels_s) / pace
        todo = int(min(self.steps, done + more))
        self.report = {"seconds": round(self.seconds, 1), "steps_asked": self.steps,
                       "seconds_per_step": round(pace, 4), "measured_over": done,
                       "teacher_seconds_per_label": round(per_label, 4),
                       "fits": self.report.get("fits", 0) + 1,
                       "stopped_at_budget": False}  # fmt: skip
        return todo


def _write_back(student: ir.Model, module: OnnxModule) -> ir.Model:
    """A deep copy of ``student`` holding the module's trained weights, same dtypes and shapes."""
    from robopt_compile import ir as rir

    out = rir.from_proto(rir.to_proto(student))
    for name, param in module.named_onnx_parameters().items():
        init = out.graph.initializers[name]
        old = init.const_value
        array = np.ascontiguousarray(param.detach().numpy(), dtype=old.dtype.numpy())
        init.const_value = ir.tensor(array.reshape(old.shape.numpy()), name=name)
    return out


def distill(
    student: ir.Model,
    teacher: ir.Model,
    inputs: Sequence[Sample],
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 8,
    loss: str = "mse",
    augment: bool = True,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    label_cache: dict[int, dict[str, np.ndarray]] | None = None,
    seconds: float | None = None,
) -> DistillResult:
    """Fine-tune the student graph's weights so its outputs match the teacher's on ``inputs``.

    Why augment: calibration data is a few tens of unlabeled samples, and fitting the teacher on
    exactly those overfits within a few hundred steps (the student learns the samples, not the
    function). The teacher labels any input for free, so each training sample is a mixup of a
    random pair (lambda ~ U(0, 1)) plus gaussian noise of ``NOISE_SCALE`` times each input
    element's spread over the data: new points inside the data's hull that keep the student
    matching the teacher *between* the calibration samples, where the robot's inputs will be.
    Integer and bool inputs are not mixed; a sample takes the dominant side's value.

    Args:
        student: the pruned/factorised model; left unchanged.
        teacher: the source model whose outputs are the targets (run in ONNX Runtime).
        inputs: unlabeled samples, each a dict of the model's inputs at its exported batch.
        steps: optimizer steps (Adam, cosine decay of ``lr`` to 0).
        lr: peak learning rate; the table at the top of this module shows how 1e-4 was picked.
        batch_size: samples per step.
        loss: ``mse``, each output's squared error over the teacher output's variance on the
            data (outputs of different scales weigh equally), or ``kl``, softmax KL on the last
            axis (logits, discrete actions).
        augment: mixup + noise as above; without it, batches cycle through ``inputs``.
        seed: the same seed gives the same weights.
        threads: torch and ONNX Runtime threads (restored after); None keeps the defaults
            (all cores). The pipeline leaves it None: training is the build machine's work,
            while ``--threads`` is the robot's (the episodes and timings keep it).
        progress: called as ``progress(step, steps, loss)`` every few steps and at the end.
        label_cache: the teacher's float outputs by position in ``inputs``, kept by a caller
            that distils again on the same samples with more appended (on-policy rounds) and
            the same teacher: filled here, and read instead of running the teacher. Used only
            where labels are kept at all (no mixup, a mapped or per-sample batch).
        seconds: a time budget for the whole call: after ``FIT_AFTER`` steps at the full
            ``lr`` the step count is fitted to it (at most ``steps``, at least ``FIT_AFTER``)
            from the time those steps took, fitted again as it runs, and the cosine decay
            runs over the rest (``_Fit``); the report's ``fitted`` says how. None: exactly
            ``steps``.

    Returns:
        The trained copy and a report; its ``initial_loss``/``final_loss`` are the loss on the
        given samples (not augmented; up to ``PROBE_SAMPLES`` of them, evenly spaced) before
        and after training.

    Raises:
        InputError: bad arguments or inputs that do not fit the model.
        PassError: an op the trainer cannot run, or the trainer disagrees with ONNX Runtime.
    """
    if steps < 1:
        raise InputError(f"distillation steps must be >= 1, not {steps}")
    if batch_size < 1:
        raise InputError(f"distillation batch size must be >= 1, not {batch_size}")
    if loss not in ("mse", "kl"):
        raise InputError(f"distillation loss must be 'mse' or 'kl', not {loss!r}")
    if not inputs:
        raise InputError("distillation needs at least one input sample (calibration data)")

    t_call = time.perf_counter()
    module = OnnxModule(student)
    n_last = _channels_last(module)
    names = module.input_names
    samples = []
    for k, s in enumerate(inputs):
        missing = [n for n in names if n not in s]
        if missing:
            raise InputError(f"distillation sample {k} lacks input(s) {missing}; it has {list(s)}")
        samples.append({n: np.asarray(s[n]) for n in names})

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t_runner = OrtRunner(teacher, threads)
        missing_out = [o for o in module.output_names if o not in t_runner.output_names]
        if missing_out:
            raise PassError(
                f"distillation: student output(s) {missing_out} are not outputs of the teacher "
                f"({t_runner.output_names}); the student must keep the source's output names"
            )
        for n in t_runner.input_names:
            if n not in samples[0]:
                raise InputError(f"the teacher takes input {n!r}, which the samples lack")
        t_samples = [{**s, **{n: np.asarray(inputs[k][n]) for n in t_runner.input_names}}
                     for k, s in enumerate(samples)]  # fmt: skip

        def student_np(feeds: Sample) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = module(**{n: torch.from_numpy(feeds[n]) for n in names})
            return {k: v.numpy() for k, v in out.items()}

        ref = _check_trainer(student, student_np, samples[0], threads)
        float_out = [o for o in module.output_names if np.asarray(ref[o]).dtype.kind == "f"]
        if not float_out:
            raise PassError("distillation needs a float output to match; this model has none")
        # The loss figures and the output scales come from up to PROBE_SAMPLES of the data,
        # evenly spaced: on-policy rounds grow it to thousands of frames, and a full pass of
        # teacher + student per figure cost more than the training itself (9,157 frames of
        # metaworld-resnet18: ~11 of a round's 16 minutes).
        probe = list(range(0, len(samples), max(1, -(-len(samples) // PROBE_SAMPLES))))
        cached = label_cache if label_cache is not None and not augment else {}
        t_all = [cached[i] if i in cached else t_runner(t_samples[i]) for i in probe]
        norm = {}
        for o in float_out:
            var = float(np.concatenate([np.ravel(t[o]) for t in t_all]).astype(np.float64).var())
            norm[o] = var if var > 1e-12 else 1.0
        # Samples stack along axis 0 only where both graphs take it and give the same answer.
        # A graph refuses a batch it hard-codes: the interpreter as PassError, ORT as its own.
        all_names = sorted(set(names) | set(t_runner.input_names))
        batched = (
            batch_dim_symbolic(student)
            and batch_dim_symbolic(teacher)
            and runs_batched(student_np, samples, names, (PassError,))
            and runs_batched(t_runner, t_samples, t_runner.input_names, t_runner.refusals)
        )
        mapped = _vmap_runner(module, names)
        vmapped = not batched and _runs_vmapped(module, mapped, samples, names)
        aug = make_augment(t_samples, all_names) if augment else None
        rng = np.random.default_rng(seed)
        order: list[int] = []
        label_bytes = sum(np.asarray(t_all[0][o]).nbytes for o in float_out)
        labels: dict[int, dict[str, np.ndarray]] | None = None
        if aug is None and not batched and label_bytes * len(samples) <= MAX_LABEL_BYTES:
            labels = label_cache if label_cache is not None else {}
            for i, t in zip(probe, t_all, strict=True):
                labels.setdefault(i, {o: t[o] for o in float_out})

        def next_batch() -> tuple[list[Sample], list[int | None]]:
            if aug is not None:
                return [aug.draw(t_samples, rng) for _ in range(batch_size)], [None] * batch_size
            idx = []
            for _ in range(batch_size):
                if not order:
                    order.extend(rng.permutation(len(t_samples)).tolist())
                idx.append(order.pop())
            return [t_samples[i] for i in idx], list(idx)

        labelling = [0.0, 0]  # seconds and runs of the teacher on frames not labelled before

        def teacher_of(sample: Sample, i: int | None) -> dict[str, np.ndarray]:
            if labels is None or i is None:
                return t_runner(sample)
            if i not in labels:
                t = time.perf_counter()
                out = t_runner(sample)
                labels[i] = {o: out[o] for o in float_out}
                labelling[0] += time.perf_counter() - t
                labelling[1] += 1
            return labels[i]

        loss_of = _loss_fn(loss, norm)

        def step_loss(batch: list[Sample], idx: list[int | None]) -> float:
            """Forward + backward of one batch; returns its loss."""
            if batched:
                part = stack_samples(batch, all_names)
                value = loss_of(module(**to_t(part, names)), to_t(t_runner(part), float_out))
            elif vmapped:
                outs = [teacher_of(b, i) for b, i in zip(batch, idx, strict=True)]
                target = to_t(stack_samples(outs, float_out, new_axis=True), float_out)
                value = loss_of(mapped(to_t(stack_samples(batch, names, True), names)), target)
            else:
                total = 0.0
                for b, i in zip(batch, idx, strict=True):
                    part = loss_of(module(**to_t(b, names)), to_t(teacher_of(b, i), float_out))
                    (part / len(batch)).backward()
                    total += float(part.detach()) / len(batch)
                return total
            value.backward()
            return float(value.detach())

        def to_t(d: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(d[k])) for k in keys}

        def data_loss() -> float:
            with torch.no_grad():
                vals = [
                    float(loss_of(module(**to_t(s, names)), to_t(t, float_out)))
                    for s, t in zip([samples[i] for i in probe], t_all, strict=True)
                ]
            return float(np.mean(vals))

        params = list(module.params.values())
        n_params = sum(p.numel() for p in params)
        t_probe = time.perf_counter()
        initial = data_loss()
        start = time.perf_counter()
        probe_s = start - t_probe  # the final loss figure takes as long again
        last = float("nan")
        todo, fitted = steps, None
        if params:
            opt = torch.optim.Adam(params, lr=lr)
            sched = None if seconds is not None else (
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))  # fmt: skip
            fit = None if seconds is None else _Fit(
                opt, steps, seconds, (t_call, start, probe_s), labelling,
                batch_size / len(samples))  # fmt: skip
            step = 0
            while step < todo:
                step += 1
                opt.zero_grad(set_to_none=True)
                total = step_loss(*next_batch())
                opt.step()
                if sched is not None:
                    sched.step()
                if fit is not None:
                    todo = fit.after(step, len(samples) - len(labels) if labels is not None else 0)
                last = total
                if progress is not None and (step % _LOG_EVERY == 0 or step == todo):
                    progress(step, todo, total)
            fitted = fit.report or None if fit is not None else None
        seconds_run = time.perf_counter() - start
        final = data_loss()
    finally:
        torch.set_num_threads(old_threads)

    report = {
        "steps": todo,
        "seconds": round(seconds_run, 3),
        "steps_per_second": round(todo / seconds_run, 3) if seconds_run > 0 else None,
        "lr": lr,
        "batch_size": batch_size,
        "batched": batched,
        "vmapped": vmapped,
        "channels_last_tensors": n_last,
        "teacher_labels": "computed once per sample" if labels is not None else "every step",
        "loss": loss,
        "initial_loss": initial,
        "final_loss": final,
        "last_batch_loss": last,
        "normalisation": {o: norm[o] for o in float_out} if loss == "mse" else None,
        "augment": (
            f"mixup of random sample pairs (lambda ~ U(0,1)) + gaussian noise "
            f"{NOISE_SCALE} x per-element std of float inputs"
            if augment
            else "none: batches cycle through the samples"
        ),
        "samples": len(samples),
        "loss_samples": len(probe),
        "teacher_runtime": "onnxruntime",
        "trainable_parameters": n_params,
        "trainable_tensors": len(params),
        "seed": seed,
    }
    if fitted is not None:
        report["fitted"] = fitted
    return DistillResult(_write_back(student, module), report)
