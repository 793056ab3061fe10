"""On-robot benchmark harness (``robopt-bench``): fidelity, latency, jitter, memory of a bundle.

Runs where only numpy, click and the bundle's runtime are installed, so nothing here imports
torch, onnx or a runtime at import time; see ``harness.run_benchmark`` and ``cli.main``.
"""
