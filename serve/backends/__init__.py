"""Inference backends: one interface (:class:`serve.backends.base.Backend`), one module each."""
