"""One training loop for the toolkit's trainers: SGD-style optimiser groups decayed by the poly
schedule, batches split over torchrun ranks (DDP), a ``latest.pth`` written by rank 0 after
every epoch and resumed from, progress and per-epoch loss lines.

Deterministic on CPU for a given seed when the items draw their randomness from (seed,
epoch, index), as :mod:`plabel_kit.toolkit.augment` does."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..progress import quiet, track
from .checkpoints import load_checkpoint, save_checkpoint
from .runtime import barrier, shard

LATEST = "latest.pth"


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """The poly schedule (DeepLab, IRN): ``base * (1 - step / total) ** power``."""
    return base * (1 - step / total) ** power


def steps_per_epoch(items: int, batch_size: int, world: int) -> int:
    """Optimiser steps an epoch takes: ``items`` in batches of ``batch_size`` split over
    ``world`` ranks (each takes ``batch_size // world``, at least 1), the last partial batch
    dropped; ValueError when not even one batch fills."""
    per_rank = max(1, batch_size // world)
    steps = items // (per_rank * world)
    if steps == 0:
        raise ValueError(f"{items} images are fewer than one batch of {batch_size}")
    return steps


def epoch_record(epoch: int, seconds: float, losses: list[float], parts: list[dict]) -> dict:
    """One epoch's history entry: {"epoch": e (1-based), "seconds", "loss": the mean of
    ``losses``, then the mean of every key of the steps' ``parts`` dicts}, losses rounded to 5
    decimals. Means are running sums over the steps divided by their count (in step order, so
    a rerun gives the same digits)."""
    sums: dict[str, float] = {"loss": 0.0}
    for loss, step_parts in zip(losses, parts):
        sums["loss"] += loss
        for key, value in step_parts.items():
            sums[key] = sums.get(key, 0.0) + value
    return {"epoch": epoch + 1, "seconds": round(seconds, 2), **{k: round(v / len(losses), 5) for k, v in sums.items()}}


def run_epochs(model, items, optimizer, loss_of, *, epochs: int, batch_size: int, poly_power: float, seed: int,
               num_workers: int, workdir: Path, device: torch.device, label: str, what: str, log=print,
               loss_takes_step: bool = False, optimiser_step: Callable | None = None,
               after_step: Callable[[int], None] | None = None,
               extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
               reseed_every_epoch: bool = False, find_unused_parameters: bool = False,
               on_epoch: Callable[[dict], None] | None = None, describe: Callable[[dict], str] | None = None) -> None:
    """The epoch loop of a trainer, on ``model`` (already on ``device``) in place.

    ``items``: a torch Dataset whose ``epoch`` attribute seeds its random draws; batches of
    ``batch_size`` split over torchrun ranks (DDP), ordered by (seed, epoch); ``loss_of(net,
    batch)`` -> scalar loss; ``optimizer``: SGD whose groups decay by poly from their starting
    lr. Rank 0 writes ``workdir/latest.pth`` (model, optimizer, epoch) after every epoch and a
    rerun resumes from it; progress and losses as "{label} epoch e/E", the resume as
    "resuming {what} training after epoch N".

    For trainers with more moving parts (CSRM's teacher, scaler and memory bank):
    - ``loss_takes_step``: call ``loss_of(net, batch, step, epoch)`` (step counts over all
      epochs, from 0); ``loss_of`` may return (loss, parts): parts a dict of floats to
      average per epoch (loss components, counters);
    - ``optimiser_step(loss)`` replaces zero_grad / backward / step (a GradScaler, clipping);
    - ``after_step(step)`` runs after every optimiser step (an EMA teacher update);
    - ``extra_state`` = (get, set): ``get()`` -> a dict saved beside model, optimizer and
      epoch in ``latest.pth``, ``set(state)`` restores it from the loaded checkpoint;
    - ``reseed_every_epoch``: ``torch.manual_seed(seed * 1000 + epoch)`` at every epoch's
      start, so that torch's own draws (dropout) of a resumed run match an unbroken one;
    - ``find_unused_parameters``: for DDP, when some parameters idle in some steps;
    - ``on_epoch(record)`` gets every epoch's :func:`epoch_record` (all ranks), ``describe
      (record)`` -> the log line's text after "{label} epoch e/E: " (default "loss L")."""
    rank, world = shard()
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    per_rank = max(1, batch_size // world)
    sampler = torch.utils.data.DistributedSampler(items, world, rank, shuffle=True, seed=seed,
                                                  drop_last=True) if world > 1 else None
    steps = steps_per_epoch(len(items), batch_size, world)
    total_steps = steps * epochs
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start_epoch = 0
    latest = workdir / LATEST
    if latest.exists():
        state = load_checkpoint(latest, "training checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if extra_state is not None:
            extra_state[1](state)
        start_epoch = state["epoch"]
        log(f"resuming {what} training after epoch {start_epoch} ({latest})")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=find_unused_parameters)

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        if reseed_every_epoch:
            torch.manual_seed(seed * 1000 + epoch)
        items.epoch = epoch
        order_rng = torch.Generator().manual_seed(seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            items, batch_size=per_rank, sampler=sampler, shuffle=sampler is None, generator=order_rng,
            drop_last=True, num_workers=num_workers, persistent_workers=False)
        net.train()
        losses, parts = [], []
        show = rank == 0 and not quiet()
        for step_in_epoch, batch in enumerate(track(loader, f"{label} epoch {epoch + 1}/{epochs}",
                                                    total=steps, enabled=show)):
            step = epoch * steps + step_in_epoch
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = poly_lr(base, step, total_steps, poly_power)
            result = loss_of(net, batch, step, epoch) if loss_takes_step else loss_of(net, batch)
            loss, step_parts = result if isinstance(result, tuple) else (result, {})
            if optimiser_step is None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                optimiser_step(loss)
            if after_step is not None:
                after_step(step)
            losses.append(loss.item())
            parts.append(step_parts)
        if not math.isfinite(float(np.mean(losses))):
            raise FloatingPointError(f"{what} training diverged (loss is not finite); lower lr")
        record = epoch_record(epoch, time.perf_counter() - started, losses, parts)
        if on_epoch is not None:
            on_epoch(record)
        if rank == 0:
            log(f"{label} epoch {epoch + 1}/{epochs}: "
                + (describe(record) if describe is not None else f"loss {np.mean(losses):.4f}"))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
            save_checkpoint({**state, **(extra_state[0]() if extra_state is not None else {})}, latest)
        barrier()
