"""Export: ONNX (decode and optional NMS in the graph, FP16), INT8 Q/DQ ONNX, TensorRT engines.

Imports point one way: ``detector.cli`` -> ``export`` -> ``serve`` -> the torch-free core of
``detector``. Every file written here is verified through the serving runtime (``serve``), so
what was checked is exactly what serves.
"""
