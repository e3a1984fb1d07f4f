"""Classifier training as IRN's ``train_cam``: multilabel soft-margin loss, SGD with poly
decay and the classifier at 10x the learning rate, random long-side resize, flip, crop.

Deterministic on CPU for a given seed: every random choice derives from (seed, epoch, index),
so a run resumed from an epoch checkpoint ends with the same weights as an unbroken one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plabel_kit.datasets import Dataset, load_image
from plabel_kit.toolkit.augment import random_resize_flip_crop
from plabel_kit.toolkit.training import run_epochs


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
        image = random_resize_flip_crop(image, rng, self.config.resize_long, self.config.crop_size)
        target = torch.zeros(self.num_fg)
        for c in sample.classes:
            target[c - 1] = 1
        return image, target


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


