"""The demo's HTTP side: ``detector serve`` as a child process and a small stdlib client.

The client uses ``urllib`` only, so the demo needs nothing beyond the train and serve extras.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any


class ServerError(RuntimeError):
    """The server process did not start, or stopped answering."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``detector serve --model MODEL`` on ``host:port``, its output in ``log``.

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
        self.model = Path(model)
        self.log = Path(log)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args or [])
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.killed = False  # True when SIGTERM did not stop it in time

    @property
    def stopped_cleanly(self) -> bool:
        """Stopped by SIGTERM alone (exit 0 or -SIGTERM), not killed."""
        return not self.killed and self.exit_code in (0, -signal.SIGTERM)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 180.0) -> None:
        """Start the process and wait until ``GET /readyz`` answers 200."""
        command = [sys.executable, "-m", "detector", "serve", "--model", str(self.model),
                   "--host", self.host, "--port", str(self.port), *self.extra_args]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # the flags alone configure it: a DETECTOR_API_KEYS (or any DETECTOR_*) of the caller's
        # shell would otherwise change the demo's server (e.g. answer 401 to its requests)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"the server exited with status {self.process.returncode} before it was "
                    f"ready; its log ({self.log}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerError(f"the server was not ready after {ready_timeout:.0f} s; see {self.log}")

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout`` s, then SIGKILL; returns the exit status
        (uvicorn re-raises SIGTERM after its graceful shutdown, so a clean stop reads -15)."""
        process = self.process
        if process is None or process.poll() is not None:
            self.exit_code = None if process is None else process.returncode
            return self.exit_code
        process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            process.kill()
            self.exit_code = process.wait()
        return self.exit_code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    with urllib.request.urlopen(f"{base_url}{route}", timeout=timeout) as response:
        return json.loads(response.read())
