"""The remote part of ``make bench``: the same bundle benchmarked here and through a loopback
``robopt-bench serve``, to show that remote figures are local figures (docs/REMOTE.md).

The server runs in its own process, as on a robot, started by the real CLI on a free port with
a token file. Local (``run_benchmark`` in this process) and remote (``remote_benchmark``
through the server) take turns, the leader swapping every round, so a noisy neighbour hits
both alike; each round loads the engine afresh on both sides. The headline is the median over
rounds of each side's p50 and their ratio (goal: within 5 %), plus what the remote path adds
around the benchmark: packing, upload and unpack, validation (sha256 of every file), queue
wait, and the whole call's wall time against a local call's.

Standalone: ``python -m benchmarks.remote`` prints the markdown section.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOAL_PCT = 5.0
_SERVE = "from robopt_compile.bench.cli import main; main()"


class LoopbackServer:
    """``robopt-bench serve --port 0`` in a subprocess; its log is drained in a thread."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.token = secrets.token_urlsafe(32)
        token_file = workdir / "token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, "serve", "--token-file", str(token_file),
             "--port", "0", "--work-dir", str(workdir / "serve"), *extra],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            m = re.search(r"listening on (http://\S+:(\d+))", line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                # A full stderr pipe would block the server's request log: keep reading it.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.close()
        raise RuntimeError("robopt-bench serve did not start: " + " | ".join(self.lines[-5:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _compile(model: str, workdir: Path, log: Callable[[str], None]) -> Path:
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    bundle = workdir / f"remote-{model}-onnxruntime"
    log(f"[bench] remote: compiling zoo:{model} for host, onnxruntime, 1 thread")
    compile_model(
        f"zoo:{model}",
        bundle,
        CompileOptions(target="host", backend="onnxruntime", threads=1),
        force=True,
    )
    return bundle


def run_remote_section(
    workdir: Path,
    log: Callable[[str], None],
    model: str = "state-mlp",
    rounds: int = 20,
    runs: int = 2000,
    warmup: int = 100,
) -> dict[str, Any]:
    """Local vs loopback-remote benchmark of one bundle, interleaved over ``rounds``.

    The default model is the smallest (p50 in tens of microseconds), where anything the
    server adds per inference would show most; ``--model visuomotor-cnn`` measures the upload
    of a larger bundle.

    Returns:
        A JSON-serialisable dict: settings, ``local_p50_ms``/``remote_p50_ms`` (medians over
        rounds of each run's p50), ``ratio`` (remote / local), ``paired_ratio`` (median over
        rounds of each round's remote / local, which cancels slow load drift),
        ``within_goal`` (both ratios within the goal), medians of the
        remote overheads (``pack_ms``, ``upload_ms``, ``validate_ms``, ``queue_wait_ms``), the
        calls' wall times, and every round.
    """
    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.bench.machine import machine_summary
    from robopt_compile.bench.remote import remote_benchmark

    workdir.mkdir(parents=True, exist_ok=True)
    bundle = _compile(model, workdir, log)
    server = LoopbackServer(workdir)
    per_round: list[dict[str, Any]] = []
    try:
        for k in range(rounds):
            row: dict[str, Any] = {"round": k, "first": "local" if k % 2 == 0 else "remote"}
            order = ("local", "remote") if k % 2 == 0 else ("remote", "local")
            for side in order:
                t0 = time.perf_counter()
                if side == "local":
                    r = run_benchmark(bundle, runs=runs, warmup=warmup, threads=1)
                else:
                    r = remote_benchmark(
                        bundle, server.url, server.token, runs=runs, warmup=warmup, threads=1
                    )
                    row["remote"] = {
                        key: r["remote"][key]
                        for key in ("pack_ms", "upload_bytes", "upload_ms", "validate_ms",
                                    "queue_wait_ms", "run_ms", "overlapping_uploads")
                    }  # fmt: skip
                if not r["fidelity"]["passed"]:
                    raise RuntimeError(f"{side} fidelity failed in round {k}")
                row[f"{side}_p50_ms"] = r["latency"]["p50_ms"]
                row[f"{side}_p99_ms"] = r["latency"]["p99_ms"]
                row[f"{side}_wall_s"] = time.perf_counter() - t0
            per_round.append(row)
            log(
                f"[bench] remote round {k + 1}/{rounds}: local p50 {row['local_p50_ms']:.4f} ms, "
                f"remote p50 {row['remote_p50_ms']:.4f} ms"
            )
    finally:
        server.close()

    def med(key: str, sub: str | None = None) -> float:
        return statistics.median(r[sub][key] if sub else r[key] for r in per_round)

    local, remote = med("local_p50_ms"), med("remote_p50_ms")
    ratio = remote / local
    paired = statistics.median(r["remote_p50_ms"] / r["local_p50_ms"] for r in per_round)
    return {
        "model": model,
        "backend": "onnxruntime",
        "threads": 1,
        "rounds": rounds,
        "runs": runs,
        "warmup": warmup,
        "machine": machine_summary("onnxruntime")["cpu_model"],
        "local_p50_ms": local,
        "remote_p50_ms": remote,
        "local_p99_ms": med("local_p99_ms"),
        "remote_p99_ms": med("remote_p99_ms"),
        "ratio": ratio,
        "paired_ratio": paired,
        "goal_pct": GOAL_PCT,
        "within_goal": max(abs(ratio - 1.0), abs(paired - 1.0)) * 100.0 <= GOAL_PCT,
        "local_wall_s": med("local_wall_s"),
        "remote_wall_s": med("remote_wall_s"),
        "upload_bytes": per_round[0]["remote"]["upload_bytes"],
        **{k: med(k, "remote") for k in ("pack_ms", "upload_ms", "validate_ms", "queue_wait_ms")},
        "per_round": per_round,
    }


def markdown(section: dict[str, Any]) -> str:
    """The section as markdown for docs/BENCHMARKS.md."""
    s = section
    verdict = "met" if s["within_goal"] else "NOT met"
    lines = [
        "## Remote benchmarking (`robopt-bench serve` on loopback)",
        "",
        f"zoo:{s['model']} compiled for `host` ({s['backend']}, {s['threads']} thread), "
        f"benchmarked {s['rounds']} times here (`run_benchmark`) and {s['rounds']} times "
        "through a `robopt-bench serve` subprocess on 127.0.0.1 (`robopt-bench BUNDLE "
        f"--device URL`), interleaved, {s['runs']} timed runs after {s['warmup']} warm-up each; "
        f"figures are medians over rounds ({s['machine']}).",
        "",
        "| | local | remote (loopback) |",
        "|---|---|---|",
        f"| p50 latency (ms) | {s['local_p50_ms']:.4f} | {s['remote_p50_ms']:.4f} |",
        f"| p99 latency (ms) | {s['local_p99_ms']:.4f} | {s['remote_p99_ms']:.4f} |",
        f"| whole call (s, incl. engine load) | {s['local_wall_s']:.2f} | "
        f"{s['remote_wall_s']:.2f} |",
        "",
        f"Remote / local p50: **{s['ratio']:.3f}** (median of the per-round ratios "
        f"{s['paired_ratio']:.3f}; goal: within {s['goal_pct']:g} %: {verdict}). What the "
        "remote path adds around the benchmark: pack "
        f"{s['pack_ms']:.0f} ms (tar.gz, {s['upload_bytes'] / 2**20:.1f} MiB), upload and "
        f"unpack {s['upload_ms']:.0f} ms, validation (sha256 of every file, paths) "
        f"{s['validate_ms']:.1f} ms, queue wait {s['queue_wait_ms']:.1f} ms.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="state-mlp")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="Also write the section's figures here.")
    args = ap.parse_args()

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="robopt-bench-remote-") as work:
        section = run_remote_section(
            Path(work), log, model=args.model, rounds=args.rounds, runs=args.runs
        )
    if args.json:
        args.json.write_text(json.dumps(section, indent=2))
    print(markdown(section))


if __name__ == "__main__":
    main()
