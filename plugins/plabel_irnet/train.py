"""Affinity training shared by IRNet's boundary branch and AffinityNet: SGD with poly decay
(IRN's / PSA's schedule), deterministic per (seed, epoch, index), resumable from the epoch
checkpoint ``<workdir>/latest.pth``, DDP-aware (see ``pairs.affinity_loss``)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plabel_kit.progress import quiet, track


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
    from plabel_cam.train import poly_lr

    from .pairs import affinity_loss

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(schedule.seed)
    per_rank = max(1, schedule.batch_size // world)
    sampler = torch.utils.data.DistributedSampler(items, world, rank, shuffle=True, seed=schedule.seed,
                                                  drop_last=True) if world > 1 else None
    steps_per_epoch = len(items) // (per_rank * world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(items)} images are fewer than one batch of {schedule.batch_size}")
    total_steps = steps_per_epoch * schedule.epochs
    model.to(device)
    optimizer = torch.optim.SGD(param_groups, lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start_epoch, latest = 0, workdir / "latest.pth"
    if latest.exists():
        state = torch.load(latest, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        log(f"resuming {name} training after epoch {start_epoch} ({latest})")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start_epoch, schedule.epochs):
        items.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            items, batch_size=per_rank, sampler=sampler, shuffle=sampler is None, drop_last=True,
            generator=torch.Generator().manual_seed(schedule.seed * 1000 + epoch),
            num_workers=schedule.num_workers)
        net.train()
        losses = []
        show = rank == 0 and not quiet()
        for step_in_epoch, (images, labels) in enumerate(
                track(loader, f"{name} epoch {epoch + 1}/{schedule.epochs}", total=steps_per_epoch, enabled=show)):
            step = epoch * steps_per_epoch + step_in_epoch
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = poly_lr(base, step, total_steps, schedule.poly_power)
            loss, _ = affinity_loss(affinity_of(net, images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if not math.isfinite(float(np.mean(losses))):
            raise FloatingPointError(f"{name} training diverged (loss is not finite); lower lr")
        if rank == 0:
            log(f"{name} epoch {epoch + 1}/{schedule.epochs}: loss {np.mean(losses):.4f}")
            tmp = workdir / f".latest.pth.{os.getpid()}"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}, tmp)
            os.replace(tmp, latest)
        if world > 1:
            torch.distributed.barrier()
