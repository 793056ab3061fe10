"""Train ``metaworld-vla`` on the demonstrations ``metaworld-resnet18`` was trained on.

    python -m robopt_compile.zoo.train_vla [--steps 2000] [--batch 32] [--lr 6e-4] [--seed 0]
        [--out robopt_compile/zoo/weights/metaworld_vla.npz] [--init WEIGHTS]

1. Data: the recorded demonstrations of ``train_metaworld`` (400 DART-noisy expert episodes,
   clean expert actions as labels, reused from robopt's cache or recorded once), each frame
   averaged to 84x84 and each state turned into the prompt (instruction bytes + the hand state
   as bin tokens, ``zoo/vla_metaworld.py``); each action into 4 bin tokens.
2. Next-token training as OpenVLA's: the prefill (BOS, image patches, prompt) and the first 3
   action tokens (teacher forcing) in, the 4 action tokens out, cross-entropy over the 256 bins
   with labels smoothed over neighbouring bins (a Gaussian of 1.5 bins: the bins are ordered,
   and 27k frames are few). The bin tokens' embeddings start as sinusoids of their value so
   that neighbouring bins start alike. AdamW, one-cycle schedule, random shifts of up to 4
   pixels, bf16 autocast on the CPU, 2 threads.
3. Closed-loop evaluation (torch fp32, greedy decoding with the KV cache) on held-out seeds.

Writes the weights (float16 ``.npz``) and a ``.json`` record (settings, seeds, success, time).
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

from robopt_compile.tasks import get_task
from robopt_compile.tasks.metaworld import INSTRUCTIONS, PROPRIO_DIM, SUITE, expert_policy
from robopt_compile.zoo.train_metaworld import _shift, cached_demos, demo_seeds
from robopt_compile.zoo.vla import N_BINS, prompt_embeds
from robopt_compile.zoo.vla_metaworld import (
    CONFIG,
    WEIGHTS_FILE,
    MetaWorldVla,
    bin_token,
    encode_prompt,
    load_weights,
    save_weights,
    task_policy,
    value_bins,
)

SHIFT = 4
SMOOTH = 1.5  # label smoothing over neighbouring bins (standard deviation, bins)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """84x84 uint8 frames, prompts and action bins of every recorded step."""
    frames = data["frames"]
    n = len(frames)
    small = np.empty((n, 3, 84, 84), np.uint8)
    for i in range(0, n, 2048):
        x = np.asarray(frames[i : i + 2048], np.float32)
        small[i : i + 2048] = (x.reshape(-1, 3, 84, 2, 84, 2).mean(axis=(3, 5)) + 0.5).astype(
            np.uint8)  # fmt: skip
    states, tasks = np.asarray(data["states"]), np.asarray(data["tasks"])
    ids = np.concatenate([encode_prompt(INSTRUCTIONS[SUITE[t]], s[:PROPRIO_DIM])
                          for s, t in zip(states, tasks, strict=True)])  # fmt: skip
    bins = value_bins(np.asarray(data["actions"]))
    return {"frames": torch.from_numpy(small), "ids": torch.from_numpy(ids),
            "bins": torch.from_numpy(bins), "tasks": torch.from_numpy(tasks)}  # fmt: skip


def init_bin_embeddings(model: MetaWorldVla) -> None:
    """Sinusoidal features of each bin's value (neighbouring bins start alike)."""
    d = CONFIG.llm_width
    v = torch.linspace(1.0, -1.0, N_BINS)[:, None]  # head bin b decodes near 1 - 2b/255
    freq = torch.exp(torch.linspace(0.0, np.log(64.0), d // 2))[None] * np.pi
    feats = torch.cat([torch.sin(v * freq), torch.cos(v * freq)], dim=1) * 0.05
    with torch.no_grad():
        model.llm.model.embed_tokens.weight[-N_BINS:] = feats


def action_logits(model: MetaWorldVla, pix: torch.Tensor, ids: torch.Tensor,
                  bins: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Teacher-forced logits (B, 4, 256) of the 4 action tokens."""
    embed = model.llm.model.embed_tokens
    x = prompt_embeds(embed, ids, model.vision(pix))
    prev = torch.from_numpy(bin_token(bins[:, :-1].numpy()))
    x = torch.cat([x, embed(prev)], dim=1)
    h = model.llm.model(inputs_embeds=x, use_cache=False).last_hidden_state
    return model.action_head(h[:, -CONFIG.action_dims :])


def soft_labels(bins: torch.Tensor) -> torch.Tensor:
    grid = torch.arange(N_BINS, dtype=torch.float32)
    w = torch.exp(-0.5 * ((grid - bins[..., None].float()) / SMOOTH) ** 2)
    return w / w.sum(-1, keepdim=True)


def train(d: dict[str, torch.Tensor], steps: int, batch: int, lr: float, seed: int,
          init: Path | None = None, balance: bool = False,
          ) -> tuple[MetaWorldVla, list[float], list[float]]:  # fmt: skip
    """Next-token training; the model (eval mode), loss curve and token accuracy curve.
    ``balance``: every task's frames drawn equally often (else every frame equally)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    model = MetaWorldVla(CONFIG)
    init_bin_embeddings(model)
    if init is not None:
        load_weights(model, init)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    n = len(d["bins"])
    counts = torch.bincount(d["tasks"].long())
    weights = 1.0 / counts[d["tasks"].long()].double()
    curve: list[float] = []
    acc: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        if balance:
            idx = torch.multinomial(weights, batch, replacement=True, generator=rng)
        else:
            idx = torch.randint(0, n, (batch,), generator=rng)
        pix = _shift(d["frames"][idx].float() / 127.5 - 1.0, rng, SHIFT)
        bins = d["bins"][idx]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = action_logits(model, pix, d["ids"][idx], bins)
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, N_BINS), soft_labels(bins).reshape(-1, N_BINS)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        acc.append(float((logits.argmax(-1) - bins).abs().le(2).float().mean()))
        if (step + 1) % 50 == 0:
            el = time.perf_counter() - t0
            _log(f"train: step {step + 1}/{steps}, loss {np.mean(curve[-50:]):.3f}, "
                 f"within 2 bins {np.mean(acc[-50:]):.1%}, {el / 60:.1f} min, about "
                 f"{el / (step + 1) * (steps - step - 1) / 60:.0f} min left")  # fmt: skip
    return model.eval(), curve, acc


def evaluate(model: MetaWorldVla, episodes: int) -> dict[str, float]:
    """Closed-loop success per task on seeds 0..episodes-1 (torch fp32)."""
    out = {}
    for env in SUITE:
        with get_task(f"metaworld-{env}") as task:
            wins = sum(task.episode(task_policy(model.act), s).success
                       for s in range(episodes))  # fmt: skip
        out[env] = wins / episodes
        _log(f"evaluate: trained VLA on {env}: {wins}/{episodes}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=100, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    ap.add_argument("--init", type=Path, default=None, help="continue from these weights")
    ap.add_argument("--balance", action="store_true",
                    help="draw each task's frames equally often")  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    d = prepare(cached_demos(args.demos, args.seed))
    t_prep = time.perf_counter() - t0
    previous = None
    if args.init is not None and args.init.with_suffix(".json").is_file():
        previous = json.loads(args.init.with_suffix(".json").read_text())
    model, curve, acc = train(d, args.steps, args.batch, args.lr, args.seed, args.init,
                              args.balance)  # fmt: skip
    t_train = time.perf_counter() - t0 - t_prep
    save_weights(model, args.out)
    success = evaluate(model, args.eval_episodes) if args.eval_episodes else {}
    expert = {}
    if args.eval_episodes and previous is None:
        for env in SUITE:
            with get_task(f"metaworld-{env}") as task:
                wins = sum(task.episode(expert_policy(task), s).success
                           for s in range(args.eval_episodes))  # fmt: skip
            expert[env] = wins / args.eval_episodes
    record: dict[str, Any] = {
        "model": CONFIG.name,
        "command": " ".join(["python -m robopt_compile.zoo.train_vla", *(argv or sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "suite": list(SUITE),
        "frames": len(d["bins"]),
        "demo_seeds": {
            env: [demo_seeds(i, args.demos, args.seed)[0], demo_seeds(i, args.demos, args.seed)[-1]]
            for i, env in enumerate(SUITE)
        },
        "eval_seeds": [0, args.eval_episodes - 1],
        "success_trained": success,
        "success_expert": expert or (previous or {}).get("success_expert", {}),
        "final_loss": float(np.mean(curve[-100:])),
        "final_within_2_bins": float(np.mean(acc[-100:])),
        "previous_stage": previous,
        "prepare_minutes": round(t_prep / 60, 1),
        "train_minutes": round(t_train / 60, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"trained": success, "expert": record["success_expert"]}, indent=2))


if __name__ == "__main__":
    main()
