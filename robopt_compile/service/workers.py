"""The worker pool: ``--workers N`` slots, one job each, every job in its own process.

Each slot is a thread of the server that claims the next queued job (``queue.claim``), starts
``python -m robopt_compile.service.runner STORE JOB`` for it, and watches it: a cancel request
or the job's timeout sends SIGINT (the compile stops and its session says cancelled), and
SIGKILL follows if the process has not ended ``KILL_GRACE_S`` seconds later. A process that
ends without ending its job (killed, out of memory) fails the job with its exit code.

Before the slots start, :func:`robopt_compile.service.queue.recover` queues again the jobs a
dead server left running, so they resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

KILL_GRACE_S = 20.0
POLL_S = 0.2


class WorkerPool:
    """``workers`` slots over the store opened by ``store_factory`` (one connection each)."""

    def __init__(self, store_factory: Callable[[], Any], store_spec: str, workers: int = 1,
                 on_event: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self._factory = store_factory
        self._spec = store_spec
        self._stop = threading.Event()
        self._log = on_event or (lambda _m: None)
        self.threads = [
            threading.Thread(target=self._slot, args=(i,), daemon=True, name=f"robopt-worker-{i}")
            for i in range(workers)
        ]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        from robopt_compile.service import queue
        from robopt_compile.service.notify import notify

        store = self._factory()
        try:
            for jid, state in queue.recover(store):
                self._log(f"job {jid[:12]}: its process died; {state}")
                if state != "queued":
                    notify(store, f"job_{state}", job_id=jid, error="its process died")
        finally:
            store.close()
        for t in self.threads:
            t.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop claiming and kill the jobs' processes: their jobs stay ``running`` in the store,
        and the next start queues them again to resume."""
        self._stop.set()
        for p in list(self.procs.values()):
            if p.poll() is None:
                p.kill()  # the job stays running in the store: the next start resumes it
        for t in self.threads:
            t.join(timeout_s)

    def _slot(self, index: int) -> None:
        from robopt_compile.service import queue

        store = self._factory()
        try:
            while not self._stop.is_set():
                job = queue.claim(store, os.getpid())
                if job is None:
                    self._stop.wait(POLL_S)
                    continue
                try:
                    self._run(store, job, queue)
                except Exception as exc:
                    queue.end(store, job.id, "failed", error=f"the worker could not run it: {exc}")
        finally:
            store.close()

    def _run(self, store: Any, job: Any, queue: Any) -> None:
        from robopt_compile.service.runner import job_dir

        log = job_dir(store, job.id) / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as sink:  # the job's warnings and errors; GET .../jobs/ID/log
            proc = subprocess.Popen(
                [sys.executable, "-m", "robopt_compile.service.runner", self._spec, job.id],
                stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs[job.id] = proc
        queue.set_worker(store, job.id, proc.pid)
        self._log(f"job {job.id[:12]} ({job.kind}) started in process {proc.pid}")
        t0, sent = time.monotonic(), 0.0
        while proc.poll() is None:
            if self._stop.wait(POLL_S):
                return  # the server is stopping; stop() kills the process
            cur = queue.get_job(store, job.id)
            late = job.timeout_s is not None and time.monotonic() - t0 > job.timeout_s
            if (cur.cancel or late) and not sent:
                if late:
                    store.write(lambda c: c.execute(
                        "UPDATE jobs SET error=? WHERE id=?",
                        (f"timed out after {job.timeout_s:g} s", job.id)))  # fmt: skip
                proc.send_signal(signal.SIGINT)
                sent = time.monotonic()
            elif sent and time.monotonic() - sent > KILL_GRACE_S:
                proc.kill()
        self.procs.pop(job.id, None)
        cur = queue.get_job(store, job.id)
        if cur.state == "running":  # it died without ending its job (SIGINT during start-up,
            # SIGKILL after the grace period, out of memory)
            from robopt_compile.service.notify import notify
            from robopt_compile.service.runner import close_session

            lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
            last = lines[-1] if lines else ""
            if cur.error and "timed out" in cur.error:
                state, why = "failed", cur.error
            elif cur.cancel:
                state, why = "cancelled", "cancelled"
            else:
                state = "failed"
                why = f"the job's process exited with code {proc.returncode}" + (
                    f": {last[:300]}" if last else "")  # fmt: skip
            if state != "failed" or "timed out" in why:
                close_session(store, cur.session_id, why)
            if queue.end(store, job.id, state, error=why):
                notify(store, f"job_{state}", job_id=job.id, session_id=cur.session_id, error=why)
        self._log(f"job {job.id[:12]} ended: {queue.get_job(store, job.id).state}")
