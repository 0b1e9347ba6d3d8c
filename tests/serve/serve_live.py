"""A real ``detector serve`` process on 127.0.0.1 (a free port chosen by the OS) for the
end-to-end tests, and small image makers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class LiveServer:
    """``python -m detector serve --model MODEL --port 0 ...`` with logs in ``folder``."""

    def __init__(self, model: Path, folder: Path, *flags: str, startup_s: float = 180) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.log", folder / "stderr.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("DETECTOR_")}
        command = [sys.executable, "-m", "detector", "serve", "--model", str(model),
                   "--host", "127.0.0.1", "--port", "0", "--threads", "1", *flags]  # fmt: skip
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + startup_s
        port = None
        while port is None and time.monotonic() < deadline:
            match = STARTED.search(self.stderr_path.read_text())
            if match:
                port = int(match.group(1))
            elif self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr_path.read_text()[-3000:]}")
            else:
                time.sleep(0.1)
        if port is None:
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr_path.read_text()[-3000:]}")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)  # no proxies

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def logs(self) -> str:
        return self.stdout_path.read_text()


def noise(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """A busy image (uint8) so the detector's scores differ from anchor to anchor."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    cv2.rectangle(image, (width // 4, height // 4), (width // 2, height // 2), (40, 200, 90), -1)
    return image


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()
