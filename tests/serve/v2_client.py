"""A KServe v2 client for our detector with the real ``tritonclient.http``, and nothing in it
that knows which server answers: the same function runs against ``detector serve`` (``/v2``) and
against NVIDIA Triton serving the repository that ``detector export triton`` writes, since both
take the contract of :mod:`serve.routes.v2.io` (input ``IMAGE`` BYTES ``[B, 1]`` of encoded image
files; outputs ``num_dets``, ``boxes``, ``scores``, ``classes``).

Against Triton (model repository from ``detector export triton --model M.onnx --out REPO``)::

    tritonserver --model-repository REPO --http-port 8000 &
    python tests/serve/v2_client.py --url 127.0.0.1:8000 --model detector IMAGE.jpg ...

and against our server the same command, with ``detector serve --model M.onnx --port 8000``
running instead. It prints one JSON line per image (boxes in the image's own pixels).
The tests (``tests/serve/test_serve_v2.py``) call :func:`detect_v2` and :func:`describe`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

OUTPUTS = ("num_dets", "boxes", "scores", "classes")


def describe(url: str, model: str) -> dict[str, Any]:
    """Liveness, readiness and metadata of the server at ``url`` (``host:port``, no scheme)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "server": client.get_server_metadata(),
            "model": client.get_model_metadata(model),
        }
    finally:
        client.close()


def detect_v2(
    url: str,
    model: str,
    images: list[bytes],
    binary_outputs: bool = True,
    parameters: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Send encoded image files as one ``[B, 1]`` BYTES batch; per image its ``boxes``
    ``[k, 4]`` (x1, y1, x2, y2, original pixels), ``scores`` ``[k]`` and ``classes`` ``[k]``.

    The input always goes as binary tensor data (``tritonclient``'s default: JSON strings must
    be UTF-8, which image files are not); ``binary_outputs=False`` asks for the outputs as JSON.
    ``parameters``: request parameters such as ``conf``, ``iou``, ``max_det``.
    """
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        tensor = httpclient.InferInput("IMAGE", [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data] for data in images], dtype=object))
        requested = [
            httpclient.InferRequestedOutput(n, binary_data=binary_outputs) for n in OUTPUTS
        ]
        result = client.infer(
            model, [tensor], outputs=requested, parameters=parameters, headers=headers
        )
    finally:
        client.close()
    num_dets = result.as_numpy("num_dets")
    boxes, scores, classes = (result.as_numpy(n) for n in ("boxes", "scores", "classes"))
    answers = []
    for i, count in enumerate(num_dets[:, 0].tolist()):
        answers.append(
            {"boxes": boxes[i, :count], "scores": scores[i, :count], "classes": classes[i, :count]}
        )
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the HTTP endpoint")
    parser.add_argument("--model", default="detector", help="model name (default detector)")
    parser.add_argument("--conf", type=float, help="score threshold, as a request parameter")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    info = describe(args.url, args.model)
    print(json.dumps({k: info[k] for k in ("live", "ready", "model_ready")}))
    parameters = {"conf": args.conf} if args.conf is not None else None
    answers = detect_v2(args.url, args.model, [p.read_bytes() for p in args.images],
                        parameters=parameters)  # fmt: skip
    for path, answer in zip(args.images, answers):
        print(json.dumps({"image": str(path), **{k: v.tolist() for k, v in answer.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
