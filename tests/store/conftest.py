"""Fixtures of the store tests: a fresh store in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from robopt_compile.store import Store, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = open_store(str(tmp_path / "store"))
    yield st
    st.close()
