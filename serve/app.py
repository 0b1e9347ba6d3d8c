"""The HTTP server: ``create_app(settings)`` composes the FastAPI app from its parts.

- :mod:`serve.state`: what the server holds, and the lifespan that loads and warms up the model
  (never at import; ``/readyz`` answers 200 only after that);
- :mod:`serve.deps`: API keys, readiness, the request's prediction parameters;
- :mod:`serve.pipeline`: decode and letterbox (the image pool) -> dynamic batcher -> results;
- :mod:`serve.routes`: ``/v1``, the KServe v2 protocol under ``/v2``, the operational routes;
- :mod:`serve.errors`: one error family, answered as JSON in each API's format;
- :mod:`serve.http_middleware`: request ids and access logs, API keys and admission control
  from the headers, the body's size limit and deadline.

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
from serve.routes import ops
from serve.routes import v1 as v1_routes
from serve.routes.v2.router import infer_paths, v2_router
from serve.runtime.predictor import Predictor
from serve.settings import ServeSettings, load_settings
from serve.state import ServerState, lifespan
from serve.web import router as web_router


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    """The server for ``settings.model``; the model is loaded when the app's lifespan starts
    (``uvicorn``, or ``with TestClient(app)``), and warmed up there before ``/readyz`` says
    ready. ``predictor``: an already loaded model (the CLI loads it first, so that a bad file is
    a one-line error rather than a failed startup); the lifespan still warms it up."""
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
    app.include_router(v2_router(settings.name))
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
    inference = v1_routes.INFERENCE_PATHS + infer_paths(settings.name)
    app.add_middleware(AdmissionMiddleware, paths=inference, admit=state.admit,
                       refuse=state.refuse, keys=settings.api_keys,
                       keyed_paths=keyed_paths(settings), retry_after_s=RETRY_AFTER_S)  # fmt: skip
    paths = frozenset(app.openapi()["paths"])  # the routes; FastAPI nests included ones
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, paths=paths)  # outermost
    return app


DOCS_PATHS = frozenset(("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"))


def keyed_paths(settings: ServeSettings) -> frozenset[str]:
    """The operational paths that ask for an API key too (the inference routes always do when
    keys are set): ``/metrics`` with ``metrics_key_required``, the docs with ``docs=keyed``."""
    paths: set[str] = set()
    if settings.metrics_key_required:
        paths.add("/metrics")
    if settings.docs == "keyed":
        paths |= DOCS_PATHS
    return frozenset(paths)


def app_from_env() -> FastAPI:
    """The app configured by ``DETECTOR_*`` variables alone, for process managers that import
    an app factory: ``DETECTOR_MODEL=m.onnx uvicorn --factory serve.app:app_from_env``."""
    return create_app(load_settings())
