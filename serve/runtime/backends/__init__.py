"""Inference backends: one interface (:class:`serve.runtime.backends.base.Backend`), one module
each."""
