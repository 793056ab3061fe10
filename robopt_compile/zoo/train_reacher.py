"""Train ``reacher-cnn`` by behaviour cloning a scripted expert on ``Reacher-v5-pixels``.

    python -m robopt_compile.zoo.train_reacher [--demos 300] [--epochs 30] [--seed 0]
                                               [--out robopt_compile/zoo/weights/reacher_cnn.npz]

1. Demonstrations: the scripted expert (``robopt_compile.tasks.reacher``: analytic two-link IK
   to the target, PD control on the joint angles) drives the arm with Gaussian action noise so
   that the data covers recoveries from off-course states; every step stores the rendered frame
   and joint state (built by ``ReacherPixelsTask.observe``, the same code the evaluation uses),
   the NOISE-FREE expert action as the label and the target position for the auxiliary loss.
2. Behaviour cloning: MSE on the action plus ``--aux-weight`` times MSE on the target position
   predicted from the spatial-softmax keypoints; Adam with a cosine learning-rate schedule.
3. Closed-loop evaluation in torch on held-out seeds (never used for demonstrations), for both
   the noise-free expert and the trained policy.

Writes the weights (``.npz`` of float32 arrays) and, next to them, a ``.json`` with the
settings, seeds, measured success rates, training time and torch version. Progress goes to
stderr; the final summary to stdout. Deterministic for a given ``--seed`` (single process,
deterministic torch algorithms, 2 threads).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robopt_compile.errors import InputError
from robopt_compile.tasks.reacher import ReacherPixelsTask, expert_policy
from robopt_compile.zoo.reacher import (
    TARGET_SCALE,
    WEIGHTS_FILE,
    ReacherCNNPolicy,
    save_weights,
)

# Seeds: demonstrations use DEMO_SEED_BASE + seed * SEED_STRIDE + i, far from every seed robopt
# evaluates on (0.. for `robopt-compile evaluate`, 500,000.. for the accuracy guard, 1,000,000..
# for task calibration); the held-out evaluation here uses 0..N-1, the same episodes
# `robopt-compile evaluate` runs by default.
SEED_STRIDE = 1_000_000
DEMO_SEED_BASE = 10_000_000
MAX_DEMOS = SEED_STRIDE  # per --seed, so two --seed values never share a demonstration


def demo_seeds(seed: int, n: int) -> list[int]:
    """Environment seeds of the training demonstrations."""
    return [DEMO_SEED_BASE + seed * SEED_STRIDE + i for i in range(n)]


def eval_seeds(seed: int, n: int) -> list[int]:
    """Held-out environment seeds for the closed-loop evaluation (never demonstrations)."""
    return list(range(n))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (no machine paths in JSON)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect(
    task: ReacherPixelsTask, seeds: list[int], noise: float, rng_seed: int
) -> dict[str, np.ndarray]:
    """Roll out the noisy expert on ``seeds``; return frames (uint8), states, labels, targets."""
    rng = np.random.default_rng(rng_seed)
    frames, states, actions, targets = [], [], [], []
    for n, s in enumerate(seeds):
        feeds = task.reset(s)
        for t in range(task.max_steps):
            if t:
                feeds = task.observe()
            clean = task.expert()
            # The frame is uint8 / 255 in float32, so this round trip is exact.
            frames.append(np.rint(feeds["image"][0] * 255.0).astype(np.uint8))
            states.append(feeds["state"][0])
            actions.append(clean)
            targets.append(task.target_position().astype(np.float32))
            task.step(clean + noise * rng.standard_normal(2).astype(np.float32))
        if (n + 1) % 50 == 0 or n + 1 == len(seeds):
            log(f"collected {n + 1}/{len(seeds)} demonstrations")
    return {
        "frames": np.stack(frames),
        "states": np.stack(states),
        "actions": np.stack(actions),
        "targets": np.stack(targets),
    }


def evaluate(task: ReacherPixelsTask, policy: Any, seeds: list[int]) -> dict[str, Any]:
    """Closed-loop success rate and mean return of ``policy`` on ``seeds``."""
    eps = [task.episode(policy, s) for s in seeds]
    return {
        "episodes": len(eps),
        "success_rate": sum(e.success for e in eps) / len(eps),
        "mean_return": float(np.mean([e.ret for e in eps])),
        "failed_seeds": [e.seed for e in eps if not e.success],
    }


def torch_policy(model: ReacherCNNPolicy) -> Any:
    """Wrap ``model`` as a task ``Policy`` (numpy feeds in, list of numpy outputs out)."""

    def policy(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["state"]))
        return [out.numpy()]

    return policy


def train(
    data: dict[str, np.ndarray], args: argparse.Namespace
) -> tuple[ReacherCNNPolicy, list[dict[str, float]]]:
    """Behaviour cloning on ``data``; returns the model (eval mode) and per-epoch losses."""
    torch.manual_seed(args.seed)
    model = ReacherCNNPolicy()
    frames = torch.from_numpy(data["frames"])  # (N, 3, 64, 64) uint8
    states = torch.from_numpy(data["states"])
    actions = torch.from_numpy(data["actions"])
    targets = torch.from_numpy(data["targets"]) / TARGET_SCALE
    with torch.no_grad():
        img = frames[:: max(1, len(frames) // 2000)].float() / 255.0
        model.image_mean.copy_(img.mean(dim=(0, 2, 3)).view(1, 3, 1, 1))
        model.image_std.copy_(img.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, 3, 1, 1))
        model.state_mean.copy_(states.mean(0))
        model.state_std.copy_(states.std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n = len(frames)
    steps_per_epoch = (n + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(args.seed)
    mse = nn.MSELoss()
    history = []
    model.train()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        sums = {"action": 0.0, "target": 0.0}
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch : (i + 1) * args.batch]
            image = frames[idx].float() / 255.0
            pred_a, pred_t = model.forward_train(image, states[idx])
            loss_a = mse(pred_a, actions[idx])
            loss_t = mse(pred_t, targets[idx])
            loss = loss_a + args.aux_weight * loss_t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["action"] += loss_a.item() * len(idx)
            sums["target"] += loss_t.item() * len(idx)
        row = {k: v / n for k, v in sums.items()}
        # Target error in metres (RMS), the auxiliary loss's physical meaning.
        row["target_rmse_m"] = float(np.sqrt(row["target"]) * TARGET_SCALE)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        log(
            f"epoch {epoch + 1}/{args.epochs}: action mse {row['action']:.4f}, target rmse "
            f"{row['target_rmse_m'] * 1000:.1f} mm ({row['seconds']:.1f} s)"
        )
    model.eval()
    return model, history


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m robopt_compile.zoo.train_reacher",
        description="Behaviour-clone reacher-cnn from a scripted expert on Reacher-v5-pixels.",
    )
    p.add_argument("--demos", type=int, default=300, help="expert demonstrations (50 steps)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--noise", type=float, default=0.2, help="expert action noise (std)")
    p.add_argument("--aux-weight", type=float, default=1.0, help="target-position loss weight")
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out evaluation seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="weights .npz to write")
    args = p.parse_args(argv)
    if min(args.demos, args.epochs, args.batch, args.eval_episodes, args.threads) < 1:
        raise InputError("--demos, --epochs, --batch, --eval-episodes and --threads must be >= 1.")
    if args.demos > MAX_DEMOS:
        raise InputError(f"--demos must be at most {MAX_DEMOS} (seeds would overlap).")
    if args.out.suffix != ".npz":
        raise InputError(f"--out must name a .npz file, got {args.out}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_seeds = demo_seeds(args.seed, args.demos)
    test_seeds = eval_seeds(args.seed, args.eval_episodes)
    with ReacherPixelsTask() as task:
        t0 = time.perf_counter()
        data = collect(task, train_seeds, args.noise, rng_seed=args.seed)
        collect_s = time.perf_counter() - t0
        log(f"{len(data['frames'])} samples in {collect_s:.0f} s")
        t0 = time.perf_counter()
        model, history = train(data, args)
        train_s = time.perf_counter() - t0
        log(f"trained in {train_s:.0f} s; evaluating on {len(test_seeds)} held-out seeds")
        expert = evaluate(task, expert_policy(task), test_seeds)
        t0 = time.perf_counter()
        policy = evaluate(task, torch_policy(model), test_seeds)
        eval_s = time.perf_counter() - t0
    save_weights(model, args.out)
    report = {
        "model": "reacher-cnn",
        "task": ReacherPixelsTask.name,
        "success_rule": ReacherPixelsTask.success_rule,
        "settings": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "demo_seeds": [train_seeds[0], train_seeds[-1]],  # inclusive range
        "eval_seeds": [test_seeds[0], test_seeds[-1]],  # inclusive range
        "samples": len(data["frames"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "expert": expert,
        "policy": policy,
        "final_losses": history[-1],
        "epoch_s": [row["seconds"] for row in history],
        "collect_s": round(collect_s, 1),
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "weights_bytes": args.out.stat().st_size,
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"expert success {expert['success_rate']:.1%}, policy success "
        f"{policy['success_rate']:.1%} on {len(test_seeds)} held-out seeds; trained in "
        f"{train_s:.0f} s; wrote {args.out} ({report['weights_bytes']} bytes)"
    )
    return 0


if __name__ == "__main__":
    from robopt_compile.errors import RoboptError

    try:
        sys.exit(main())
    except RoboptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
