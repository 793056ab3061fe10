"""docs/DEPLOY.md's plain control loop, run as written against a real bundle."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[2] / "docs" / "DEPLOY.md"


def _block(heading: str) -> str:
    text = DOC.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_control_loop_runs(ort_bundle: Path) -> None:
    scope: dict = {}
    exec(compile(_block("## A plain control loop"), str(DOC), "exec"), scope)
    with np.load(ort_bundle / "reference" / "inputs.npz") as z:
        obs = {k: z[k] for k in z.files}
    sent: list[np.ndarray] = []
    missed = scope["control_loop"](ort_bundle, lambda: obs, sent.append, hz=200.0, steps=40)
    assert len(sent) == 40 and sent[0].ndim == 1 and 0 <= missed <= 40
    with np.load(ort_bundle / "reference" / "outputs.npz") as z:
        np.testing.assert_allclose(sent[-1], z["action"][0], rtol=1e-4, atol=1e-5)


def test_the_ros_node_example_is_valid_python() -> None:
    """Not run (no ROS 2 here): it must at least parse and call only the runtime API."""
    src = _block("## A ROS 2 node (rclpy)")
    compile(src, "ros_node", "exec")
    assert "load_bundle(" in src and "self.policy.close()" in src
