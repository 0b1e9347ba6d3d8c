"""Serving: the inference runtime (:mod:`serve.runtime`: model files, backends, image decoding,
pre/post-processing, dynamic batching) and above it the HTTP layer (FastAPI: :mod:`serve.app`
composes :mod:`serve.state`, :mod:`serve.deps`, :mod:`serve.pipeline` and :mod:`serve.routes`;
the models and versions served, from one file or a model repository, are
:mod:`serve.registry`'s and :mod:`serve.versions`').

Serving an ONNX or TensorRT model imports no torch (an edge image carries none); only the torch
backend imports it, lazily.
"""
