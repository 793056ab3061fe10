"""``make bench`` section: kill planner sessions at random moments, resume each.

Each round starts a planner search (``robopt-compile zoo:pendulum-swingup-mlp --max-latency-ms
...``) in a fresh process on one shared store, SIGKILLs it after a random delay, then checks
the store (SQLite integrity, every object's hash, no dangling reference), notes which steps had
finished, resumes the session with ``--resume`` and checks that it finishes, writes a valid
bundle, and that every step finished before the kill kept its measurement and was not built
again. A round whose process finished before the kill counts as such.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "zoo:pendulum-swingup-mlp"


def _cmd(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "robopt_compile.cli", MODEL, "--target", "host", "--threads",
        "1", "-b", "onnxruntime", "--max-latency-ms", "5", "--max-accuracy-drop", "0.05",
        "-o", str(out),
    ]  # fmt: skip


def bench_crash(
    work: Path, log: Callable[[str], None], rounds: int = 20, seed: int = 0
) -> dict[str, Any]:
    from robopt_compile.bench.manifest import load_manifest
    from robopt_compile.store import open_store
    from robopt_compile.store.records import utc_now

    rng = random.Random(seed)
    store_dir = work / "crash-store"
    env = {**os.environ, "ROBOPT_STORE": str(store_dir)}
    # One uninterrupted run first: how long a search takes, so kills land all over it.
    t0 = time.perf_counter()
    subprocess.run(_cmd(work / "crash-full"), env=env, check=True, capture_output=True)
    full_s = time.perf_counter() - t0
    log(f"[bench] crash: an uninterrupted search takes {full_s:.1f} s")
    rows = []
    for i in range(rounds):
        out = work / f"crash-{i}"
        delay = rng.uniform(0.5, full_s)
        started = utc_now()
        proc = subprocess.Popen(_cmd(out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        finished_first = proc.poll() is not None
        if not finished_first:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        row: dict[str, Any] = {"round": i, "kill_after_s": delay, "finished_first": finished_first}
        with open_store(str(store_dir), create=False) as st:
            row["integrity"] = st.integrity_check()
            row["verify_ok"] = bool(st.verify()["ok"])
            sess = [x for x in st.sessions(limit=1) if x.created >= started]
            if not sess:
                row["note"] = "killed before the session was created"
                row["ok"] = row["integrity"] == "ok" and row["verify_ok"]  # nothing to resume
                rows.append(row)
                log(f"[bench] crash {i}: killed at {delay:.1f} s, before any session")
                continue
            rec = sess[0]
            row["state_after_kill"] = rec.state
            before = {s.name for s in st.steps(rec.id) if s.state == "finished"}
            row["steps_done_before"] = len(before)
        if rec.state == "finished":
            row["resumed"] = False
            row["ok"] = row["integrity"] == "ok" and row["verify_ok"]
            rows.append(row)
            continue
        r = subprocess.run(
            [sys.executable, "-m", "robopt_compile.cli", MODEL, "--resume", rec.id, "--json"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        row["resume_exit"] = r.returncode
        with open_store(str(store_dir), create=False) as st:
            after = st.get_session(rec.id)
            names = [s.name for s in st.steps(rec.id)]
            kept = all(names.count(n) == 1 for n in before)
            meas = [x for x in st.results(rec.id) if x.kind == "planner.measurement"]
            row["state_after_resume"] = after.state
            row["finished_steps_kept"] = kept
            row["measurements"] = len(meas)
            row["integrity_after"] = st.integrity_check()
        bundle_ok = False
        if r.returncode == 0:
            try:
                load_manifest(json.loads(r.stdout)["bundle"], verify=True)
                bundle_ok = True
            except Exception:
                bundle_ok = False
        row["bundle_ok"] = bundle_ok
        row["resumed"] = True
        row["ok"] = (
            row["integrity"] == "ok" and row["verify_ok"] and r.returncode == 0
            and after.state == "finished" and kept and bundle_ok
            and row["integrity_after"] == "ok"
        )  # fmt: skip
        log(f"[bench] crash {i}: killed at {delay:.1f} s after {len(before)} step(s); resumed: "
            f"{'ok' if row['ok'] else 'FAILED'}")  # fmt: skip
        rows.append(row)
    return {"rounds": rounds, "full_run_s": full_s, "rows": rows,
            "all_ok": all(r.get("ok", True) for r in rows)}  # fmt: skip


def report_lines(c: dict[str, Any]) -> list[str]:
    rows = c["rows"]
    resumed = [r for r in rows if r.get("resumed")]
    # A round killed before its session existed passes on the store checks alone.
    ok = [r for r in rows if r.get("ok") or (
        "note" in r and r["integrity"] == "ok" and r["verify_ok"])]  # fmt: skip
    early = [r for r in rows if "note" in r]
    lines = [
        "## Crash test: kill -9 a planner session, resume it",
        "",
        f"{c['rounds']} rounds on one shared store: a planner search on `{MODEL}` (an "
        f"uninterrupted one took {c['full_run_s']:.1f} s) is SIGKILLed after a random delay, "
        "the store is checked (SQLite integrity, every object's sha256, no dangling reference), "
        "then the session is resumed with `--resume` and must finish, write a bundle that "
        "passes `robopt-bench --verify`'s hash check, and keep every step finished before the "
        "kill (not built again).",
        "",
        f"- rounds: {len(rows)}; killed mid-search and resumed: {len(resumed)}; finished before "
        f"the kill: {sum(1 for r in rows if r.get('finished_first'))}; killed before a session "
        f"existed: {len(early)}",
        f"- rounds that passed every check: **{len(ok)} / {len(rows)}**",
        f"- store integrity after every kill: "
        f"{'ok' if all(r['integrity'] == 'ok' for r in rows) else 'NOT ok'}; object and "
        f"reference check: {'ok' if all(r['verify_ok'] for r in rows) else 'NOT ok'}",
        "",
        "| round | killed at s | steps done | resumed | finished | steps kept | bundle ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['kill_after_s']:.1f} | {r.get('steps_done_before', '-')} | "
            f"{'yes' if r.get('resumed') else 'no'} | {r.get('state_after_resume', '-')} | "
            f"{r.get('finished_steps_kept', '-')} | {r.get('bundle_ok', '-')} |"
        )
    lines.append("")
    return lines
