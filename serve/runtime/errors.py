"""The one error family of the server: :class:`ServeError`, an error a client caused (or may
retry), with the HTTP status, stable code, message and headers to answer it with.

It lives with the runtime, which raises it itself (:class:`serve.runtime.images.ImageError` for an
upload that is not an acceptable image), and has no web framework in it; the HTTP layer
(:mod:`serve.errors`) adds the subclasses of its own and turns every one into the ``/v1`` or
``/v2`` JSON error answer.
"""

from __future__ import annotations


class ServeError(Exception):
    """An error answered with ``status``, ``code``, ``message`` and ``headers``.

    Subclasses give ``status``, ``code`` and ``headers`` as class attributes; an instance may
    override each (``ServeError("...", status=400, code="invalid_parameter")``).
    """

    status: int = 400
    code: str = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if headers is not None:
            self.headers = headers
