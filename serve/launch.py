"""Start ``detector serve`` in a child process, wait until it is ready, stop it cleanly.

The one launcher behind the demo (``detector demo``), the end-to-end serving tests and the
serving benchmarks. It is a client-side helper: standard library only (no torch, no FastAPI),
so it runs wherever the client runs.

The child gets the flags it is given and nothing else: every ``DETECTOR_*`` variable of the
caller's environment is dropped (a ``DETECTOR_API_KEYS`` in the shell would otherwise make the
server answer 401). Without a port, the server is started with ``--port 0`` and the port the OS
gave it is read from uvicorn's ``Uvicorn running on http://HOST:PORT`` line, so two launchers
never race for a port; then ``GET /readyz`` is polled until it answers 200.

Example::

    with ServerProcess("model.onnx", log="runs/serve.log", args=["--max-batch", "8"]) as server:
        httpx.post(f"{server.url}/v1/detect", files={"image": jpeg})
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

STARTED = re.compile(r"Uvicorn running on (https?)://(\S+?):(\d+)")
"""uvicorn's start-up line (on stderr), which carries the port the server listens on."""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server only


class ServerError(RuntimeError):
    """The server process did not start, was not ready in time, or stopped answering."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it).

    Another process may take it before the server binds it; pass ``port=None`` to
    :class:`ServerProcess` instead when the port need not be known before the start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``detector serve --model MODEL --host HOST --port PORT ARGS...`` (or ``--repository
    DIR`` instead of ``--model``) as a child process.

    Args:
        model: the model file to serve (``None`` with ``repository``).
        log: where the server's stderr goes (its log lines, uvicorn's start-up line).
        args: more ``detector serve`` flags.
        access_log: where its stdout goes (the JSON access log); ``None``: into ``log`` too.
        host: the address to listen on.
        port: the port; ``None``: ``--port 0`` and the port the OS chose, read from the log.
        prelude: Python source run in the server process before the command line (e.g. to set
            a backend option that has no flag); empty: ``python -m detector serve``.
        env: variables added to the child's environment (after ``DETECTOR_*`` were dropped).
        cwd: the child's working directory (default: the caller's).
        stop_timeout: seconds :meth:`stop` waits after SIGTERM before SIGKILL.
        cafile: the CA (or self-signed certificate) to trust when the server serves HTTPS
            (``--ssl-certfile``); the scheme is read from uvicorn's start-up line.
        repository: a model repository folder to serve instead of ``model``.

    Use as a context manager (started on entry, stopped on exit even when the body raised), or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        model: str | Path | None,
        log: str | Path,
        args: Sequence[str] = (),
        *,
        access_log: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        prelude: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stop_timeout: float = 20.0,
        cafile: str | Path | None = None,
        repository: str | Path | None = None,
    ) -> None:
        if (model is None) == (repository is None):
            raise ValueError("give a model file or a repository folder, not both")
        self.model = None if model is None else Path(model)
        self.repository = None if repository is None else Path(repository)
        self.log = Path(log)
        self.args = list(args)
        self.access_log = Path(access_log) if access_log is not None else None
        self.host = host
        self.port = port
        self.prelude = prelude
        self.env = dict(env or {})
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.cafile = cafile
        self.scheme = "https" if any(a.startswith("--ssl-certfile") for a in self.args) else "http"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.killed = False  # True when SIGTERM did not stop it in time

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT`` (the port is known once :meth:`start` returned, or given)."""
        if self.port is None:
            raise ServerError("the server's port is known only once it has started")
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def stopped_cleanly(self) -> bool:
        """Stopped by SIGTERM alone (exit 0, or -SIGTERM re-raised by uvicorn), not killed."""
        return not self.killed and self.exit_code in (0, -signal.SIGTERM)

    def command(self) -> list[str]:
        """The child's command line."""
        port = "0" if self.port is None else str(self.port)
        source = (["--model", str(self.model)] if self.model is not None
                  else ["--repository", str(self.repository)])  # fmt: skip
        serve = ["serve", *source, "--host", self.host, "--port", port]
        if self.prelude:
            source = f"{self.prelude}\nimport sys\nfrom detector.cli import main\nsys.exit(main())"
            return [sys.executable, "-c", source, *serve, *self.args]
        return [sys.executable, "-m", "detector", *serve, *self.args]

    def start(self, ready_timeout: float = 180.0) -> ServerProcess:
        """Start the child and wait until ``GET /readyz`` answers 200; returns ``self``.

        Raises:
            ServerError: the child exited first, or was not ready after ``ready_timeout``
                seconds (it is stopped then); the message carries the tail of its log.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as err:
            if self.access_log is None:
                self.process = subprocess.Popen(
                    self.command(), stdout=err, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
                )
            else:
                self.access_log.parent.mkdir(parents=True, exist_ok=True)
                with open(self.access_log, "wb") as out:
                    self.process = subprocess.Popen(
                        self.command(), stdout=out, stderr=err, env=env, cwd=self.cwd
                    )
        deadline = time.monotonic() + ready_timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"the server exited with status {self.process.returncode} before it was "
                        f"ready; its log ({self.log}):\n{self.log_tail()}"
                    )
                if self.port is None:
                    match = STARTED.search(self.log_text())
                    if match:
                        self.scheme, self.port = match.group(1), int(match.group(3))
                if self.port is not None and self._ready():
                    return self
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"the server was not ready after {ready_timeout:.0f} s; its log "
                        f"({self.log}):\n{self.log_tail()}"
                    )
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            opener = _NO_PROXY
            if self.scheme == "https":
                context = ssl.create_default_context(cafile=self.cafile)
                opener = urllib.request.build_opener(
                    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
                )
            with opener.open(f"{self.url}/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False  # not listening yet, or 503 while the model warms up

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout`` s, then SIGKILL; returns the exit status (uvicorn
        re-raises SIGTERM after its graceful shutdown, so a clean stop reads -15), ``None`` when
        it never started."""
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

    def log_text(self) -> str:
        """Everything the server has logged so far (``""`` before it started)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.process is None:
            raise ServerError("the server has not been started")
        return self.process.pid

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the child has used so far (Linux /proc)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """The child's resident memory in MiB (Linux /proc)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match is None:
            raise ServerError(f"no VmRSS for process {self.pid} (has it exited?)")
        return int(match.group(1)) / 1024

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
