"""One device rule for training, evaluation, predict and serve."""

from __future__ import annotations

import pytest
import torch

from detector.models.device import DeviceError, resolve_device
from detector.training import distributed
from serve.runtime.backends import torch as torch_backend


def test_training_and_serving_share_the_rule():
    assert distributed.resolve_device is resolve_device
    assert torch_backend.resolve_device is resolve_device
    assert torch_backend.TorchDeviceError is DeviceError


def test_names_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu:0'"):
        resolve_device("tpu:0")
    with pytest.raises(DeviceError, match="'meta': only cpu and cuda"):
        resolve_device("meta")
    assert isinstance(DeviceError("x"), ValueError)  # the command line reports it as an error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallbacks")
def test_without_a_gpu():
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device(0) == resolve_device("1") == torch.device("cpu")  # a GPU index
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_with_a_gpu(monkeypatch):
    """``cuda`` without an index and ``auto`` mean this process's GPU under torchrun."""
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device(0) == resolve_device("cuda:0") == torch.device("cuda", 0)
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"GPU {count} asked for, but this machine has {count}"):
        resolve_device(f"cuda:{count}")
    monkeypatch.setenv("LOCAL_RANK", str(count - 1))
    assert resolve_device("cuda") == resolve_device("auto") == torch.device("cuda", count - 1)
