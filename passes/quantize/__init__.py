"""Quantization passes: one technique per file, each a transform pass over the onnx_ir model."""
