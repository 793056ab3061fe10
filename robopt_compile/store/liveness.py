"""Whether the process that owns a running session still runs (Linux ``/proc``, else kill 0).

A session records its owner's pid, host and process start time when it starts; whoever reads
the store later uses :func:`pid_alive` to tell a live owner from a dead one (a zombie, or a
pid reused by another process, counts as dead) and records the session ``interrupted``.
"""

from __future__ import annotations

import os
from pathlib import Path


def proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, or a reused pid, counts as dead).

    ``start`` is its :func:`proc_start` when it was recorded: a different one now means the
    pid was reused.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):
        return False
    return not (start and len(fields) > 19 and fields[19] != start)
