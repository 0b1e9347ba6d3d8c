"""The HTTP server: ``create_app(settings)`` composes the FastAPI app from its parts.

- :mod:`serve.state`: what the server holds, and the lifespan that loads and warms up the models
  (never at import; ``/readyz`` answers 200 only after that);
- :mod:`serve.registry`: the models and versions served, each with its own batcher; loads, swaps,
  unloads and polling of a model repository;
- :mod:`serve.deps`: API keys, readiness, the model version a request runs on, the request's
  prediction parameters;
- :mod:`serve.pipeline`: decode and letterbox (the image pool) -> dynamic batcher -> results;
- :mod:`serve.routes`: ``/v1``, the KServe v2 protocol and Triton's repository extension under
  ``/v2``, the operational routes;
- :mod:`serve.errors`: one error family, answered as JSON in each API's format;
- :mod:`serve.http_middleware`: request ids and access logs, API and admin keys and admission
  control (the version a request runs on, a place in its queue) from the headers
  (:mod:`serve.http_paths` maps a path to its model and version), the body's size limit and
  deadline.

The docs pages (``/docs``, ``/redoc``, ``/openapi.json``) are off unless ``settings.docs`` turns
them on (``open``, or ``keyed``: behind an API key): their pages load Swagger UI and ReDoc from
a CDN.

Serving ONNX or TensorRT models imports no torch.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serve.errors import RETRY_AFTER_S, install_error_handlers
from serve.http_middleware import (
    AdmissionMiddleware,
    BodyBudget,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from serve.http_paths import REPOSITORY_INDEX
from serve.routes import ops
from serve.routes import v1 as v1_routes
from serve.routes.v2.router import v2_router
from serve.runtime.predictor import Predictor
from serve.settings import ServeSettings, load_settings
from serve.state import ServerState, lifespan
from serve.versions import StartupLoad
from serve.web import router as web_router


def create_app(
    settings: ServeSettings, predictor: Predictor | StartupLoad | None = None
) -> FastAPI:
    """The server for ``settings.model`` or the repository ``settings.repository``; the models
    are loaded when the app's lifespan starts (``uvicorn``, or ``with TestClient(app)``), and
    warmed up there before ``/readyz`` says ready. ``predictor``: what the CLI loaded first, so
    that a bad file is a one-line error rather than a failed startup: the ``--model`` file (the
    lifespan still warms it up), or the repository's start-up load
    (:func:`serve.versions.startup_load`, checked already)."""
    docs = settings.docs != "off"  # the pages load Swagger UI / ReDoc from a CDN
    app = FastAPI(
        title="detector",
        summary="Object detection over HTTP (YOLOX-style models: ONNX Runtime, TensorRT, PyTorch)",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    state = ServerState(settings, preloaded=predictor)
    app.state.server = state
    app.include_router(v1_routes.router)
    app.include_router(ops.router)
    app.include_router(v2_router())
    app.include_router(web_router)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])  # fmt: skip
    # the last added is the outermost: request ids -> keys and admission (from the headers) ->
    # body limit and deadline -> routes
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s,
                       budget=BodyBudget(settings.max_bodies_bytes),
                       retry_after_s=RETRY_AFTER_S)  # fmt: skip
    app.add_middleware(AdmissionMiddleware, admit=state.admit, refuse=state.refuse,
                       keys=settings.api_keys, keyed_paths=keyed_paths(settings),
                       admin_keys=settings.admin_keys,
                       admin_readable=frozenset((REPOSITORY_INDEX,)),
                       retry_after_s=RETRY_AFTER_S)  # fmt: skip
    paths = frozenset(app.openapi()["paths"])  # the routes; FastAPI nests included ones
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, paths=paths)  # outermost
    return app


DOCS_PATHS = frozenset(("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"))


def keyed_paths(settings: ServeSettings) -> frozenset[str]:
    """The paths besides inference that ask for an API key (the inference routes always do when
    keys are set): the repository index, ``/metrics`` with ``metrics_key_required``, the docs
    with ``docs=keyed``."""
    paths: set[str] = {REPOSITORY_INDEX}
    if settings.metrics_key_required:
        paths.add("/metrics")
    if settings.docs == "keyed":
        paths |= DOCS_PATHS
    return frozenset(paths)


def app_from_env() -> FastAPI:
    """The app configured by ``DETECTOR_*`` variables alone, for process managers that import
    an app factory: ``DETECTOR_MODEL=m.onnx uvicorn --factory serve.app:app_from_env`` (or
    ``DETECTOR_REPOSITORY=DIR``)."""
    return create_app(load_settings())
