"""The training loop: read it top to bottom.

``Trainer.fit`` runs epoch after epoch: switch to the no-augmentation phase when it starts, train
one epoch (learning rate per iteration, multi-scale input, loss, step, EMA), evaluate the EMA
weights every ``eval_interval`` epochs, write ``last.pt``/``best.pt`` atomically, append a row to
``metrics.csv`` and redraw the plots. A resumed run starts at the first epoch its checkpoint had not
finished, in the right phase, with the optimizer, EMA, scaler and random states it had.

``best.pt`` and ``best_map`` stay consistent whatever moment a kill comes at: at an epoch's end
``best_map`` is raised first, then ``best.pt`` is written, then ``last.pt`` (which records that
``best_map``). A kill between the two writes leaves a ``best.pt`` newer than ``last.pt``, so a
resume takes ``best_map`` from ``best.pt`` when it is higher than ``last.pt``'s: a re-run epoch
that scores less never replaces the better model.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from detector.core.config import to_mapping
from detector.data import (
    build_dataset,
    build_train_loader,
    load_data_config,
    resize_batch,
)
from detector.losses import YOLOXLoss
from detector.models import (
    CheckpointError,
    build_model,
    checkpoint_meta,
    get_model_config,
    load_checkpoint,
    read_checkpoint,
)
from detector.training import distributed as dist
from detector.training.checkpoint import restore_rng_state, rng_state, save_atomic
from detector.training.config import TrainConfig
from detector.training.ema import ModelEMA
from detector.training.optim import build_optimizer, set_lr
from detector.training.precision import autocast_dtype
from detector.training.precision import describe as describe_precision
from detector.training.progress import EpochProgress
from detector.training.resources import apply_threads, cpu_plan
from detector.training.schedule import lr_at, scaled_lr
from detector.training.validate import evaluate_predictions, predict_split

logger = logging.getLogger(__name__)

LOSS_TERMS = ("total", "iou", "obj", "cls", "l1", "num_fg")
CSV_FIELDS = (
    "epoch", "iteration", "lr", *LOSS_TERMS, "images_per_s", "epoch_s", "data_wait_s", "mAP",
    "mAP50",
)  # fmt: skip


@dataclass
class RunState:
    """What changes as training goes on; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def unique_run_dir(output_dir: Path, name: str) -> Path:
    """``output_dir/name``, or ``name2``, ``name3``... when taken, so no run is overwritten."""
    candidate, n = output_dir / name, 2
    while candidate.exists():
        candidate, n = output_dir / f"{name}{n}", n + 1
    return candidate


class Trainer:
    """Trains one model on one dataset with one :class:`TrainConfig`."""

    def __init__(
        self,
        config: TrainConfig,
        model_name: str,
        data_path: str | Path,
        weights: str | Path | None = None,
        resume: dict[str, Any] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.data_path = Path(data_path)
        self.device = dist.resolve_device(config.device)
        self.distributed = dist.init_distributed(self.device)
        self.is_main = dist.is_main_process()
        world = dist.world_size()
        if config.batch % world:
            raise ValueError(f"batch={config.batch} is not divisible by {world} processes")
        self.batch_per_process = config.batch // world
        torch.manual_seed(config.seed + dist.rank())
        self.workers, self.threads = self._cpu_budget(world)

        # data
        self.data_config = load_data_config(self.data_path)
        self.train_set = build_dataset(self.data_config, "train", cache=config.cache)
        self.val_set = build_dataset(self.data_config, "val")
        self.class_names = list(self.train_set.class_names)
        model_config = get_model_config(model_name)
        self.imgsz = config.imgsz or model_config.input_size

        # model, loss, optimizer, EMA
        model = build_model(model_name, num_classes=len(self.class_names))
        if weights is not None and resume is None:
            load_checkpoint(model, weights)
        if config.sync_bn and self.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.loss_fn = YOLOXLoss(
            len(self.class_names),
            strides=tuple(model.strides),
            iou_type=config.iou_type,
            iou_weight=config.iou_weight,
            center_radius=config.simota_radius,
            topk=config.simota_topk,
        )
        self.base_lr = scaled_lr(config.lr_per_64, config.batch)
        self.optimizer = build_optimizer(
            config.optimizer,
            self.model,
            lr=self.base_lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        self.ema = ModelEMA(self.model, decay=config.ema_decay) if config.ema else None
        self.amp_dtype = autocast_dtype(self.device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = RunState()
        if resume is not None:
            self._restore(resume)
        self.train_model: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)

        run_dir = run_dir or unique_run_dir(Path(config.output_dir), config.name)
        self.run_dir = Path(dist.all_gather_objects(str(run_dir))[0])  # rank 0's choice
        self.weights_dir = self.run_dir / "weights"
        if self.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self._run_record()))
            if resume is not None:
                self._take_best_map_from_best_pt()
        self.no_aug_start = max(config.epochs - config.no_aug_epochs, 0)
        self.loader = self._build_loader(mosaic=self.state.epoch < self.no_aug_start)
        self.iters_per_epoch = len(self.loader)
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"{self.data_path}: {len(self.train_set)} training images are fewer than one "
                f"batch of {self.batch_per_process}; lower batch="
            )
        self.tensorboard = self._open_tensorboard()

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        """Train to the last epoch; returns the run directory."""
        config = self.config
        if self.is_main:
            logger.info(
                "training %s on %s: %d train / %d val images, %d classes, input %d, batch %d "
                "(%d process(es)), %d epochs, base lr %.5f, %s on %s, run dir %s",
                self.model_name, self.data_path, len(self.train_set), len(self.val_set),
                len(self.class_names), self.imgsz, config.batch, dist.world_size(),
                config.epochs, self.base_lr, describe_precision(self.amp_dtype), self.device,
                self.run_dir,
            )  # fmt: skip
        for epoch in range(self.state.epoch, config.epochs):
            no_aug = epoch >= self.no_aug_start
            if no_aug and self.loader.mosaic:
                logger.info("epoch %d: final phase, Mosaic/MixUp off, L1 loss on", epoch + 1)
                self.loader.set_mosaic(False)
            started = time.perf_counter()
            row = self.train_one_epoch(epoch, use_l1=no_aug)
            row["epoch_s"] = time.perf_counter() - started
            last = epoch + 1 == config.epochs
            if (epoch + 1) % config.eval_interval == 0 or last:
                row.update(self.evaluate())
            self.state.epoch = epoch + 1
            self.state.history.append(row)
            self._save_epoch(row, last)
        if self.is_main:
            self._final_plots()
        dist.barrier()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self.run_dir

    def train_one_epoch(self, epoch: int, use_l1: bool) -> dict[str, Any]:
        config = self.config
        self.train_model.train()
        self.loader.set_epoch(epoch)
        size_rng = np.random.default_rng([config.seed, epoch])  # same on every rank
        size, bounds = self.imgsz, config.multiscale_bounds(self.imgsz)
        sums: dict[str, float] = defaultdict(float)
        images_seen, started = 0, time.perf_counter()
        progress = EpochProgress(
            f"epoch {epoch + 1}/{config.epochs}", self.iters_per_epoch, enabled=self.is_main
        )
        lr = self.base_lr
        data_wait, asked = 0.0, time.perf_counter()  # time blocked on the loader for a batch
        for i, batch in enumerate(self.loader):
            data_wait += time.perf_counter() - asked
            iteration = epoch * self.iters_per_epoch + i
            lr = self._set_lr(iteration)
            if bounds is not None and not use_l1 and i % config.multiscale_interval == 0:
                size = 32 * int(size_rng.integers(bounds[0] // 32, bounds[1] // 32 + 1))
            batch = batch.to(self.device)
            batch = batch._replace(images=batch.images.float())  # uint8 on GPU: 4x less to copy
            if size != batch.images.shape[-1]:
                batch = resize_batch(batch, size)
            losses = self.train_step(batch, use_l1)
            self.state.iteration = iteration + 1
            for key in LOSS_TERMS:
                sums[key] += losses[key]
            images_seen += batch.images.shape[0] * dist.world_size()
            rate = images_seen / max(time.perf_counter() - started, 1e-9)
            progress.update(partial(self._postfix, losses, lr, rate, epoch, i))
            asked = time.perf_counter()
        means = {k: v / max(self.iters_per_epoch, 1) for k, v in sums.items()}
        means = dist.reduce_mean(means, self.device)
        elapsed = time.perf_counter() - started
        row: dict[str, Any] = {"epoch": epoch + 1, "iteration": self.state.iteration, "lr": lr}
        row.update(means)
        row["images_per_s"] = images_seen / max(elapsed, 1e-9)
        row["data_wait_s"] = data_wait
        progress.close(
            f"{_loss_terms(means)} lr {lr:.2e} {row['images_per_s']:.1f} img/s {elapsed:.1f} s"
        )
        return row

    def train_step(self, batch, use_l1: bool) -> dict[str, float]:
        """One optimizer step on one batch (already on the device); returns the loss terms."""
        images, boxes, labels = batch
        images = images.contiguous(memory_format=self.memory_format)
        amp_on = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp_on):
            maps = self.train_model(images)
        losses = self.loss_fn([m.float() for m in maps], boxes, labels, use_l1=use_l1)
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(
                f"loss is {losses['total'].item()} at iteration {self.state.iteration}; "
                "lower lr_per_64 or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self) -> dict[str, float]:
        """COCO mAP of the EMA weights on the validation split (all ranks take part)."""
        model = self.eval_model
        predictions = predict_split(
            model,
            self.val_set,
            self.imgsz,
            self.device,
            batch_size=self.config.eval_batch,
            workers=self.workers,
            conf_thres=self.config.eval_conf,
            iou_thres=self.config.eval_nms,
        )
        if not self.is_main:
            return {}
        result = evaluate_predictions(predictions, self.val_set)
        self.last_predictions, self.last_result = predictions, result
        logger.info("val mAP %.4f  mAP50 %.4f", result.mAP, result.mAP50)
        return {"mAP": result.mAP, "mAP50": result.mAP50}

    # ------------------------------------------------------------------ pieces
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.ema if self.ema is not None else self.model

    def _build_loader(self, mosaic: bool):
        sampler = None
        if self.distributed:
            sampler = DistributedSampler(self.train_set, shuffle=True, seed=self.config.seed)
        return build_train_loader(
            self.train_set,
            imgsz=self.imgsz,
            batch_size=self.batch_per_process,
            augment=self.config.augment,
            mosaic=mosaic,
            workers=self.workers,
            seed=self.config.seed,
            sampler=sampler,
            float_images=self.device.type != "cuda",
        )

    def _cpu_budget(self, world: int) -> tuple[int, int]:
        """Loader workers and torch threads: the config's, else chosen from the usable cores
        shared by this node's processes (``detector.training.resources``)."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        plan = cpu_plan(processes=local, accelerator=self.device.type != "cpu")
        workers = self.config.workers if self.config.workers is not None else plan.workers
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
            threads = self.config.threads
        else:
            threads = apply_threads(plan.threads)
        if self.is_main:
            logger.info(
                "%d usable CPU core(s) per process: %d torch thread(s), %d loader worker(s)",
                plan.cpus, threads, workers,
            )  # fmt: skip
        return workers, threads

    def _set_lr(self, iteration: int) -> float:
        config = self.config
        lr = lr_at(
            iteration,
            self.iters_per_epoch,
            config.epochs,
            self.base_lr,
            warmup_epochs=config.warmup_epochs,
            warmup_lr_start=config.warmup_lr_start,
            no_aug_epochs=config.no_aug_epochs,
            min_lr_ratio=config.min_lr_ratio,
        )
        set_lr(self.optimizer, lr)
        return lr

    def _postfix(self, losses: dict[str, float], lr: float, rate: float, epoch: int, i: int) -> str:
        done = epoch * self.iters_per_epoch + i + 1
        remaining = self.config.epochs * self.iters_per_epoch - done
        seconds_per_iter = self.batch_per_process * dist.world_size() / max(rate, 1e-9)
        eta = remaining * seconds_per_iter
        return f"{_loss_terms(losses)} lr {lr:.2e} {rate:.1f} img/s ETA {_format_duration(eta)}"

    def _meta(self) -> dict[str, Any]:
        return checkpoint_meta(self.model_name, self.class_names, self.imgsz)

    def _run_record(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "data": str(self.data_path.resolve()),
            "train": to_mapping(self.config),
        }

    def _checkpoint(self) -> dict[str, Any]:
        record = self._run_record()
        return {
            "model": self.eval_model.state_dict(),
            "train_model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "best_map": self.state.best_map,
            "history": self.state.history,
            "rng": rng_state(),
            "meta": self._meta(),
            "model_name": record["model"],
            "data": record["data"],
            "train_config": record["train"],
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["train_model"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.updates = int(ckpt.get("ema_updates", 0))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState(
            epoch=int(ckpt["epoch"]),
            iteration=int(ckpt["iteration"]),
            best_map=float(ckpt.get("best_map", -1.0)),
            history=list(ckpt.get("history", [])),
        )
        restore_rng_state(ckpt.get("rng", {}))
        logger.info("resumed after epoch %d (iteration %d)", self.state.epoch, self.state.iteration)

    def _take_best_map_from_best_pt(self) -> None:
        """On resume: ``best_map`` is at least the mAP ``best.pt`` was saved with. ``best.pt``
        is written before ``last.pt``, so a kill between the two (or a ``save_interval`` above
        1) leaves ``last.pt`` with an older, lower ``best_map``; without this a re-run epoch
        that scores between the two would overwrite the better ``best.pt``."""
        path = self.weights_dir / "best.pt"
        if not path.is_file():
            return
        try:
            saved = float(read_checkpoint(path).get("best_map", -1.0))
        except CheckpointError as exc:  # written atomically, so only if damaged since
            logger.warning("%s: unreadable (%s); keeping last.pt's best mAP", path, exc)
            return
        if saved > self.state.best_map:
            logger.info(
                "best.pt holds a model of mAP %.4f, newer than last.pt's best (%.4f); a later "
                "epoch must beat %.4f to replace it", saved, self.state.best_map, saved,
            )  # fmt: skip
            self.state.best_map = saved

    def _save_epoch(self, row: dict[str, Any], last: bool) -> None:
        """Write ``best.pt`` (if this epoch beat ``best_map``) and then ``last.pt``, both
        recording the raised ``best_map``: any prefix of these writes is consistent."""
        if not self.is_main:
            return
        improved = "mAP" in row and row["mAP"] > self.state.best_map
        if improved:
            self.state.best_map = row["mAP"]
        ckpt = self._checkpoint()
        if improved:
            save_atomic(ckpt, self.weights_dir / "best.pt")
        if (self.state.epoch % self.config.save_interval == 0) or last:
            save_atomic(ckpt, self.weights_dir / "last.pt")
        self._write_metrics()
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, row["epoch"])
        if self.config.plots:
            from detector.eval.plots import plot_metrics

            plot_metrics(self.run_dir / "metrics.csv", self.run_dir / "metrics.png")

    def _write_metrics(self) -> None:
        path = self.run_dir / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in self.state.history:
                writer.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})
        tmp.replace(path)

    def _final_plots(self) -> None:
        result = getattr(self, "last_result", None)
        if not self.config.plots or result is None:
            return
        from detector.eval import plots

        try:
            plots.plot_pr_curves(result, self.class_names, self.run_dir / "pr_curves.png")
            gt = self.val_set.coco_ground_truth()
            matrix = plots.confusion_matrix_from_coco(
                self.last_predictions.detections,
                self.last_predictions.image_ids,
                gt,
                self.val_set.category_ids,
            )
            plots.plot_confusion_matrix(
                matrix, self.class_names, self.run_dir / "confusion_matrix.png"
            )
            plots.plot_predictions_grid_from_dataset(
                self.val_set,
                self.last_predictions,
                self.class_names,
                self.run_dir / "val_predictions.png",
            )
        except Exception:  # plots must never lose a finished run
            logger.exception("could not draw the final plots")

    def _open_tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _loss_terms(losses: dict[str, float]) -> str:
    """``total 6.849 iou 3.230 obj 2.628 cls 0.991 l1 0.000``: the loss terms shown in progress."""
    return " ".join(f"{k} {losses[k]:.3f}" for k in ("total", "iou", "obj", "cls", "l1"))


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
