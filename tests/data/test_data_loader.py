"""Loaders: padded batches, reproducible for a seed whatever the worker count, epoch-aware,
multi-scale helpers and the letterboxed evaluation batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from detector.core.preprocess import preprocess
from detector.data import (
    AugmentConfig,
    build_dataset,
    build_eval_loader,
    build_train_loader,
    load_data_config,
    resize_batch,
)
from detector.data.loader import TrainBatch


@pytest.fixture(scope="module")
def dataset(small_synth: Path):
    return build_dataset(load_data_config(small_synth), "train")


def _batches(loader, count: int = 2) -> list[TrainBatch]:
    it = iter(loader)
    return [next(it) for _ in range(count)]


def _assert_equal(a: list[TrainBatch], b: list[TrainBatch]) -> None:
    for x, y in zip(a, b):
        for tx, ty in zip(x, y):
            assert torch.equal(tx, ty)


def test_batch_layout(dataset):
    loader = build_train_loader(dataset, 96, 4, AugmentConfig(), mosaic=True, workers=0, seed=0)
    batch = next(iter(loader))
    assert batch.images.shape == (4, 3, 96, 96) and batch.images.dtype == torch.float32
    assert batch.boxes.shape[:2] == batch.labels.shape and batch.boxes.shape[2] == 4
    assert batch.labels.dtype == torch.int64 and batch.labels.shape[1] >= 1
    padded = batch.labels < 0
    assert (batch.boxes[padded] == 0).all()
    real = batch.boxes[~padded]
    assert (real[:, 2] > real[:, 0]).all() and (real[:, 3] > real[:, 1]).all()
    assert 0 <= batch.images.min() and batch.images.max() <= 255
    assert len(loader) == len(dataset) // 4


def test_same_seed_same_batches_with_0_or_2_workers(dataset):
    def run(workers: int, seed: int = 3, epoch: int = 1):
        loader = build_train_loader(dataset, 64, 4, AugmentConfig(), True, workers, seed)
        loader.set_epoch(epoch)
        return _batches(loader)

    in_process = run(0)
    _assert_equal(in_process, run(0))
    _assert_equal(in_process, run(2))
    assert not torch.equal(in_process[0].images, run(0, epoch=2)[0].images)
    assert not torch.equal(in_process[0].images, run(0, seed=4)[0].images)


def test_persistent_workers_follow_epoch_and_mosaic_switch(dataset):
    loader = build_train_loader(dataset, 64, 4, AugmentConfig(), True, workers=1, seed=0)
    reference = build_train_loader(dataset, 64, 4, AugmentConfig(), True, workers=0, seed=0)
    for epoch, mosaic in ((0, True), (1, True), (2, False)):
        for ld in (loader, reference):
            ld.set_epoch(epoch)
            ld.set_mosaic(mosaic)
        _assert_equal(_batches(loader, 1), _batches(reference, 1))
    assert not loader.mosaic


def test_final_phase_is_letterbox_hsv_flip(dataset):
    cfg = AugmentConfig(hsv_prob=0.0, flip_prob=0.0)
    loader = build_train_loader(dataset, 128, 2, cfg, mosaic=False, workers=0, seed=0)
    batch = next(iter(loader))
    order = list(loader.sampler)[:2]
    for k, (_, _, index) in enumerate(order):
        sample = dataset.load(index)
        expected, ratio = preprocess(sample.image, 128)
        np.testing.assert_allclose(batch.images[k].numpy(), expected, atol=1.0)
        count = len(sample.labels)
        np.testing.assert_allclose(batch.boxes[k, :count].numpy(), sample.boxes * ratio, atol=1e-3)


def test_uint8_images_option(dataset):
    as_float = next(iter(build_train_loader(dataset, 64, 2, workers=0, seed=1)))
    as_uint8 = next(iter(build_train_loader(dataset, 64, 2, workers=0, seed=1, float_images=False)))
    assert as_uint8.images.dtype == torch.uint8
    assert torch.equal(as_uint8.images.float(), as_float.images)
    assert resize_batch(as_uint8, 96).images.dtype == torch.float32


def test_sampler_passthrough(dataset):
    inner = list(range(len(dataset)))[::-1]
    loader = build_train_loader(dataset, 64, 4, AugmentConfig(), True, 0, 0, sampler=inner)
    assert [index for _, _, index in loader.sampler] == inner


def test_resize_batch():
    batch = TrainBatch(
        torch.rand(2, 3, 64, 96) * 255,
        torch.tensor([[[8.0, 4.0, 40.0, 32.0]], [[0.0, 0.0, 0.0, 0.0]]]),
        torch.tensor([[1], [-1]]),
    )
    out = resize_batch(batch, (128, 48))
    assert out.images.shape == (2, 3, 128, 48)
    assert torch.allclose(out.boxes[0, 0], torch.tensor([4.0, 8.0, 20.0, 64.0]))
    assert (out.boxes[1] == 0).all() and torch.equal(out.labels, batch.labels)
    assert resize_batch(batch, (64, 96)) is batch


def test_eval_loader_letterboxes_with_detector_preprocess(dataset):
    loader = build_eval_loader(dataset, 96, batch_size=5, workers=0)
    batch = next(iter(loader))
    assert batch.images.shape == (5, 3, 96, 96)
    sample = dataset.load(2)
    expected, ratio = preprocess(sample.image, 96)
    np.testing.assert_array_equal(batch.images[2].numpy(), expected)
    assert batch.ratios[2] == pytest.approx(ratio)
    assert batch.original_hw[2] == sample.image.shape[:2]
    assert batch.image_ids == [r.image_id for r in dataset.records[:5]]
    total = sum(len(b.image_ids) for b in build_eval_loader(Subset(dataset, [1, 3]), 64, 4))
    assert total == 2


def test_ram_cache_keeps_targets_and_feeds_the_loader(small_synth: Path):
    cfg = load_data_config(small_synth)
    plain, cached = build_dataset(cfg, "train"), build_dataset(cfg, "train", cache=True)
    for i in (0, 5):
        a, b = plain.load(i), cached.load(i)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    batch = next(iter(build_train_loader(cached, 64, 4, workers=0, seed=0)))
    assert batch.images.shape == (4, 3, 64, 64)
