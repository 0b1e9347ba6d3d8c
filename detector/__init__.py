"""YOLOX-style object detector: models, data, training and evaluation."""
