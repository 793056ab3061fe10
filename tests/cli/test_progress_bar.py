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


def test_log_lines_print_above_a_bar_that_keeps_its_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's lines ("[2] building ...") interleave with its bar over the builds: the
    bar is redrawn below each line and keeps counting (one bar, not one per build)."""
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    log = StageLog(enabled=True)
    for k in range(1, 4):
        log(f"plan {k}/3: onnxruntime int8", "tick", (k - 1) / 3)
        log(f"[{k}] building onnxruntime int8 ...", "line", 0.0)
    bar = log._bar
    log("[3] done", "line", 0.0)
    assert log._bar is bar and bar is not None  # the same bar all along
    text = err.getvalue()
    assert text.count("building") == 3 and "\x1b[K  [3] done" in text
