"""``detector serve``: the HTTP server (FastAPI under uvicorn) for a model file of any format
(``--model FILE``), or for a model repository of several models and versions
(``--repository DIR``, the layout of ``detector export triton`` and NVIDIA Triton) with
Triton's model control modes (``--model-control-mode none|poll|explicit``).

Flags override ``DETECTOR_*`` environment variables (see ``serve.settings``). Access logs are
JSON lines on stdout. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in
flight finish (up to ``--graceful-timeout`` seconds), then exits.

Before it starts, the server refuses to listen on a network address without API keys (unless
``--allow-insecure``). uvicorn is told the connection bound (``--max-connections``), the TLS
files, and gets a protocol that closes a connection whose request head does not arrive within
``--header-timeout-s`` (uvicorn has no such deadline of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

# flag dest -> ServeSettings field, for the flags that map one to one
SETTINGS_FLAGS = (
    "model", "backend", "device", "threads", "lanes", "max_batch", "max_delay_ms", "queue_size",
    "timeout_s", "max_body_bytes", "max_bodies_bytes", "max_pixels", "max_images",
    "decode_workers", "host", "port", "name", "allow_engine_host_code",
    "repository", "model_control_mode", "repository_poll_secs", "default_model",
)  # fmt: skip
# the flags of the server's protection: limits on clients, health, exposure, TLS
PROTECTION_FLAGS = (
    "body_timeout_s", "header_timeout_s", "max_connections", "unhealthy_after", "probe_interval_s",
    "docs", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "metrics_key_required",
    "allow_insecure",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (/v1/detect, /metrics, ...)",
        description="Serve a model file (.onnx, .engine, .pt), or a model repository of several "
        "models and versions, over HTTP with dynamic batching. Every flag can also be set as an "
        "environment variable DETECTOR_<NAME> (e.g. DETECTOR_MAX_BATCH=16, "
        "DETECTOR_API_KEYS=key1,key2); flags win.",
    )
    parser.add_argument("--model", help="model file (or DETECTOR_MODEL)")
    parser.add_argument("--repository", help="model repository folder, instead of --model: "
                        "DIR/NAME/VERSION/model.onnx|.plan|.engine|.pt, or what 'detector "
                        "export triton' writes (or DETECTOR_REPOSITORY)")  # fmt: skip
    parser.add_argument("--model-control-mode", choices=("none", "poll", "explicit"),
                        help="none (default): load every model at start; poll: re-read the "
                        "folder every --repository-poll-secs; explicit: load/unload calls "
                        "(needs --admin-key)")  # fmt: skip
    parser.add_argument(
        "--repository-poll-secs",
        type=float,
        help="seconds between reads of the repository in poll mode (default 5)",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        dest="load_model",
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable; '*': all)",
    )
    parser.add_argument("--default-model", help="the repository model /v1/detect runs "
                        "(default: the only one)")  # fmt: skip
    parser.add_argument("--admin-key", action="append", dest="admin_keys", metavar="KEY",
                        help="key of the repository's load/unload calls, separate from the API "
                        "keys (repeatable; prefer DETECTOR_ADMIN_KEYS); without one they are "
                        "off")  # fmt: skip
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt", "torch"),
                        help="default: from the model file's suffix")  # fmt: skip
    parser.add_argument("--device", type=int, help="GPU index (TensorRT, torch)")
    parser.add_argument("--providers", help="ONNX Runtime providers, comma-separated")
    parser.add_argument("--threads", type=int, help="ONNX Runtime/torch threads (default: cores)")
    parser.add_argument("--lanes", type=int, help="batches run at once, each on its own "
                        "thread (>1: ONNX Runtime only; default 2 on the CPU, else 1)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, help="largest dynamic batch (default 8)")
    parser.add_argument("--max-delay-ms", type=float, help="batching wait (default 0)")
    parser.add_argument("--queue-size", type=int, help="waiting requests before 503 (default 32)")
    parser.add_argument("--timeout-s", type=float, help="request deadline before 504 (default 10)")
    parser.add_argument("--max-body-bytes", type=int,
                        help="largest body, also once decompressed (default 8 MiB)")  # fmt: skip
    parser.add_argument("--max-bodies-bytes", type=int, help="request bodies held at once, all "
                        "requests together, before 503 (default 256 MiB)")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, help="largest image in pixels (default 40M)")
    parser.add_argument("--max-images", type=int, help="most images per batch request (32)")
    parser.add_argument("--name", help="model name in the v2 API, /v2/models/NAME (detector)")
    parser.add_argument(
        "--decode-workers", type=int, help="images decoded at once (default: 2, or 1 on one core)"
    )
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accepted API key (repeatable; prefer DETECTOR_API_KEYS, which "
                        "other users cannot read from the process list)")  # fmt: skip
    parser.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                        help="allowed CORS origin (repeatable; none by default)")  # fmt: skip
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs")
    parser.add_argument("--allow-engine-host-code", action="store_true", default=None,
                        help="let a version-compatible TensorRT engine load (it embeds host code "
                        "that runs in the server: trusted engines only)")  # fmt: skip
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        help="seconds a request's whole body "
        "may take to arrive, else 408 and the connection closed (default 30)",
    )
    parser.add_argument(
        "--header-timeout-s",
        type=float,
        help="seconds a connection may take "
        "to send a complete request head, else it is closed (default 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="open connections at most; past it new requests get 503 (default 1000)",
    )
    parser.add_argument(
        "--unhealthy-after",
        type=int,
        help="failed batches in a row before "
        "/readyz answers 503, until a probe run succeeds (default 3)",
    )
    parser.add_argument(
        "--probe-interval-s",
        type=float,
        help="seconds between probe runs while unhealthy (default 1)",
    )
    parser.add_argument(
        "--metrics-key-required",
        action="store_true",
        default=None,
        help="/metrics asks for an API key too",
    )
    parser.add_argument(
        "--docs",
        choices=("off", "open", "keyed"),
        help="the API docs pages "
        "/docs, /redoc, /openapi.json: off (default), open, or keyed (an API "
        "key required); the pages load their scripts from a CDN",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help="listen on a non-loopback --host without API keys (refused "
        "otherwise; or DETECTOR_ALLOW_INSECURE=true): a trusted, isolated "
        "network only",
    )
    parser.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve HTTPS")
    parser.add_argument("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile")
    parser.add_argument(
        "--ssl-ca-certs",
        help="CA bundle (PEM): require client certificates signed by it (mutual TLS)",
    )
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get after SIGTERM")  # fmt: skip
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``ServeSettings`` from the flags given, the environment for the rest."""
    from serve.settings import load_settings

    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in SETTINGS_FLAGS + PROTECTION_FLAGS
        if getattr(args, name) is not None
    }
    for name in ("providers", "api_keys", "cors_origins", "admin_keys", "load_model"):
        value = getattr(args, name)
        if value:
            given[name] = value if isinstance(value, list) else value.split(",")
    if args.no_warmup:
        given["warmup"] = False
    return load_settings(**given)


def access_log_to_stdout() -> None:
    """Access lines (already JSON) go to stdout as they are, one per line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("serve.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False


class _HeadDeadline:
    """Mixed into uvicorn's HTTP protocol class: a connection must send a complete request head
    within ``head_timeout_s`` of opening, and of the end of its previous answer (including the
    rest of a body the server answered without reading), else it is closed. uvicorn's keep-alive
    timeout alone is reset by every byte, so a client sending a byte now and then held a
    connection forever."""

    head_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not cycle:  # type: ignore[attr-defined]  # a request head arrived
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        super().on_response_complete()  # type: ignore[misc]
        transport = self.transport  # type: ignore[attr-defined]
        if self.cycle is cycle and not transport.is_closing():  # type: ignore[attr-defined]
            self._arm_head_timer()  # no pipelined request waiting: wait for the next head

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if not transport.is_closing():
            transport.close()


def head_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11: what ``http="auto"`` picks)
    with a request-head deadline of ``seconds`` (:class:`_HeadDeadline`)."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"HeadDeadline{base.__name__}", (_HeadDeadline, base), {"head_timeout_s": seconds})


def uvicorn_config(app: Any, settings: Any, graceful_timeout: float = 30.0) -> Any:
    """The ``uvicorn.Config`` of ``detector serve``: one worker, our access log, the connection
    bound (``max_connections``), the request-head deadline, and TLS when certificates are
    given (client certificates required with ``ssl_ca_certs``)."""
    import uvicorn

    tls: dict[str, Any] = {}
    if settings.ssl_certfile is not None:
        tls = {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)}
        if settings.ssl_ca_certs is not None:
            tls |= {"ssl_ca_certs": str(settings.ssl_ca_certs), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # one process owns the model and the cores; scale out with replicas
        log_config=None,  # the CLI's logging set-up
        access_log=False,  # ours (JSON, with request ids) replaces uvicorn's
        server_header=False,
        timeout_graceful_shutdown=max(int(graceful_timeout), 1),
        limit_concurrency=settings.max_connections,
        http=head_deadline_protocol(settings.header_timeout_s),
        **tls,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from serve.app import create_app
    from serve.runtime.predictor import backend_for
    from serve.settings import check_exposure
    from serve.state import load_predictor
    from serve.versions import startup_load

    settings = settings_from_args(args)
    check_exposure(settings)  # a network address without keys is refused before anything loads
    loaded: Any
    if settings.model is not None:
        if not Path(settings.model).is_file():
            raise FileNotFoundError(f"{settings.model}: no such model file")
        if settings.backend is None:
            backend_for(settings.model)  # an unknown suffix is a clear error before starting
        loaded = load_predictor(settings)  # a bad file is an "error: ..." line, not a traceback
    else:
        loaded = startup_load(settings)  # loaded and checked; in mode none a bad one is an error
    access_log_to_stdout()
    app = create_app(settings, loaded)
    if not settings.loopback_only and settings.ssl_certfile is None:
        logging.getLogger(__name__).warning(
            "serving %s over plain HTTP: API keys cross the network in clear text; give "
            "--ssl-certfile/--ssl-keyfile or terminate TLS in front of the server", settings.host
        )  # fmt: skip
    server = uvicorn.Server(uvicorn_config(app, settings, args.graceful_timeout))
    server.run()
    return 0 if server.started else 1
