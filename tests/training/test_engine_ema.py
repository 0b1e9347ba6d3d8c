"""ModelEMA: ramped decay, float buffers averaged, counters copied, convergence, exact resume,
DDP unwrapping."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from detector.training.ema import ModelEMA, unwrap


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4, 2))


def _perturb(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        bn = model[1]
        bn.running_mean.copy_(torch.randn(3, generator=gen))
        bn.running_var.copy_(torch.rand(3, generator=gen) + 0.5)
        bn.num_batches_tracked += 1


def test_copy_is_frozen_and_in_eval_mode() -> None:
    model = _model().train()
    ema = ModelEMA(model)
    assert not ema.ema.training
    assert all(not p.requires_grad for p in ema.ema.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the model is left alone
    assert ema.ema is not model


def test_ramp_values() -> None:
    ema = ModelEMA(_model(), decay=0.9998)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(1) == pytest.approx(0.9998 * (1 - math.exp(-1 / 2000)))
    assert ema.decay_at(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ema.decay_at(100_000) == pytest.approx(0.9998, rel=1e-12)


def test_one_update_is_the_weighted_mean_of_weights_and_float_buffers() -> None:
    model = _model()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    _perturb(model, seed=1)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2000))
    assert ema.updates == 1
    for name, p in ema.ema.named_parameters():
        expected = d * start[name] + (1 - d) * dict(model.named_parameters())[name]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
    live_buffers = dict(model.named_buffers())
    for name, b in ema.ema.named_buffers():
        if b.dtype.is_floating_point:
            expected = d * start[name] + (1 - d) * live_buffers[name]
            torch.testing.assert_close(b, expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(b, live_buffers[name]), name


def test_product_of_decays_after_many_updates() -> None:
    """With the model fixed at w1 the EMA is w1 + prod(d_i) * (w0 - w1)."""
    model = _model()
    ema = ModelEMA(model)
    w0 = [p.detach().clone() for p in ema.ema.parameters()]
    _perturb(model, seed=2)
    n = 300
    for _ in range(n):
        ema.update(model)
    factor = math.prod(ema.decay_at(i) for i in range(1, n + 1))
    for p, start, live in zip(ema.ema.parameters(), w0, model.parameters(), strict=True):
        torch.testing.assert_close(p, live + factor * (start - live), rtol=1e-5, atol=1e-5)


def test_converges_to_constant_weights() -> None:
    model = _model()
    ema = ModelEMA(model, decay=0.9)
    _perturb(model, seed=3)
    for _ in range(3000):
        ema.update(model)
    for p, live in zip(ema.ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, live.detach(), rtol=0, atol=1e-6)


def test_resume_is_exact() -> None:
    models = [_model() for _ in range(2)]
    for i, m in enumerate(models):
        _perturb(m, seed=10 + i)

    a = ModelEMA(_model())
    for step in range(25):
        a.update(models[step % 2])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    for step in range(25, 50):
        a.update(models[step % 2])

    b = ModelEMA(_model(seed=99))  # different start weights: all must come from the state dict
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.updates == 25
    for step in range(25, 50):
        b.update(models[step % 2])
    assert b.updates == a.updates == 50
    for (ka, va), (kb, vb) in zip(
        a.ema.state_dict().items(), b.ema.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka


def test_wrapped_model_is_unwrapped() -> None:
    model = _model()
    wrapped = nn.DataParallel(model)  # same unwrapping path as DistributedDataParallel
    assert unwrap(wrapped) is model
    ema = ModelEMA(wrapped)
    assert not isinstance(ema.ema, nn.DataParallel)
    assert set(ema.ema.state_dict()) == set(model.state_dict())  # no "module." prefix
    _perturb(model, seed=4)
    ema.update(wrapped)
    assert torch.equal(ema.ema[1].num_batches_tracked, model[1].num_batches_tracked)
    d = ema.decay_at(1)
    start = _model()[1].running_mean
    expected = d * start + (1 - d) * model[1].running_mean
    torch.testing.assert_close(ema.ema[1].running_mean, expected, rtol=1e-6, atol=1e-7)


def test_compiled_model_is_unwrapped() -> None:
    model = _model()
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    assert unwrap(compiled) is model
    assert unwrap(nn.DataParallel(compiled)) is model
    assert set(ModelEMA(compiled).ema.state_dict()) == set(model.state_dict())


def test_bad_decay_and_bad_state() -> None:
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_model(), decay=1.0)
    with pytest.raises(KeyError, match="updates"):
        ModelEMA(_model()).load_state_dict({"ema": {}})


def test_parameters_match_official_yolox_ema() -> None:
    """Our EMA equals YOLOX's, which averages every float entry of the state dict."""
    yolox_ema = pytest.importorskip("yolox.utils.ema")
    torch.manual_seed(0)
    model = _model()
    ours = ModelEMA(model, decay=0.9998)
    theirs = yolox_ema.ModelEMA(model, 0.9998)
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            model[1].running_mean.add_(0.1 * torch.randn(3, generator=gen))
            model[1].num_batches_tracked += 1
        ours.update(model)
        theirs.update(model)
    assert ours.updates == theirs.updates == 50
    theirs_state = theirs.ema.state_dict()
    for name, value in ours.ema.state_dict().items():
        if value.dtype.is_floating_point:  # YOLOX leaves integer counters at 0; we copy them
            torch.testing.assert_close(value, theirs_state[name], rtol=1e-6, atol=1e-7)
