"""The serving runtime, below the HTTP layer: model files and their metadata, backends, image
decoding, pre/post-processing, dynamic batching. Nothing here imports FastAPI, and nothing
imports torch except the torch backend (lazily)."""
