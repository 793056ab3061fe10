"""A queue per board kind and a lease per robot, kept in the store (docs/REMOTE.md).

Whoever wants a robot of a board joins that board's queue (a ``device_waiters`` row; the
row's id is its place) and polls: in one write transaction it takes a free robot when the
waiters ahead of it, who hold none, are fewer than the free robots. A taken robot is a
``device_leases`` row, so no two benchmarks share a robot's timings. Nothing has to release
a lease for it to end: a holder on this host that died (kill -9, a crash) is seen dead by its
pid and start time, a holder on another host by a heartbeat older than ``STALE_S``; either
way its rows are deleted by the next process that polls. A waiter keeps its place while it
runs, so a job moved off a robot that dropped is the next to be served.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.store.liveness import pid_alive, proc_start
from robopt_compile.store.records import utc_now

POLL_S = 0.25
HEARTBEAT_S = 5.0
STALE_S = 60.0  # another host's lease or waiter without a heartbeat this long has ended


class NoFreeRobotError(BackendUnavailableError):
    """Every robot this job may still use has failed it, or none came free in time."""


def _me() -> tuple[int, str | None, str]:
    pid = os.getpid()
    return pid, proc_start(pid), socket.gethostname()


def _reap(c: Any, now: float) -> None:
    """Delete the waiters and leases whose holder has ended."""
    host = socket.gethostname()
    for table in ("device_waiters", "device_leases"):
        key = "id" if table == "device_waiters" else "device_id"
        for r in c.execute(f"SELECT {key}, pid, proc_start, host, heartbeat FROM {table}"):
            mine = r["host"] == host
            if (mine and not pid_alive(r["pid"], r["proc_start"])) or (
                not mine and r["heartbeat"] < now - STALE_S
            ):
                c.execute(f"DELETE FROM {table} WHERE {key}=?", (r[key],))
    c.execute("DELETE FROM device_leases WHERE waiter_id NOT IN (SELECT id FROM device_waiters)")


class BoardQueue:
    """This process's place in the queue for a robot of ``board`` (a context manager).

    ``only``: the one device this job may run on (``--device NAME``) instead of any.
    """

    def __init__(self, store: Any, board: str, label: str, only: str | None = None) -> None:
        self.store, self.board, self.label, self.only = store, board, label, only
        self.id: int | None = None

    def __enter__(self) -> BoardQueue:
        pid, start, host = _me()

        def join(c: Any) -> int:
            cur = c.execute(
                "INSERT INTO device_waiters(board, pid, proc_start, host, label, created, "
                "heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.board, pid, start, host, self.label, utc_now(), time.time()),
            )
            return int(cur.lastrowid)

        self.id = self.store.write(join)
        return self

    def __exit__(self, *exc: object) -> None:
        wid = self.id

        def leave(c: Any) -> None:
            c.execute("DELETE FROM device_leases WHERE waiter_id=?", (wid,))
            c.execute("DELETE FROM device_waiters WHERE id=?", (wid,))

        self.store.write(leave)

    def _try_take(self, exclude: set[str]) -> tuple[dict[str, Any] | None, int, int]:
        """(the device taken or None, waiters ahead, robots this job may still use)."""
        pid, start, host = _me()
        now = time.time()

        def take(c: Any) -> tuple[dict[str, Any] | None, int, int]:
            _reap(c, now)
            c.execute("UPDATE device_waiters SET heartbeat=? WHERE id=?", (now, self.id))
            sql = "SELECT * FROM devices WHERE board=? ORDER BY created, name"
            devs = [dict(r) for r in c.execute(sql, (self.board,))]
            usable = [d for d in devs if d["id"] not in exclude
                      and (self.only is None or d["id"] == self.only)]  # fmt: skip
            leased = {r[0] for r in c.execute("SELECT device_id FROM device_leases")}

            # A robot that dropped a job lately is skipped while others may serve; one asked
            # for by name (``only``) is tried at once: its own failure is then the answer.
            def skipped(d: dict[str, Any]) -> bool:
                return self.only is None and bool(d["down_until"] and d["down_until"] > now)

            free = [d for d in usable if d["id"] not in leased and not skipped(d)]
            ahead = c.execute(
                "SELECT COUNT(*) FROM device_waiters w WHERE w.board=? AND w.id<? AND NOT "
                "EXISTS (SELECT 1 FROM device_leases l WHERE l.waiter_id=w.id)",
                (self.board, self.id),
            ).fetchone()[0]
            if ahead >= len(free):
                return None, ahead, len(usable)
            d = free[min(ahead, len(free) - 1)]
            c.execute(
                "INSERT INTO device_leases(device_id, waiter_id, pid, proc_start, host, label, "
                "acquired, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d["id"], self.id, pid, start, host, self.label, utc_now(), now),
            )
            return d, ahead, len(usable)

        return self.store.write(take)

    def acquire(
        self,
        exclude: set[str],
        timeout_s: float,
        on_wait: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for a free robot (not one in ``exclude``) and lease it; the device with its
        token.

        Raises:
            NoFreeRobotError: no robot left to try, or none free within ``timeout_s``.
        """
        deadline, told = time.monotonic() + timeout_s, -1
        while True:
            dev, ahead, usable = self._try_take(exclude)
            if dev is not None:
                return dev
            if usable == 0:
                raise NoFreeRobotError(
                    f"no {self.board} robot is left to run this job"
                    + (" (every one tried has failed it)" if exclude else "")
                    + ": `robopt-bench devices ls` shows their health."
                )
            if time.monotonic() > deadline:
                raise NoFreeRobotError(
                    f"no {self.board} robot came free within {timeout_s:g} s "
                    f"({ahead} job(s) ahead in the queue): rerun later or raise --queue-timeout."
                )
            if on_wait is not None and ahead != told:
                on_wait(ahead)
                told = ahead
            time.sleep(POLL_S)

    def release(self, device_id: str) -> None:
        sql = "DELETE FROM device_leases WHERE device_id=? AND waiter_id=?"
        self.store.write(lambda c: c.execute(sql, (device_id, self.id)))

    def _beat(self, c: Any) -> None:
        now = time.time()
        c.execute("UPDATE device_waiters SET heartbeat=? WHERE id=?", (now, self.id))
        c.execute("UPDATE device_leases SET heartbeat=? WHERE waiter_id=?", (now, self.id))

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Keep this waiter's and its lease's heartbeat fresh while the body runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                self.store.write(self._beat)

        t = threading.Thread(target=beat, daemon=True, name="robopt-farm-heartbeat")
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def leases(store: Any) -> dict[str, dict[str, Any]]:
    """Live leases by device id (pid, host, label, acquired), after reaping dead holders."""
    store.write(lambda c: _reap(c, time.time()))
    return {r["device_id"]: dict(r) for r in store.query("SELECT * FROM device_leases")}


def waiting(store: Any) -> dict[str, int]:
    """How many jobs wait (hold no robot) per board."""
    rows = store.query(
        "SELECT board, COUNT(*) AS n FROM device_waiters w WHERE NOT EXISTS "
        "(SELECT 1 FROM device_leases l WHERE l.waiter_id=w.id) GROUP BY board"
    )
    return {r["board"]: int(r["n"]) for r in rows}


def canonical_board(board: str, option: str = "--board ") -> str:
    """The profile name of ``board`` (an alias resolved); a one-line ``InputError`` for an
    unknown one."""
    from robopt_compile.hwprofiles import load_profile

    try:
        return load_profile(board).name
    except Exception as exc:  # the profile loader's own error class and message
        raise InputError(f"{option}{board}: {' '.join(str(exc).split())}") from None
