"""``detector serve``: the HTTP server (FastAPI under uvicorn) for a model file of any format.

Flags override ``DETECTOR_*`` environment variables (see ``serve.settings``). Access logs are
JSON lines on stdout. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in
flight finish (up to ``--graceful-timeout`` seconds), then exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

# flag dest -> ServeSettings field, for the flags that map one to one
SETTINGS_FLAGS = (
    "model", "backend", "device", "threads", "lanes", "max_batch", "max_delay_ms", "queue_size",
    "timeout_s", "max_body_bytes", "max_pixels", "max_images", "decode_workers", "host", "port",
    "name",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (/v1/detect, /metrics, ...)",
        description="Serve a model file (.onnx, .engine, .pt) over HTTP with dynamic batching. "
        "Every flag can also be set as an environment variable DETECTOR_<NAME> (e.g. "
        "DETECTOR_MAX_BATCH=16, DETECTOR_API_KEYS=key1,key2); flags win.",
    )
    parser.add_argument("--model", help="model file (or DETECTOR_MODEL)")
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
    parser.add_argument("--queue-size", type=int, help="waiting requests before 503 (default 64)")
    parser.add_argument("--timeout-s", type=float, help="request deadline before 504 (default 10)")
    parser.add_argument("--max-body-bytes", type=int, help="largest body (default 20 MiB)")
    parser.add_argument("--max-pixels", type=int, help="largest image in pixels (default 40M)")
    parser.add_argument("--max-images", type=int, help="most images per batch request (32)")
    parser.add_argument("--name", help="model name in the v2 API, /v2/models/NAME (detector)")
    parser.add_argument("--decode-workers", type=int, help="images decoded at once (the cores)")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accepted API key (repeatable; prefer DETECTOR_API_KEYS, which "
                        "other users cannot read from the process list)")  # fmt: skip
    parser.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                        help="allowed CORS origin (repeatable; none by default)")  # fmt: skip
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get after SIGTERM")  # fmt: skip
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``ServeSettings`` from the flags given, the environment for the rest."""
    from serve.settings import load_settings

    given: dict[str, Any] = {
        name: getattr(args, name) for name in SETTINGS_FLAGS if getattr(args, name) is not None
    }
    for name in ("providers", "api_keys", "cors_origins"):
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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from serve.app import create_app
    from serve.runtime.predictor import backend_for
    from serve.state import load_predictor

    settings = settings_from_args(args)
    if not Path(settings.model).is_file():
        raise FileNotFoundError(f"{settings.model}: no such model file")
    if settings.backend is None:
        backend_for(settings.model)  # an unknown suffix is a clear error before starting
    predictor = load_predictor(settings)  # a bad file is an "error: ..." line, not a traceback
    access_log_to_stdout()
    app = create_app(settings, predictor)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # one process owns the model and the cores; scale out with replicas
        log_config=None,  # the CLI's logging set-up
        access_log=False,  # ours (JSON, with request ids) replaces uvicorn's
        server_header=False,
        timeout_graceful_shutdown=max(int(args.graceful_timeout), 1),
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
