"""Train ``metaworld-resnet18`` by behaviour cloning Meta-World's scripted experts.

    python -m robopt_compile.zoo.train_metaworld [--demos 100] [--steps 2400] [--seed 0]
        [--out robopt_compile/zoo/weights/metaworld_resnet18.npz] [--init WEIGHTS]

The committed weights came from three runs (27 + 36 + 18 minutes of training here, 2 cores;
the third also spent 6 minutes driving the task for DAgger):

    python -m robopt_compile.zoo.train_metaworld --batch 32 --steps 2000
    python -m robopt_compile.zoo.train_metaworld --batch 32 --steps 2500 --lr 5e-4 \
        --init robopt_compile/zoo/weights/metaworld_resnet18.npz --skip-expert
    python -m robopt_compile.zoo.train_metaworld --batch 32 --steps 1500 --lr 3e-4 \
        --init robopt_compile/zoo/weights/metaworld_resnet18.npz --dagger 30 --skip-expert

1. Demonstrations: for every task of ``SUITE`` (``robopt_compile/tasks/metaworld.py``), the
   scripted expert drives the arm with Gaussian action noise (standard deviation 0, 0.1 or 0.2,
   in turn) so the data covers recoveries from off-course states; every step stores the frame
   and state built by ``MetaWorldTask.observe`` (the code the evaluation uses) and the
   NOISE-FREE expert action as the label. Recorded once into robopt's cache
   (``$ROBOPT_CACHE/metaworld``) and reused while the settings are unchanged.
2. Behaviour cloning: mean squared error on the action, AdamW with a cosine learning-rate
   schedule, random shifts of up to 8 pixels as augmentation, bf16 autocast on the CPU.
   With ``--dagger N`` (one round of DAgger): the ``--init`` policy first drives N episodes of
   every task itself (seeds from ``DAGGER_SEED_BASE``), each visited state labelled with the
   expert's action, and those frames join the demonstrations.
3. Closed-loop evaluation in torch (fp32) on held-out seeds (never demonstrations), for the
   noise-free expert and the trained policy.

Writes the weights (``.npz`` of float16 arrays) and, next to them, a ``.json`` with the
settings, seeds, measured success rates, training time and torch version. Progress (with an
estimate of the time left) goes to stderr; the summary to stdout. Deterministic for a given
``--seed`` (single process, deterministic torch algorithms, 2 threads).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopt_compile.paths import cache_dir
from robopt_compile.tasks import get_task
from robopt_compile.tasks.metaworld import MAX_STEPS, SUITE, expert_policy
from robopt_compile.zoo.metaworld import (
    IMAGE_SIZE,
    WEIGHTS_FILE,
    MetaWorldResNetPolicy,
    load_weights,
    save_weights,
)

# Demonstrations use DEMO_SEED_BASE + task * SEED_STRIDE + i: far from every seed robopt
# evaluates on (0.. for `robopt-compile evaluate`, 500,000.. for the accuracy guard, 1,000,000..
# for task calibration); the held-out evaluation here uses 0..N-1.
DEMO_SEED_BASE = 20_000_000
DAGGER_SEED_BASE = 40_000_000  # on-policy episodes of ``--dagger`` (never evaluated on)
SEED_STRIDE = 1_000_000
NOISE = (0.0, 0.1, 0.2)
SHIFT = 8  # pixels of random shift (pad and crop) while training


def demo_seeds(task_index: int, n: int, seed: int = 0) -> list[int]:
    """Environment seeds of the training demonstrations of one task."""
    base = DEMO_SEED_BASE + (seed * len(SUITE) + task_index) * SEED_STRIDE
    return [base + i for i in range(n)]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def record(demos: int, seed: int) -> dict[str, np.ndarray]:
    """Frames (uint8), states, clean expert actions and task indices of every demonstration."""
    frames, states, actions, tasks = [], [], [], []
    t0 = time.perf_counter()
    for ti, env in enumerate(SUITE):
        with get_task(f"metaworld-{env}") as task:
            for i, s in enumerate(demo_seeds(ti, demos, seed)):
                noise = NOISE[i % len(NOISE)]
                act = expert_policy(task, noise=noise, seed=s)
                task.reset(s)
                for _ in range(MAX_STEPS):
                    frames.append((task.frame() * 255.0 + 0.5).astype(np.uint8))
                    states.append(task.state())
                    actions.append(task.expert())  # the label: the expert without noise
                    tasks.append(ti)
                    task.step(act({})[0][0])
                    if task.succeeded:
                        break
                done = ti * demos + i + 1
                left = (time.perf_counter() - t0) / done * (len(SUITE) * demos - done)
                if done % 20 == 0:
                    _log(f"record: {done}/{len(SUITE) * demos} demonstrations, "
                         f"{len(frames)} frames, about {left / 60:.0f} min left")  # fmt: skip
    return {"frames": np.stack(frames), "states": np.stack(states).astype(np.float32),
            "actions": np.stack(actions).astype(np.float32), "tasks": np.array(tasks)}  # fmt: skip


def record_dagger(model: Any, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """DAgger's data: the policy ``model`` drives ``episodes`` episodes of every task (seeds from
    ``DAGGER_SEED_BASE``); every visited state is labelled with the scripted expert's action, so
    training sees the states the policy itself reaches, including its own mistakes."""
    frames, states, actions, tasks = [], [], [], []
    policy, t0 = torch_policy(model), time.perf_counter()
    for ti, env in enumerate(SUITE):
        base = DAGGER_SEED_BASE + (seed * len(SUITE) + ti) * SEED_STRIDE
        wins = 0
        with get_task(f"metaworld-{env}") as task:
            for s in range(base, base + episodes):
                feeds = task.reset(s)
                for _ in range(MAX_STEPS):
                    frames.append((feeds["image"][0] * 255.0 + 0.5).astype(np.uint8))
                    states.append(feeds["state"][0])
                    actions.append(task.expert())
                    tasks.append(ti)
                    task.step(policy(feeds)[0][0])
                    if task.succeeded:
                        break
                    feeds = task.observe()
                wins += task.succeeded
        left = (time.perf_counter() - t0) / (ti + 1) * (len(SUITE) - ti - 1)
        _log(f"dagger: {env}: policy succeeded {wins}/{episodes}, {len(frames)} frames so far, "
             f"about {left / 60:.0f} min left")  # fmt: skip
    return {"frames": np.stack(frames), "states": np.stack(states).astype(np.float32),
            "actions": np.stack(actions).astype(np.float32), "tasks": np.array(tasks)}  # fmt: skip


def cached_demos(demos: int, seed: int) -> dict[str, np.ndarray]:
    """``record`` once per settings, kept in robopt's cache folder as plain .npy files."""
    key = hashlib.sha256(json.dumps([demos, seed, SUITE, NOISE, IMAGE_SIZE, MAX_STEPS,
                                     DEMO_SEED_BASE]).encode()).hexdigest()[:16]  # fmt: skip
    folder = cache_dir("metaworld") / f"demos-{key}"
    names = ("frames", "states", "actions", "tasks")
    if all((folder / f"{n}.npy").is_file() for n in names):
        _log(f"record: reusing {folder}")
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    data = record(demos, seed)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for n in names:
        np.save(tmp / f"{n}.npy", data[n])
    tmp.rename(folder)
    return data


def _shift(x: torch.Tensor, rng: torch.Generator, shift: int = SHIFT) -> torch.Tensor:
    """Random shifts of up to ``shift`` pixels (replicate padding, then a random crop)."""
    b, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (shift,) * 4, mode="replicate")
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=rng)
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=rng)
    return torch.stack([pad[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(b)])


def train(
    data: dict[str, np.ndarray], steps: int, batch: int, lr: float, seed: int,
    init: Path | None = None,
) -> Any:  # fmt: skip
    """Behaviour cloning (from ``init``'s weights if given); the model (eval mode) and the
    loss curve."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    model = MetaWorldResNetPolicy()
    states = torch.from_numpy(np.asarray(data["states"]))
    model.state_mean.copy_(states.mean(0))
    model.state_std.copy_(states.std(0).clamp_min(1e-3))
    if init is not None:
        load_weights(model, init)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    frames, actions = data["frames"], torch.from_numpy(np.asarray(data["actions"]))
    n = len(actions)
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=rng)
        img = torch.from_numpy(np.asarray(frames[np.sort(idx.numpy())])).float() / 255.0
        order = torch.argsort(torch.argsort(idx))  # frames were read in sorted order
        img = _shift(img[order], rng).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(img, states[idx])
        loss = torch.nn.functional.mse_loss(pred.float(), actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss))
        if (step + 1) % 50 == 0:
            el = time.perf_counter() - t0
            _log(f"train: step {step + 1}/{steps}, loss {np.mean(curve[-50:]):.4f}, "
                 f"{el / 60:.1f} min, about {el / (step + 1) * (steps - step - 1) / 60:.0f} "
                 "min left")  # fmt: skip
    return model.eval().to(memory_format=torch.contiguous_format), curve


def torch_policy(model: MetaWorldResNetPolicy) -> Any:
    """The torch model as a task policy (feeds -> [action]), fp32, no gradients."""

    def act(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            a = model(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["state"]))
        return [a.numpy()]

    return act


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=100, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=2400, help="training steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from these weights (a second stage of training)")  # fmt: skip
    ap.add_argument("--dagger", type=int, default=0, metavar="EPISODES",
                    help="add EPISODES on-policy episodes per task, driven by the --init "
                    "policy and labelled by the expert (one round of DAgger)")  # fmt: skip
    ap.add_argument(
        "--skip-expert",
        action="store_true",
        help="do not evaluate the expert again (keep the record's figures)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    data = cached_demos(args.demos, args.seed)
    previous, dagger_frames = None, 0
    if args.init is not None and args.init.with_suffix(".json").is_file():
        previous = json.loads(args.init.with_suffix(".json").read_text())
    if args.dagger:
        if args.init is None:
            ap.error("--dagger needs --init: the policy that drives the on-policy episodes")
        driver = load_weights(MetaWorldResNetPolicy(), args.init).eval()
        extra = record_dagger(driver, args.dagger, args.seed)
        dagger_frames = len(extra["actions"])
        data = {k: np.concatenate([np.asarray(data[k]), extra[k]]) for k in data}
    t_rec = time.perf_counter() - t0
    model, curve = train(data, args.steps, args.batch, args.lr, args.seed, args.init)
    t_train = time.perf_counter() - t0 - t_rec
    save_weights(model, args.out)
    trained = {}
    for env in SUITE:
        with get_task(f"metaworld-{env}") as task:
            wins = sum(task.episode(torch_policy(model), s).success
                       for s in range(args.eval_episodes))  # fmt: skip
        trained[env] = wins / args.eval_episodes
        _log(f"evaluate: trained policy on {env}: {wins}/{args.eval_episodes}")
    expert = dict((previous or {}).get("success_expert") or {}) if args.skip_expert else {}
    for env in [] if expert else SUITE:
        with get_task(f"metaworld-{env}") as task:
            wins = sum(task.episode(expert_policy(task), s).success
                       for s in range(args.eval_episodes))  # fmt: skip
        expert[env] = wins / args.eval_episodes
    record_json = {
        "model": "metaworld-resnet18",
        "command": " ".join(
            ["python -m robopt_compile.zoo.train_metaworld", *(argv or sys.argv[1:])]
        ),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "suite": list(SUITE),
        "frames": len(data["actions"]),
        "dagger_frames": dagger_frames,
        "dagger_seeds": {
            env: [
                DAGGER_SEED_BASE + (args.seed * len(SUITE) + i) * SEED_STRIDE,
                DAGGER_SEED_BASE + (args.seed * len(SUITE) + i) * SEED_STRIDE + args.dagger - 1,
            ]
            for i, env in enumerate(SUITE)
        }
        if args.dagger
        else None,
        "demo_seeds": {
            env: [demo_seeds(i, args.demos, args.seed)[0], demo_seeds(i, args.demos, args.seed)[-1]]
            for i, env in enumerate(SUITE)
        },
        "eval_seeds": [0, args.eval_episodes - 1],
        "success_trained": trained,
        "success_expert": expert,
        "final_loss": float(np.mean(curve[-100:])),
        "previous_stage": previous,  # the record of the weights this run started from
        "record_minutes": round(t_rec / 60, 1),
        "train_minutes": round(t_train / 60, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record_json, indent=2) + "\n")
    print(json.dumps({"trained": trained, "expert": expert}, indent=2))


if __name__ == "__main__":
    main()
