"""A real ``detector serve`` process on 127.0.0.1 (a free port chosen by the OS) for the
end-to-end tests, and small image makers."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np

from serve.launch import ServerProcess


class LiveServer(ServerProcess):
    """``python -m detector serve --model MODEL --port 0 --threads 1 FLAGS...`` (``--repository
    DIR`` with ``repository``), started and ready (``/readyz``) on construction; its log in
    ``folder/stderr.log``, its JSON access log in ``folder/stdout.log`` (:meth:`logs`)."""

    def __init__(self, model: Path | None, folder: Path, *flags: str, startup_s: float = 180,
                 repository: Path | None = None) -> None:  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.log", folder / "stderr.log"
        super().__init__(model, self.stderr_path, ["--threads", "1", *flags],
                         access_log=self.stdout_path, stop_timeout=60,
                         repository=repository)  # fmt: skip
        self.start(ready_timeout=startup_s)

    def client(self, timeout: float = 60) -> httpx.Client:
        """An HTTP client on the server's URL."""
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)  # no proxies

    def terminate(self) -> None:
        """SIGTERM without waiting (:meth:`stop` waits)."""
        assert self.process is not None
        self.process.terminate()

    def logs(self) -> str:
        """The access log so far (one JSON object per line)."""
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
