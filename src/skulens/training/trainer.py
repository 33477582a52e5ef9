"""The train loop: AdamW, warmup + cosine, label smoothing, EMA, early stopping, resume.

The run folder is written as training goes: ``log.csv`` and ``curves.png`` every epoch, the best
weights (``model.safetensors`` + ``config.json``) whenever validation improves, and the resume
state (``last.safetensors`` + ``train_state.json``) after every epoch and on Ctrl-C.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from skulens.data.datasets import ImageDataset, Sample, stratified_split
from skulens.data.loading import DecodedImages
from skulens.data.transforms import Preprocessing, build_train_transform
from skulens.engines import TorchEngine
from skulens.errors import CheckpointError, DatasetError, SkulensError
from skulens.evaluation.inference import OutputCollector, dataset_probabilities
from skulens.evaluation.plots import plot_training_curves
from skulens.models.attributes import attribute_loss, attribute_metrics, forward_all
from skulens.models.embedding import model_logits
from skulens.models.registry import FIXED_INPUT_SIZE, NATIVE_SIZES, ModelSpec, create_model, default_normalization
from skulens.runs import (
    CONFIG_FILE,
    LAST_WEIGHTS_FILE,
    TRAIN_STATE_FILE,
    RunConfig,
    RunFolder,
    flatten_optimizer_state,
    unflatten_optimizer_state,
)
from skulens.runtime import autocast, prepare_model, to_device
from skulens.training import distributed
from skulens.training.attribute_log import log_attribute_epoch, tune_run_thresholds
from skulens.training.config import TrainConfig
from skulens.training.mixing import mix_batch, mixed_loss
from skulens.training.tree_loss import TreeLoss

log = logging.getLogger(__name__)
LOG_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


@dataclass
class TrainResult:
    run_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    skipped_images: int
    train_seconds: float
    images_per_epoch: int  # photos one epoch trains on, summed over torchrun processes


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_leading_stages(model: nn.Module, n_stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``n_stages`` blocks of a timm EfficientNet-style model."""
    if n_stages <= 0:
        return []
    if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
        raise SkulensError(f"--freeze-stages works with EfficientNet-style models, not {type(model).__name__}")
    frozen = [model.conv_stem, model.bn1] + list(model.blocks[:n_stages])
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


def split_train_val(
    dataset: ImageDataset, seed: int, train_splits: list[str] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples. ``train_splits`` other than ["train"] (e.g. train + val for
    a final model) train on all of them; validation still runs on val, then seen in training."""
    splits = list(train_splits or ["train"])
    if "test" in splits:
        raise SkulensError("training on the test split would make every test figure meaningless")
    unknown = [s for s in splits if s not in ("train", "val")]
    if unknown:
        raise SkulensError(f"unknown training split(s) {', '.join(unknown)}: use train, or train,val")
    train = [s for split in splits for s in dataset.split(split)]
    val = dataset.split("val")
    if not train:
        raise DatasetError(f"{dataset.root}: no training images in split(s) {', '.join(splits)}")
    if "val" in splits:
        return train, val
    if not val:
        # No validation split: hold out a stratified 10% of train for early stopping.
        per_class: dict[int, list] = {}
        for s in train:
            per_class.setdefault(s.label, []).append(s.path)
        resplit = stratified_split(per_class, seed, 0.1, 0.0)
        by_path = {s.path: s for s in train}  # keeps each sample's attribute targets
        train = [replace(by_path[s.path], split="train") for s in resplit if s.split == "train"]
        val = [replace(by_path[s.path], split="val") for s in resplit if s.split == "val"]
        if not val:
            val = train[:1]
    return train, val


def loader_workers(requested: int | None, device: torch.device, world_size: int = 1) -> int:
    if requested is not None:
        if requested < 0:
            raise SkulensError(f"workers must be 0 or more, not {requested}")
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // max(1, world_size) - 1))


def balanced_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    for group in by_class.values():
        rng.shuffle(group)
    out: list[Sample] = []
    while len(out) < limit and any(by_class.values()):
        for group in by_class.values():
            if group and len(out) < limit:
                out.append(group.pop())
    return out


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class _Progress:
    """Where a run stands: what train_state.json keeps, so --resume carries on from it."""

    epoch: int = 0  # the epoch under way, from 0
    batch: int = 0  # batches of it already trained
    step: int = 0  # optimiser steps since the start (the learning-rate schedule's clock)
    best_acc: float = -1.0
    best_epoch: int = -1
    stale: int = 0  # epochs since validation accuracy last improved


@dataclass
class _FitSetup:
    """What Trainer.fit sets up once and the epochs use."""

    spec: ModelSpec
    pre: Preprocessing
    device: torch.device
    train_data: DecodedImages
    val_samples: list[Sample]
    batch_size: int  # validation batch size
    rank_batch: int  # this process's training batch size
    n_train: int  # training photos per rank, the same on every rank
    workers: int
    model: nn.Module
    frozen: list[nn.Module]
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    total_steps: int
    warmup_steps: int
    run_config: RunConfig
    log_path: Path


class Trainer:
    """Fit a classifier on an :class:`ImageDataset` and write a run folder."""

    def __init__(self, config: TrainConfig, dataset: ImageDataset, out: str | Path, resume: bool = False):
        self.cfg = config
        self.dataset = dataset
        self.run_dir = Path(out)
        self.resume = resume
        self._val_attribute_metrics: dict = {}  # {"val_attributes": ...} of the latest validation

    # -- setup -------------------------------------------------------------------------------
    def _spec(self) -> ModelSpec:
        cfg = self.cfg
        img_size = cfg.img_size or NATIVE_SIZES.get(cfg.model, 224)
        mean, std = default_normalization(cfg.model, cfg.in_chans)
        return ModelSpec(
            name=cfg.model,
            num_classes=len(self.dataset.classes),
            img_size=img_size,
            in_chans=cfg.in_chans,
            mean=mean,
            std=std,
            embedding_dim=cfg.embedding_dim,
            attributes=self.dataset.attributes,
            drop_path_rate=cfg.drop_path,
        )

    def _class_weights(self, labels: list[int]) -> torch.Tensor | None:
        if not self.cfg.class_weighting:
            return None
        counts = np.bincount(labels, minlength=len(self.dataset.classes)).astype(np.float64)
        counts = np.asarray(self.dist.sum(counts.tolist()))  # every rank weighs by the whole training set
        weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0)
        return torch.tensor(weights, dtype=torch.float32)

    def fit(self) -> TrainResult:
        self._check_options()
        self._start_process()
        run = self._prepare()
        progress = self._restore_progress(run)
        self._start_log(run)
        start_epoch, start_batch = progress.epoch, progress.batch
        model_call = self.dist.train_forward(run.model)  # model_call(fn, x, y) = fn(model, x, y), DDP when distributed
        mix_rng = random.Random(f"{self.cfg.seed}/{self.dist.rank}/{start_epoch}/{start_batch}")
        started = time.perf_counter()
        try:
            stopped_early = self._train_epochs(run, progress, model_call, mix_rng)
        except KeyboardInterrupt:
            # Save where we are (mid-epoch too), so --resume loses nothing but the batch in flight.
            self._save_progress(run, progress, progress.epoch, progress.batch)
            raise SkulensError(
                f"interrupted at epoch {progress.epoch + 1}, batch {progress.batch}; saved: continue "
                f"with `skulens train DATASET --out {self.run_dir} --resume`"
            ) from None
        train_seconds = time.perf_counter() - started
        self._finish_run(run)
        return TrainResult(
            self.run_dir,
            progress.best_acc,
            progress.best_epoch,
            progress.epoch + 1 - start_epoch,
            stopped_early,
            len(run.train_data.skipped),
            train_seconds,
            run.n_train * self.dist.world_size,
        )

    # -- fit, setting up ---------------------------------------------------------------------
    def _check_options(self) -> None:
        cfg = self.cfg
        if cfg.keep not in ("best", "last"):
            raise SkulensError(f"keep must be 'best' or 'last', not {cfg.keep!r}")
        if not 0 <= cfg.mix_prob <= 1 or cfg.mixup_alpha < 0 or cfg.cutmix_alpha < 0 or not 0 <= cfg.drop_path < 1:
            raise SkulensError("mix-prob must be in [0, 1], the mixup/cutmix alphas >= 0 and drop-path in [0, 1)")
        cfg.augment.check()
        if cfg.tree_loss_weight < 0:
            raise SkulensError("tree-loss-weight must be 0 (off) or more")
        if "val" in cfg.train_splits and (cfg.keep != "last" or cfg.patience):
            # val is then seen in training: it cannot pick an epoch or stop the run
            log.info("training on %s: keeping the last epoch, no early stopping", "+".join(cfg.train_splits))
            cfg.keep, cfg.patience = "last", 0
        if cfg.mix_prob > 0 and cfg.embedding_dim:
            # the ArcFace margin is applied to one target class per photo; a blend has two
            raise SkulensError("Mixup/CutMix (--mix-prob) cannot train an ArcFace embedding (--embedding-dim)")

    def _start_process(self) -> None:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.dist = distributed.setup(cfg.device)  # this process's place in a torchrun job (or alone)
        if not self.dist.is_main:
            cfg.progress = False

    def _prepare(self) -> _FitSetup:
        """Everything the epochs need. The order matters: the model's initial weights come from the
        random state that seeding left, and a bad run folder must fail before the slow decoding."""
        cfg, device = self.cfg, self.dist.device
        spec = self._spec()
        pre = Preprocessing(
            img_size=spec.img_size, mean=spec.mean, std=spec.std, in_chans=spec.in_chans, resize=cfg.resize
        )
        train_samples, val_samples = self._samples()
        self._check_run_folder()
        train_data = self._decode_train_images(spec, pre, train_samples)
        batch_size, rank_batch = self.dist.split_batch(cfg.batch_size, 32 if device.type == "cuda" else 16)
        n_train = int(self.dist.min(len(train_data)))  # DDP needs the same number of steps on every rank
        workers = loader_workers(cfg.workers, device, self.dist.world_size)
        model, frozen, ema = self._build_model(spec, device)
        optimizer, criterion = self._build_optimizer_and_loss(model, train_data.labels, device)
        steps_per_epoch = len(self._epoch_batches(n_train, rank_batch, 0))
        return _FitSetup(
            spec=spec,
            pre=pre,
            device=device,
            train_data=train_data,
            val_samples=val_samples,
            batch_size=batch_size,
            rank_batch=rank_batch,
            n_train=n_train,
            workers=workers,
            model=model,
            frozen=frozen,
            ema=ema,
            optimizer=optimizer,
            criterion=criterion,
            total_steps=steps_per_epoch * cfg.epochs,
            warmup_steps=max(1, int(cfg.warmup_epochs * steps_per_epoch)),
            run_config=self._run_config(spec, pre),
            log_path=self.run_dir / "log.csv",
        )

    def _samples(self) -> tuple[list[Sample], list[Sample]]:
        """This process's share of the training samples, and the validation samples."""
        cfg = self.cfg
        train_samples, val_samples = split_train_val(self.dataset, cfg.seed, cfg.train_splits)
        if cfg.max_train_images:
            train_samples = balanced_subset(train_samples, cfg.max_train_images, cfg.seed)
        if cfg.catalog_images:
            train_samples = train_samples + [
                Sample(p, label, "train")
                for label, p in self.dataset.catalog_images.items()
                for _ in range(max(1, cfg.catalog_repeats))
            ]
        train_samples = self.dist.shard(train_samples, cfg.seed, key=lambda s: s.label)  # each rank decodes its share
        return train_samples, val_samples

    def _check_run_folder(self) -> None:
        if self.resume and not (self.run_dir / TRAIN_STATE_FILE).is_file():
            raise CheckpointError(f"{self.run_dir}: nothing to resume (no {TRAIN_STATE_FILE})")
        if not self.resume and (self.run_dir / TRAIN_STATE_FILE).is_file():
            raise SkulensError(f"{self.run_dir} already holds a run: use --resume to continue it, or another --out")

    def _decode_train_images(self, spec: ModelSpec, pre: Preprocessing, train_samples: list[Sample]) -> DecodedImages:
        cfg = self.cfg
        cache_side = int(round(spec.img_size * max(1.0, cfg.cache_scale)))
        train_data = DecodedImages(
            train_samples,
            cache_side,
            spec.in_chans,
            build_train_transform(pre, cfg.augment),
            desc="decoding train images",
            progress=cfg.progress,
            attributes=self.dataset.attributes,
            pad_square=pre.resize == "pad",
        )
        if len(train_data) == 0:
            raise DatasetError(f"{self.dataset.root}: none of the {len(train_samples)} training images could be read")
        return train_data

    def _build_model(
        self, spec: ModelSpec, device: torch.device
    ) -> tuple[nn.Module, list[nn.Module], nn.Module | None]:
        """The model on its device, its frozen stages, and the EMA copy (None when off)."""
        cfg = self.cfg
        model = create_model(spec, pretrained=cfg.pretrained, weights=cfg.weights)
        if cfg.sync_bn:
            model = self.dist.sync_batchnorm(model)  # before freezing: frozen layers are then put in eval mode
        frozen = freeze_leading_stages(model, cfg.freeze_stages)
        model = prepare_model(model, device)
        ema = None
        if cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
        return model, frozen, ema

    def _build_optimizer_and_loss(
        self, model: nn.Module, labels: list[int], device: torch.device
    ) -> tuple[torch.optim.Optimizer, nn.Module]:
        cfg = self.cfg
        from timm.optim import param_groups_weight_decay

        params = param_groups_weight_decay(model, cfg.weight_decay)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr)
        class_weights = self._class_weights(labels)
        criterion = nn.CrossEntropyLoss(
            weight=class_weights.to(device) if class_weights is not None else None, label_smoothing=cfg.label_smoothing
        )
        if cfg.tree_loss_weight > 0 and self.dataset.tree is not None and self.dataset.tree.depth > 1:
            criterion = TreeLoss(self.dataset.tree, cfg.tree_loss_weight, criterion).to(device)
        return optimizer, criterion

    def _run_config(self, spec: ModelSpec, pre: Preprocessing) -> RunConfig:
        return RunConfig(
            model=spec,
            classes=self.dataset.classes,
            preprocessing=pre,
            tree=self.dataset.tree,
            train_args={
                **self.cfg.to_dict(),
                "dataset": str(self.dataset.source or self.dataset.root),
                "csv_columns": self.dataset.csv_columns,
                "layout": self.dataset.layout,
                "train_size": spec.img_size,
            },
        )

    def _restore_progress(self, run: _FitSetup) -> _Progress:
        """A fresh start, or (--resume) the saved run's weights, optimiser, random state and place."""
        if not self.resume:
            return _Progress()
        state = self._load_resume_state(run.model, run.ema, run.optimizer)
        progress = _Progress(
            epoch=state["epoch"],
            batch=state["batch"],
            step=state["step"],
            best_acc=state["best_acc"],
            best_epoch=state["best_epoch"],
            stale=state["stale"],
        )
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        log.info("resuming %s at epoch %d, batch %d", self.run_dir, progress.epoch + 1, progress.batch)
        return progress

    def _start_log(self, run: _FitSetup) -> None:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run appends to its log; the header is written once.
        if self.dist.is_main and (not self.resume or not run.log_path.is_file()):
            with run.log_path.open("w", newline="") as handle:
                csv.DictWriter(handle, LOG_FIELDS).writeheader()

    # -- fit, the epochs ---------------------------------------------------------------------
    def _train_epochs(self, run: _FitSetup, progress: _Progress, model_call, mix_rng: random.Random) -> bool:
        """Train from ``progress`` to the last epoch; True when early stopping ended the run."""
        cfg = self.cfg
        start_epoch, start_batch = progress.epoch, progress.batch
        for epoch in range(start_epoch, cfg.epochs):
            progress.epoch = epoch
            # a resumed run skips the batches its first epoch already trained on
            progress.batch = start_batch if epoch == start_epoch else 0
            t0 = time.perf_counter()
            lr, totals = self._train_epoch(run, progress, model_call, mix_rng)
            eval_model, val_loss, val_acc = self._validate_epoch(run)
            self._log_epoch(run, epoch, lr, totals, val_loss, val_acc, t0)
            self._keep_if_chosen(run, progress, eval_model, val_loss, val_acc)
            progress.batch = 0
            self._save_progress(run, progress, epoch + 1, 0)
            if cfg.patience and progress.stale >= cfg.patience:
                log.info("early stopping: no better validation accuracy for %d epochs", progress.stale)
                return True
        return False

    def _train_epoch(
        self, run: _FitSetup, progress: _Progress, model_call, mix_rng: random.Random
    ) -> tuple[float, list]:
        """One pass over this rank's batches from ``progress.batch`` on: the last learning rate, and
        [loss sum, correct, photos seen] summed over ranks."""
        cfg = self.cfg
        run.model.train()
        for module in run.frozen:
            module.eval()  # frozen stages keep their BatchNorm statistics
        loss_sum, correct, seen = 0.0, 0, 0
        lr = lr_at(progress.step, run.total_steps, run.warmup_steps, cfg.lr)
        self.dist.seed_epoch(cfg.seed, progress.epoch)
        batches = self._epoch_batches(run.n_train, run.rank_batch, progress.epoch)
        loader = DataLoader(
            run.train_data,
            batch_sampler=batches[progress.batch :],
            num_workers=run.workers,
            pin_memory=run.device.type == "cuda",
        )
        bar = tqdm(
            loader,
            desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not cfg.progress,
            dynamic_ncols=True,
            initial=progress.batch,
            total=len(batches),
        )
        for x, y, *attribute_targets in bar:
            lr = lr_at(progress.step, run.total_steps, run.warmup_steps, cfg.lr)
            loss, logits, y = self._train_step(run, model_call, mix_rng, lr, x, y, attribute_targets)
            if run.ema is not None:
                run.ema.update(run.model, step=progress.step)
            progress.step += 1
            progress.batch += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}")
        return lr, self.dist.sum([loss_sum, correct, seen])

    def _train_step(
        self, run: _FitSetup, model_call, mix_rng: random.Random, lr: float, x, y, attribute_targets: list
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step; the loss, the logits and the labels (on the device)."""
        cfg, device = self.cfg, run.device
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        x, y = to_device(x, device), y.to(device)
        x, mix = mix_batch(x, cfg.mix_prob, cfg.mixup_alpha, cfg.cutmix_alpha, mix_rng)
        with autocast(device):
            if not attribute_targets:
                logits = model_call(model_logits, x, y)
                loss = mixed_loss(lambda y_: run.criterion(logits.float(), y_), mix, y)
            else:
                logits, attribute_out = model_call(forward_all, x, y)
                targets = {k: v.to(device) for k, v in attribute_targets[0].items()}
                loss = mixed_loss(
                    lambda y_, t_: (
                        run.criterion(logits.float(), y_)
                        + cfg.attribute_loss_weight
                        * attribute_loss(attribute_out, t_, run.spec.attributes, cfg.label_smoothing)
                    ),
                    mix,
                    y,
                    targets,
                )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        return loss, logits, y

    def _validate_epoch(self, run: _FitSetup) -> tuple[nn.Module, float, float]:
        """The model that would be kept (the EMA's when on), and its validation loss and accuracy."""
        self.dist.broadcast_state(run.model, run.ema.module if run.ema is not None else None)
        eval_model = run.ema.module if run.ema is not None else run.model
        # Rank 0 validates on the whole split (the number one process would get) and shares it.
        val_loss, val_acc = (
            self._validate(eval_model, run.val_samples, run.run_config, run.device, run.batch_size)
            if self.dist.is_main
            else (0.0, 0.0)
        )
        val_loss, val_acc = self.dist.sum([val_loss, val_acc])
        return eval_model, val_loss, val_acc

    def _log_epoch(
        self, run: _FitSetup, epoch: int, lr: float, totals: list, val_loss: float, val_acc: float, t0: float
    ) -> None:
        """The epoch's row in log.csv, the curves, the attribute log and the log line."""
        loss_sum, correct, seen = totals
        row = {
            "epoch": epoch + 1,
            "lr": f"{lr:.6g}",
            "train_loss": f"{loss_sum / max(seen, 1):.5f}",
            "train_acc": f"{correct / max(seen, 1):.5f}",
            "val_loss": f"{val_loss:.5f}",
            "val_acc": f"{val_acc:.5f}",
            "seconds": f"{time.perf_counter() - t0:.1f}",
        }
        if self.dist.is_main:
            with run.log_path.open("a", newline="") as handle:
                csv.DictWriter(handle, LOG_FIELDS).writerow(row)
            plot_training_curves(run.log_path, self.run_dir / "curves.png")
        if self._val_attribute_metrics and self.dist.is_main:
            log_attribute_epoch(self.run_dir, epoch + 1, self._val_attribute_metrics["val_attributes"])
        log.info(
            "epoch %d: train loss %s, val loss %.4f, val acc %.4f", epoch + 1, row["train_loss"], val_loss, val_acc
        )

    def _keep_if_chosen(
        self, run: _FitSetup, progress: _Progress, eval_model: nn.Module, val_loss: float, val_acc: float
    ) -> None:
        """Track the best epoch; write the weights when --keep says this epoch's are the ones to keep."""
        improved = val_acc > progress.best_acc
        if improved:
            progress.best_acc, progress.best_epoch, progress.stale = val_acc, progress.epoch + 1, 0
        else:
            progress.stale += 1
        if (improved or self.cfg.keep == "last") and self.dist.is_main:
            run.run_config.metrics = {
                "val_top1": val_acc,
                "val_loss": val_loss,
                "epoch": progress.epoch + 1,
                "best_val_epoch": progress.best_epoch,
                "kept": self.cfg.keep,
                **self._val_attribute_metrics,
            }
            RunFolder(self.run_dir).save(run.run_config, eval_model.state_dict())

    def _save_progress(self, run: _FitSetup, progress: _Progress, epoch: int, batch: int) -> None:
        self._save_resume_state(
            run.model,
            run.ema,
            run.optimizer,
            epoch,
            batch,
            progress.step,
            progress.best_acc,
            progress.best_epoch,
            progress.stale,
        )

    # -- fit, the end ------------------------------------------------------------------------
    def _finish_run(self, run: _FitSetup) -> None:
        """Choices made on validation once the weights are final: the test-time size, the attribute thresholds."""
        cfg = self.cfg
        if cfg.eval_sizes and self.dist.is_main:
            self._choose_eval_size(run.val_samples, run.run_config, run.device, run.batch_size)
        if any(a["kind"] == "sigmoid" for a in run.spec.attributes.values()) and self.dist.is_main:
            tune_run_thresholds(self.run_dir, run.val_samples, run.device, run.batch_size, cfg.progress)
        if self.dist.is_main:
            RunFolder(self.run_dir).write_card()
        self.dist.barrier()  # every rank returns once rank 0 has finished the run folder

    # -- helpers -----------------------------------------------------------------------------
    def _validate(self, model, samples, run_config: RunConfig, device, batch_size) -> tuple[float, float]:
        predict = OutputCollector(TorchEngine(model, run_config, device))
        probs, labels, kept, _ = dataset_probabilities(
            predict,
            samples,
            run_config.preprocessing,
            batch_size=batch_size,
            progress=self.cfg.progress,
            desc="validating",
        )
        if len(labels) == 0:
            return float("nan"), 0.0
        if self.dataset.attributes:
            self._val_attribute_metrics = {
                "val_attributes": attribute_metrics(
                    predict.attribute_probs(), [samples[i] for i in kept], self.dataset.attributes
                )
            }
        nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
        return float(nll), float(np.mean(probs.argmax(1) == labels))

    def _choose_eval_size(self, val_samples, run_config: RunConfig, device, batch_size) -> None:
        """Test-time resolution chosen on validation (train/test resolution discrepancy, FixRes)."""
        model, config = RunFolder(self.run_dir).load_model(device)
        engine = TorchEngine(prepare_model(model, device), config, device)
        scores = {}
        sizes = set(self.cfg.eval_sizes) | {config.preprocessing.img_size}
        if config.model.name in FIXED_INPUT_SIZE:
            sizes = {config.model.img_size}
        for size in sorted(sizes):
            probs, labels, _, _ = dataset_probabilities(
                engine.probabilities,
                val_samples,
                config.preprocessing,
                img_size=size,
                batch_size=batch_size,
                progress=self.cfg.progress,
                desc=f"validating at {size}px",
            )
            scores[size] = float(np.mean(probs.argmax(1) == labels)) if len(labels) else 0.0
        best = max(scores, key=lambda s: (scores[s], -abs(s - config.preprocessing.img_size)))
        config.preprocessing.img_size = best
        config.metrics["val_top1_by_eval_size"] = {str(k): v for k, v in scores.items()}
        config.metrics["val_top1"] = scores[best]
        RunFolder(self.run_dir).write_json(CONFIG_FILE, config.to_dict())
        log.info("eval size chosen on validation: %d px (%s)", best, scores)

    def _epoch_batches(self, n: int, batch_size: int, epoch: int) -> list[list[int]]:
        """The epoch's shuffled batches, a pure function of (seed, epoch) so a resume can skip ahead."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)).tolist()
        usable = n - n % batch_size if n > batch_size else n  # drop the last partial batch (BatchNorm)
        return [order[i : i + batch_size] for i in range(0, usable, batch_size)]

    def _save_resume_state(self, model, ema, optimizer, epoch, batch, step, best_acc, best_epoch, stale) -> None:
        if not self.dist.is_main:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
        opt_tensors, opt_plain = flatten_optimizer_state(optimizer.state_dict())
        tensors.update(opt_tensors)
        folder = RunFolder(self.run_dir)
        folder.save_tensors(LAST_WEIGHTS_FILE, tensors)
        folder.write_json(
            TRAIN_STATE_FILE,
            {
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "stale": stale,
                "optimizer": opt_plain,
                "torch_rng": torch.get_rng_state().tolist(),
                "config": self.cfg.to_dict(),
            },
        )

    def _load_resume_state(self, model, ema, optimizer) -> dict:
        folder = RunFolder(self.run_dir)
        state = folder.read_json(TRAIN_STATE_FILE)
        tensors = folder.state_dict(LAST_WEIGHTS_FILE)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            if ema_state:
                ema.module.load_state_dict(ema_state)
        optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
        return state


def train(config: TrainConfig, dataset: ImageDataset, out: str | Path, resume: bool = False) -> TrainResult:
    return Trainer(config, dataset, out, resume).fit()
