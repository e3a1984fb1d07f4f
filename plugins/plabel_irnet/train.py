"""Affinity training shared by IRNet's boundary branch and AffinityNet: SGD with poly decay
(IRN's / PSA's schedule) through the CAM trainer's epoch loop (``plabel_kit.toolkit.training.run_epochs``:
deterministic per (seed, epoch, index), resumable from ``<workdir>/latest.pth``, DDP), with
the pair loss of ``pairs.affinity_loss`` (DDP-aware)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float
    poly_power: float
    seed: int
    num_workers: int


def train_affinity(model, affinity_of, param_groups, items, schedule: Schedule, workdir: Path, device,
                   name: str, log) -> None:
    """Train ``model`` in place. ``affinity_of(net, images)`` -> affinities [B, D, h, w];
    ``param_groups``: SGD groups with a "lr" each (decayed by poly from there)."""
    from plabel_kit.toolkit.training import run_epochs

    from .pairs import affinity_loss

    model.to(device)
    optimizer = torch.optim.SGD(param_groups, lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)

    def loss_of(net, batch):
        images, labels = batch
        return affinity_loss(affinity_of(net, images.to(device)), labels.to(device))[0]

    run_epochs(model, items, optimizer, loss_of, epochs=schedule.epochs, batch_size=schedule.batch_size,
               poly_power=schedule.poly_power, seed=schedule.seed, num_workers=schedule.num_workers,
               workdir=workdir, device=device, label=name, what=name, log=log)
