"""A real 2-CPU Ray cluster on 127.0.0.1 for the module that asks for it."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from raycluster_helpers import RayCluster

    c = RayCluster(cpus=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()
