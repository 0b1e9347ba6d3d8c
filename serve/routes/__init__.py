"""The HTTP routes: ``/v1`` (:mod:`serve.routes.v1`), the KServe v2 protocol
(:mod:`serve.routes.v2`), and the operational ones (:mod:`serve.routes.ops`)."""
