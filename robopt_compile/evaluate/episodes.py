"""Seeded episodes of one policy, one after another in this process (the lowest layer of
``evaluate``: ``closedloop``, ``pooled`` and the executor units in ``distributed`` run them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from robopt_compile.tasks import Episode, Policy, Task

Progress = Callable[[int], None]  # called with the number of episodes just finished


def run_episodes(
    task: Task,
    policy: Policy,
    seeds: Sequence[int],
    progress: Progress | None = None,
    record: bool = False,
) -> list[Episode]:
    """One episode of ``task`` per seed, in order (``record`` keeps feeds and actions)."""
    out = []
    for s in seeds:
        out.append(task.episode(policy, int(s), record=record))
        if progress:
            progress(1)
    return out
