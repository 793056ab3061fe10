"""Real ``robopt-bench serve`` servers on loopback for the tests of the server and its client.

Servers run in a thread of the test process (``BenchServer(...).start()``, port 0). A ``Calls``
runner stands in for the harness where a test needs the worker busy (a threading.Event, no
sleeps) or a failing job: ``make_server(hold=True)`` or ``make_server(fail=exc)``, then
``srv.runner`` is that runner (``count``, ``release``). The bundles come from
``tests/bench/conftest.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from robopt_compile.bench.remote import pack_bundle
from robopt_compile.bench.serve import BenchServer, harness_runner

TOKEN = "test-token-0123456789abcdefghijklmnop"


class Calls:
    """A runner that counts its calls and may hold the worker until released."""

    def __init__(self, hold: bool = False, fail: Exception | None = None) -> None:
        self.count = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail

    def __call__(self, bundle: Path, settings: dict[str, Any], progress: Any) -> dict[str, Any]:
        self.count += 1
        assert self.release.wait(30), "the test never released the worker"
        if self.fail is not None:
            raise self.fail
        return harness_runner(bundle, settings, progress)


@pytest.fixture
def token() -> str:
    """The token every ``make_server`` server takes."""
    return TOKEN


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def make_server(work: Path) -> Iterator[Callable[..., BenchServer]]:
    """``make_server(hold=False, fail=None, **BenchServer options)``: a started server whose
    runner is a ``Calls`` unless ``runner`` is given; closed after the test."""
    servers: list[BenchServer] = []

    def make(hold: bool = False, fail: Exception | None = None, **kw: Any) -> BenchServer:
        kw.setdefault("runner", Calls(hold=hold, fail=fail))
        s = BenchServer(TOKEN, port=0, work_dir=work, log=lambda line: None, **kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close(grace_s=5)


@pytest.fixture
def server(make_server: Callable[..., BenchServer]) -> BenchServer:
    return make_server()


@pytest.fixture(scope="module")
def packed(ort_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The session bundle as the client uploads it."""
    path = tmp_path_factory.mktemp("packed") / "b.tar.gz"
    pack_bundle(ort_bundle, path)
    return path.read_bytes()
