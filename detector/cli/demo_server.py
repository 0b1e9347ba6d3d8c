"""The demo's HTTP side: ``detector serve`` as a child process (:mod:`serve.launch`) and a small
stdlib client.

The client uses ``urllib`` only, so the demo needs nothing beyond the train and serve extras.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from serve import launch
from serve.launch import ServerError, free_port

__all__ = ["ServerError", "ServerProcess", "detect", "free_port", "get_json", "post_image"]


class ServerProcess(launch.ServerProcess):
    """``detector serve --model MODEL`` on ``host:port``, its output (log and access log) in
    ``log``; the launcher of :mod:`serve.launch` with the port chosen before the start, so the
    demo can print it first.

    Use as a context manager: the server is stopped on exit even when the body raised
    (SIGTERM, then SIGKILL after ``stop_timeout`` seconds).
    """

    def __init__(
        self,
        model: str | Path,
        log: str | Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: list[str] | None = None,
        stop_timeout: float = 20.0,
    ) -> None:
        super().__init__(
            model, log, extra_args or [], host=host, port=port or free_port(host),
            stop_timeout=stop_timeout,
        )  # fmt: skip


def _multipart(field: str, path: Path) -> tuple[bytes, str]:
    """One file field as a ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_image(
    base_url: str, path: str | Path, query: str = "", timeout: float = 60.0
) -> tuple[bytes, str]:
    """``POST /v1/detect?QUERY`` with the image file; returns (body, content type).

    Raises:
        ServerError: the server answered with an error status or not at all.
    """
    body, content_type = _multipart("image", Path(path))
    url = f"{base_url}/v1/detect" + (f"?{query}" if query else "")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise ServerError(f"POST {url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise ServerError(f"POST {url}: {exc}") from exc


def detect(base_url: str, path: str | Path, conf: float = 0.3) -> dict[str, Any]:
    """The server's JSON answer for one image (``detections``, ``timings``, ``model``)."""
    body, _ = post_image(base_url, path, f"conf={conf}")
    return json.loads(body)


def get_json(base_url: str, route: str, timeout: float = 10.0) -> Any:
    """``GET ROUTE`` decoded from JSON."""
    with urllib.request.urlopen(f"{base_url}{route}", timeout=timeout) as response:
        return json.loads(response.read())
