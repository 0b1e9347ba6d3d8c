"""Which torch device a model runs on: the one rule for training, evaluation, predict and serve.

``detector train``/``eval``/``predict``/``bench`` take ``--device auto|cpu|cuda|cuda:N`` and the
server a GPU index; all of them end up in :func:`resolve_device`, so a device name means the same
thing everywhere and a bad one fails with the same message.
"""

from __future__ import annotations

import os

import torch


class DeviceError(ValueError):
    """The device asked for does not exist here (e.g. ``cuda`` without a GPU, an unknown name)."""


def _local_rank() -> int:
    """This process's GPU under ``torchrun`` (``LOCAL_RANK``), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str | int | None) -> torch.device:
    """The device to run on.

    - ``"auto"``/``None``: this process's CUDA GPU if there is one (``LOCAL_RANK`` under
      ``torchrun``, else GPU 0), else the CPU.
    - an ``int`` or a digit string (the server's ``--device`` is a GPU index): that GPU when
      CUDA is available, else the CPU.
    - ``"cpu"``, ``"cuda:N"``: exactly that; ``"cuda"``: this process's GPU, as for ``auto``.

    Raises:
        DeviceError: a CUDA device without CUDA, a GPU index beyond the GPUs there are, or a
            name torch does not know or that is neither a CPU nor a CUDA device.
    """
    cuda = torch.cuda.is_available()
    if device is None or device == "auto":
        return torch.device("cuda", _local_rank()) if cuda else torch.device("cpu")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return _check_index(torch.device("cuda", int(device))) if cuda else torch.device("cpu")
    try:
        resolved = torch.device(str(device))
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda":
        if not cuda:
            raise DeviceError(
                f"device {device!r} asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                "use device=cpu or auto"
            )
        index = _local_rank() if resolved.index is None else resolved.index
        return _check_index(torch.device("cuda", index))
    if resolved.type != "cpu":
        raise DeviceError(f"device {device!r}: only cpu and cuda are supported")
    return resolved


def _check_index(device: torch.device) -> torch.device:
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"GPU {device.index} asked for, but this machine has {count}")
    return device
