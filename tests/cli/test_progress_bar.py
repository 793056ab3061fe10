"""Long stages show click's progress bar with an ETA on a terminal, and nothing per tick
without one or under --json (issue 19, part 5)."""

from __future__ import annotations

import io
import re
import sys

import pytest

from robopt_compile.cli.common import StageLog


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(log: StageLog) -> None:
    log("evaluate", "start", 0.0)
    for i in range(1, 11):
        log(f"evaluate: episode {i}/10 on reach", "tick", i / 10)
    log("evaluate", "done", 1.5)


def test_a_terminal_gets_a_bar_with_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    impl = importlib.import_module("click._termui_impl")
    clock = iter(range(0, 10_000, 2))  # click updates its ETA at most once a second
    monkeypatch.setattr(impl.time, "time", lambda: float(next(clock)))
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    _run(StageLog(enabled=True))
    text = err.getvalue()
    assert "episode 10/10" in text and "100%" in text
    assert re.search(r"\d\d:\d\d:\d\d", text)  # click's ETA
    assert text.rstrip().endswith("1.50 s")


@pytest.mark.parametrize("tty, enabled", [(False, True), (True, False)])
def test_no_terminal_or_json_no_ticks(monkeypatch: pytest.MonkeyPatch, tty: bool,
                                      enabled: bool) -> None:  # fmt: skip
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _run(StageLog(enabled=enabled))
    assert "episode" not in err.getvalue()
    assert ("1.50 s" in err.getvalue()) == enabled
