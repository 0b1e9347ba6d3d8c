"""The torch-free core: box formats, pre-processing, drawing, atomic files, typed YAML configs
and the one home of every prediction-time default.

Everything below this package imports numpy, OpenCV and PyYAML only, so the serving runtime (and
an edge install without PyTorch) can use it; nothing here imports from the rest of ``detector``.
"""
