"""Classifier training as IRN's ``train_cam``: multilabel soft-margin loss, SGD with poly
decay and the classifier at 10x the learning rate, random long-side resize, flip, crop.

Deterministic on CPU for a given seed: every random choice derives from (seed, epoch, index),
so a run resumed from an epoch checkpoint ends with the same weights as an unbroken one.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plabel_kit.datasets import Dataset, load_image
from plabel_kit.progress import quiet, track

from .infer import normalise


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    crop_size: int
    resize_long: tuple[int, int]
    lr: float
    weight_decay: float
    momentum: float
    poly_power: float
    classifier_lr_mult: float
    seed: int
    num_workers: int


class TrainingImages(torch.utils.data.Dataset):
    """(normalised crop [3, S, S], multi-hot tags [C-1]) for one epoch's random draws."""

    def __init__(self, dataset: Dataset, config: TrainConfig):
        self.samples = dataset.samples
        self.num_fg = dataset.num_classes - 1
        self.config = config
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        image = load_image(sample.image_path, sample.id)
        image = _augment(image, rng, self.config.resize_long, self.config.crop_size)
        target = torch.zeros(self.num_fg)
        for c in sample.classes:
            target[c - 1] = 1
        return image, target


def _augment(image: np.ndarray, rng, resize_long, crop: int) -> torch.Tensor:
    """Random long-side resize, horizontal flip, random crop (zero-padded, as IRN)."""
    import cv2

    height, width = image.shape[:2]
    target = rng.integers(resize_long[0], resize_long[1] + 1)
    scale = target / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    tensor = normalise(np.ascontiguousarray(image))
    _, h, w = tensor.shape
    out = torch.zeros(3, crop, crop)
    top = rng.integers(0, max(h - crop, 0) + 1)
    left = rng.integers(0, max(w - crop, 0) + 1)
    dst_top = rng.integers(0, max(crop - h, 0) + 1)
    dst_left = rng.integers(0, max(crop - w, 0) + 1)
    ch, cw = min(crop, h), min(crop, w)
    out[:, dst_top:dst_top + ch, dst_left:dst_left + cw] = tensor[:, top:top + ch, left:left + cw]
    return out


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1 - step / total) ** power


def train(model, dataset: Dataset, config: TrainConfig, workdir: Path, device: torch.device,
          log=print) -> None:
    """Train ``model`` in place; ``workdir/latest.pth`` after every epoch allows resume."""
    model.to(device)
    backbone_params, new_params = model.parameter_groups()
    optimizer = torch.optim.SGD([
        {"params": backbone_params, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": new_params, "lr": config.lr * config.classifier_lr_mult,
         "weight_decay": config.weight_decay},
    ], lr=config.lr, momentum=config.momentum)

    def loss_of(net, batch):
        images, target = batch
        return F.multilabel_soft_margin_loss(net(images.to(device)), target.to(device))

    run_epochs(model, TrainingImages(dataset, config), optimizer, loss_of, epochs=config.epochs,
               batch_size=config.batch_size, poly_power=config.poly_power, seed=config.seed,
               num_workers=config.num_workers, workdir=workdir, device=device, label="CAM",
               what="classifier", log=log)


def run_epochs(model, items, optimizer, loss_of, *, epochs: int, batch_size: int, poly_power: float, seed: int,
               num_workers: int, workdir: Path, device: torch.device, label: str, what: str, log=print) -> None:
    """The epoch loop the CAM, IRNet and AffinityNet trainers share, on ``model`` (already on
    ``device``) in place.

    ``items``: a torch Dataset whose ``epoch`` attribute seeds its random draws; batches of
    ``batch_size`` split over torchrun ranks (DDP), ordered by (seed, epoch); ``loss_of(net,
    batch)`` -> scalar loss; ``optimizer``: SGD whose groups decay by poly from their starting
    lr. Rank 0 writes ``workdir/latest.pth`` (model, optimizer, epoch) after every epoch and a
    rerun resumes from it; progress and losses as "{label} epoch e/E", the resume as
    "resuming {what} training after epoch N"."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    per_rank = max(1, batch_size // world)
    sampler = torch.utils.data.DistributedSampler(items, world, rank, shuffle=True, seed=seed,
                                                  drop_last=True) if world > 1 else None
    steps_per_epoch = len(items) // (per_rank * world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(items)} images are fewer than one batch of {batch_size}")
    total_steps = steps_per_epoch * epochs
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start_epoch = 0
    latest = workdir / "latest.pth"
    if latest.exists():
        state = torch.load(latest, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        log(f"resuming {what} training after epoch {start_epoch} ({latest})")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, epochs):
        items.epoch = epoch
        order_rng = torch.Generator().manual_seed(seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            items, batch_size=per_rank, sampler=sampler, shuffle=sampler is None, generator=order_rng,
            drop_last=True, num_workers=num_workers, persistent_workers=False)
        net.train()
        losses = []
        show = rank == 0 and not quiet()
        for step_in_epoch, batch in enumerate(track(loader, f"{label} epoch {epoch + 1}/{epochs}",
                                                    total=steps_per_epoch, enabled=show)):
            step = epoch * steps_per_epoch + step_in_epoch
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = poly_lr(base, step, total_steps, poly_power)
            loss = loss_of(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if not math.isfinite(float(np.mean(losses))):
            raise FloatingPointError(f"{what} training diverged (loss is not finite); lower lr")
        if rank == 0:
            log(f"{label} epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}")
            tmp = workdir / f".latest.pth.{os.getpid()}"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1}, tmp)
            os.replace(tmp, latest)
        if world > 1:
            torch.distributed.barrier()
