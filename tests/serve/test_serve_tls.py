"""HTTPS end to end: ``detector serve --ssl-certfile/--ssl-keyfile`` on 127.0.0.1 with a
certificate made here (OpenSSL), a client that trusts it gets detections over TLS, a plain-HTTP
request to the same port gets no answer, and a client that does not trust it is refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import encode, noise  # noqa: E402

from serve.launch import ServerProcess  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command to make a certificate"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_detections_over_https(serve_onnx, certificate, tmp_path):
    cert, key = certificate
    server = ServerProcess(
        serve_onnx, tmp_path / "serve.log",
        ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--threads", "1"],
        cafile=cert,
    )  # fmt: skip
    image = encode(noise(64, 64, 4))
    with server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=cert),
                          trust_env=False, timeout=30) as http:  # fmt: skip
            answer = http.post("/v1/detect", files={"image": ("a.png", image)})
            assert answer.status_code == 200 and "detections" in answer.json()
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no HTTP answer
            httpx.get(server.url.replace("https://", "http://") + "/readyz", trust_env=False,
                      timeout=10)  # fmt: skip
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(f"{server.url}/readyz", trust_env=False, timeout=10)
