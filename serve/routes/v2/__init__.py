"""The KServe v2 inference protocol (Open Inference Protocol, what NVIDIA Triton speaks) beside
``/v1``: the routes (:mod:`~serve.routes.v2.router`), the wire format
(:mod:`~serve.routes.v2.protocol`), the tensors of the contract (:mod:`~serve.routes.v2.io`,
shared with the Triton model repository of ``detector export triton``) and the JSON shapes for
the OpenAPI schema (:mod:`~serve.routes.v2.schemas`).

This package imports none of its modules itself, so the Triton export reads the contract
(:mod:`serve.routes.v2.io`, plain NumPy) without loading the server.
"""
