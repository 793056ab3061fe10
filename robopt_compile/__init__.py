"""robopt: an edge-deployment compiler toolchain for robot policies.

This package is imported on the robot by ``robopt-bench``: keep it free of heavy imports
(torch, onnx, openvino). Everything heavy is imported inside the function that needs it.
"""

__version__ = "0.1.0"
