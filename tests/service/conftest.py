"""Fixtures of the platform tests: a server for the module, a webhook receiver per test."""

from __future__ import annotations

from typing import Any

import pytest

from tests.service.serving import Receiver, Server, make_token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = tmp_path_factory.mktemp("serve") / "store"
    srv = Server(store)
    from robopt_compile.store import open_store

    open_store(str(store)).close()
    srv.tokens = {r: make_token(store, r, f"test-{r}") for r in ("viewer", "operator", "admin")}
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()
