"""Training and evaluation loaders: augmented, padded batches that a seed reproduces exactly.

Every training sample draws its randomness from its own ``numpy.random.Generator`` seeded with
``(seed, epoch, index)``, so a batch does not depend on the number of workers or on which worker
made it. The sampler carries the epoch and the mosaic switch with each index, so persistent
workers follow ``set_epoch`` and ``set_mosaic`` without being restarted. Images stay uint8
through augmentation and the collate step (which pads boxes to the largest count in the batch,
labels with -1). On a CPU-only machine workers hand uint8 batches over and this process makes
them float32; with CUDA they arrive float32 and pinned, or uint8 (``float_images=False``) for the
trainer to convert on the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from detector.core.preprocess import PAD_VALUE, as_size, preprocess
from detector.data.augment import AugmentConfig, augment_hsv, finalize_boxes, hflip, reduce_factor
from detector.data.dataset import DetectionDataset
from detector.data.mosaic import fit_ratio, mixup, mosaic

LOGGER = logging.getLogger(__name__)


class TrainBatch(NamedTuple):
    """``images`` ``[B, 3, H, W]`` BGR 0-255, float32 (uint8 if the loader was asked to);
    ``boxes`` float32 ``[B, M, 4]`` xyxy input pixels, zero-padded; ``labels`` int64 ``[B, M]``,
    -1 where padded."""

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = True) -> TrainBatch:
        return TrainBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class EvalBatch(NamedTuple):
    """``images`` float32 ``[B, 3, H, W]`` letterboxed by ``detector.core.preprocess``; per image
    its
    id, letterbox ratio and original ``(height, width)``."""

    images: torch.Tensor
    image_ids: list[int]
    ratios: list[float]
    original_hw: list[tuple[int, int]]


# ---------------------------------------------------------------------------------- samples
def train_sample(
    dataset: DetectionDataset,
    index: int,
    rng: np.random.Generator,
    size_hw: tuple[int, int],
    cfg: AugmentConfig,
    use_mosaic: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented sample: (uint8 ``[H, W, 3]``, boxes float32 ``[K, 4]``, labels ``[K]``).

    Mosaic (+ MixUp) when ``use_mosaic``; then YOLOX's TrainTransform: HSV, flip, letterbox.
    """
    height, width = size_hw
    if use_mosaic and rng.random() < cfg.mosaic_prob:
        others = rng.integers(0, len(dataset), 3)
        image, boxes, labels = mosaic(dataset, [index, *others.tolist()], rng, size_hw, cfg)
        if cfg.enable_mixup and len(boxes) and rng.random() < cfg.mixup_prob:
            image, boxes, labels = mixup(image, boxes, labels, dataset, rng, cfg)
    else:
        fit = fit_ratio(dataset, index, size_hw)
        sample = dataset.load(index, reduce_factor(fit) if fit else 1)
        h0, w0 = sample.image.shape[:2]
        r = min(height / h0, width / w0)
        new_w, new_h = int(w0 * r), int(h0 * r)
        image = cv2.resize(sample.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        boxes = sample.boxes * np.float32(r)
        labels = sample.labels
    if rng.random() < cfg.hsv_prob:
        image = augment_hsv(image, rng, cfg.hsv_gains)
    if rng.random() < cfg.flip_prob:
        image, boxes = hflip(image, boxes)
    if image.shape[:2] != (height, width):
        canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
        canvas[: image.shape[0], : image.shape[1]] = image
        image = canvas
    boxes, labels = finalize_boxes(boxes, labels, width, height)
    return image, boxes, labels


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: independent of workers and order."""
    return np.random.default_rng([seed, epoch, index])


class TrainDataset(Dataset):
    """Map-style view of a ``DetectionDataset`` whose items are ``(epoch, mosaic, index)``."""

    def __init__(
        self, dataset: DetectionDataset, imgsz: int | tuple[int, int], cfg: AugmentConfig,
        seed: int,
    ) -> None:  # fmt: skip
        self.dataset, self.size_hw, self.cfg, self.seed = dataset, as_size(imgsz), cfg, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epoch, use_mosaic, index = key
        rng = sample_rng(self.seed, epoch, index)
        return train_sample(self.dataset, index, rng, self.size_hw, self.cfg, use_mosaic)


class EpochSampler(Sampler):
    """Yields ``(epoch, mosaic, index)``: indices from ``inner`` (e.g. a ``DistributedSampler``)
    or a shuffle seeded by ``(seed, epoch)``."""

    def __init__(self, size: int, seed: int, inner: Sampler | None = None) -> None:
        self.size, self.seed, self.inner = size, seed, inner
        self.epoch, self.mosaic = 0, True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.inner is not None and hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else self.size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        if self.inner is not None:
            order: Sequence[int] = list(self.inner)
        else:
            order = np.random.default_rng([self.seed, self.epoch, 1 << 30]).permutation(self.size)
        epoch, use_mosaic = self.epoch, self.mosaic
        for index in order:
            yield epoch, use_mosaic, int(index)


def collate_train(
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], float_images: bool = True
) -> TrainBatch:
    """Stack uint8 images into ``[B, 3, H, W]`` (float32, or uint8 with ``float_images=False``);
    pad boxes/labels to the batch's largest count ``M`` (at least 1)."""
    # HWC -> CHW on uint8 in numpy (a strided torch permute + float copy is ~7x slower)
    images = torch.from_numpy(np.stack([item[0].transpose(2, 0, 1) for item in items]))
    if float_images:
        images = images.float()
    count = max(1, max(len(item[1]) for item in items))
    boxes = torch.zeros((len(items), count, 4), dtype=torch.float32)
    labels = torch.full((len(items), count), -1, dtype=torch.int64)
    for i, (_, b, lab) in enumerate(items):
        boxes[i, : len(b)] = torch.from_numpy(b)
        labels[i, : len(lab)] = torch.from_numpy(lab)
    return TrainBatch(images, boxes, labels)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # the workers are the parallelism; OpenCV threads would oversubscribe


def _prepare_fork() -> None:
    """Stop OpenCV's thread pool in this process before workers are forked from it.

    The pool does not survive ``fork``: a worker forked while the parent's pool is running
    hangs at its first OpenCV call (seen after ``detector data synth`` ran in the same process).
    With one thread the pool is shut down and the children start clean.
    """
    cv2.setNumThreads(1)


class TrainLoader:
    """Iterable of ``TrainBatch``; ``set_epoch(e)`` before each epoch, ``set_mosaic(False)`` for
    the final no-augmentation phase."""

    def __init__(self, dataset: DetectionDataset, imgsz: int | tuple[int, int], batch_size: int,
                 augment: AugmentConfig, mosaic: bool, workers: int, seed: int,
                 sampler: Sampler | None, drop_last: bool, float_images: bool) -> None:  # fmt: skip
        self.dataset = dataset
        self.train_dataset = TrainDataset(dataset, imgsz, augment, seed)
        self.sampler = EpochSampler(len(dataset), seed, sampler)
        self.sampler.mosaic = mosaic
        self.batch_size = batch_size
        kwargs: dict[str, Any] = {}
        if workers > 0:
            _prepare_fork()
            kwargs = {"persistent_workers": True, "prefetch_factor": 4,
                      "worker_init_fn": _worker_init}  # fmt: skip
        # Without CUDA, workers hand over uint8 images: a quarter of the bytes to copy into shared
        # memory, which costs more than the float conversion done here afterwards. With CUDA,
        # float batches are made in the workers so that they arrive pinned.
        cuda = torch.cuda.is_available()
        self._float_here = float_images and workers > 0 and not cuda
        collate = partial(collate_train, float_images=float_images and not self._float_here)
        self.loader = DataLoader(
            self.train_dataset, batch_size=batch_size, sampler=self.sampler,
            num_workers=workers, collate_fn=collate, drop_last=drop_last, pin_memory=cuda,
            **kwargs,
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_mosaic(self, enabled: bool) -> None:
        self.sampler.mosaic = enabled

    @property
    def mosaic(self) -> bool:
        return self.sampler.mosaic

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[TrainBatch]:
        if not self._float_here:
            yield from self.loader
            return
        for batch in self.loader:
            yield batch._replace(images=batch.images.float())


def build_train_loader(
    dataset: DetectionDataset,
    imgsz: int | tuple[int, int],
    batch_size: int,
    augment: AugmentConfig | None = None,
    mosaic: bool = True,
    workers: int = 0,
    seed: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = True,
    float_images: bool = True,
) -> TrainLoader:
    """Loader of augmented ``TrainBatch`` es at ``imgsz``; ``mosaic=False`` is the final phase
    (TrainTransform only: HSV, flip, letterbox). ``sampler`` (e.g. ``DistributedSampler``)
    replaces the seeded shuffle. ``float_images=False`` keeps images uint8: 4x fewer bytes to
    pin and copy to the GPU and no conversion on the host; call ``.float()`` on the device
    (the right choice for GPU training)."""
    if len(dataset) < batch_size and drop_last:
        LOGGER.warning("%s: %d images < batch %d with drop_last: no batches", dataset.name,
                       len(dataset), batch_size)  # fmt: skip
    return TrainLoader(dataset, imgsz, batch_size, augment or AugmentConfig(), mosaic, workers,
                       seed, sampler, drop_last, float_images)  # fmt: skip


# ----------------------------------------------------------------------------- multi-scale
def resize_batch(batch: TrainBatch, size: int | tuple[int, int]) -> TrainBatch:
    """Resize a batch's images (bilinear, float32 out) to ``size``, scaling its boxes to match."""
    height, width = as_size(size)
    old_h, old_w = batch.images.shape[-2:]
    if (old_h, old_w) == (height, width):
        return batch
    images = torch.nn.functional.interpolate(
        batch.images.float(), size=(height, width), mode="bilinear", align_corners=False
    )
    scale = torch.tensor([width / old_w, height / old_h] * 2, dtype=batch.boxes.dtype,
                         device=batch.boxes.device)  # fmt: skip
    return TrainBatch(images, batch.boxes * scale, batch.labels)


# ------------------------------------------------------------------------------------ eval
class EvalDataset(Dataset):
    """Letterboxed images (``detector.core.preprocess``) with id, ratio and original size."""

    def __init__(self, dataset: DetectionDataset | Subset, imgsz: int | tuple[int, int]) -> None:
        if isinstance(dataset, Subset):  # e.g. this process's share under torchrun
            self.dataset, self.indices = dataset.dataset, list(dataset.indices)
        else:
            self.dataset, self.indices = dataset, list(range(len(dataset)))
        self.size_hw = as_size(imgsz)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, float, tuple[int, int]]:
        sample = self.dataset.load(self.indices[index])
        chw, ratio = preprocess(sample.image, self.size_hw)
        return chw, sample.image_id, ratio, sample.image.shape[:2]


def collate_eval(items: list[tuple[np.ndarray, int, float, tuple[int, int]]]) -> EvalBatch:
    images = torch.from_numpy(np.stack([item[0] for item in items]))
    return EvalBatch(images, [i[1] for i in items], [i[2] for i in items],
                     [(int(i[3][0]), int(i[3][1])) for i in items])  # fmt: skip


def build_eval_loader(
    dataset: DetectionDataset | Subset,
    imgsz: int | tuple[int, int],
    batch_size: int,
    workers: int = 0,
) -> DataLoader:
    """Loader of ``EvalBatch`` es in dataset order (every image once); ``dataset`` may be a
    ``torch.utils.data.Subset`` of a ``DetectionDataset``."""
    if workers > 0:
        _prepare_fork()
    return DataLoader(
        EvalDataset(dataset, imgsz), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate_eval, pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if workers else None,
    )  # fmt: skip
