"""The OpenVINO compiled-blob cache stays under its size limit, least recently used first."""

from __future__ import annotations

import os
from pathlib import Path

from robopt_compile.targets.openvino import trim_cache


def test_blob_cache_is_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    sizes = {"old.blob": 600_000, "mid.blob": 300_000, "new.blob": 300_000}
    for age, (name, size) in enumerate(reversed(list(sizes.items()))):
        p = tmp_path / name
        p.write_bytes(b"\0" * size)
        t = 1_700_000_000 - 1000 * age  # new.blob is the most recent
        os.utime(p, (t, t))
    trim_cache(tmp_path, max_mb=1.0)  # 1.2 MB present: the oldest goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.blob", "new.blob"]
    trim_cache(tmp_path, max_mb=1.0)  # under the limit: nothing more
    assert len(list(tmp_path.iterdir())) == 2
    trim_cache(tmp_path / "missing", max_mb=1.0)  # never raises
