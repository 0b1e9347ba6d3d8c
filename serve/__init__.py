"""The inference runtime: pre/post-processing and backends (ONNX Runtime, TensorRT, PyTorch).

Serving an ONNX or TensorRT model imports no torch (an edge image carries none); only the torch
backend imports it, lazily.
"""
