"""CSRM training: student + EMA teacher, the five losses, ClassMix, SGD with poly decay.

Every image gives two crops a step, as CSRM's "labelled" and "unlabelled" batches (its
``train_u2pl.py``): a strong view (IRN's random long-side resize, flip and crop, then the
reference's colour jitter and Gaussian blur) and a weak view (the image at its own size,
randomly cropped, nothing else). One step (B images, 2B crops of the same size H x W):
1. teacher CAMs -> class->segmentation pseudo masks (IRN thresholds, optional CRF, 255 band)
   of all 2B crops;
2. ClassMix on images, padding masks, pseudo masks and tags of all 2B crops (probability
   ``classmix_prob``);
3. teacher forward on the mixed crops (segmentation probabilities and representations);
4. student forward; classification on all crops, class->segmentation on the strong views;
   after the warm-up also segmentation->class (ramped weight) on all crops, the entropy-drop
   loss on the weak views, and the pixel contrast with both roles: on the strong views its
   anchors, prototypes and negatives come from the class->segmentation masks, on the weak
   views from U2PL's entropy rule on the teacher;
5. backward (GradScaler under CUDA autocast), gradient clipping, SGD, teacher EMA update.

Deterministic on CPU for a given seed: crops and their photometric changes derive from
(seed, epoch, index), batch order and dropout from (seed, epoch), ClassMix and contrast
sampling from (seed, step), and the epoch checkpoint holds student, teacher, optimiser and
memory bank, so a resumed run ends with the weights of an unbroken one.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plabel_kit.datasets import Dataset, load_image
from plabel_kit.toolkit.augment import random_crop_window, random_resize_flip
from plabel_kit.toolkit.inference import IMAGENET_MEAN, IMAGENET_STD
from plabel_kit.toolkit.runtime import available_cores, exit_with_parent, process_pool, shard
from plabel_kit.toolkit.training import run_epochs, steps_per_epoch
from plabel_kit.types import IGNORE

from .classmix import classmix
from .ema import ema_decay, make_teacher, update_teacher
from .losses import (class_to_segmentation_loss, classification_loss, entropy_drop_loss, pixel_contrast_loss,
                     s2c_weight, segmentation_to_class_loss, unreliable_percent)
from .memory import MemoryBank
from .targets import (c2s_mask, contrast_selection, ignore_outside, labelled_contrast_selection, masked_means,
                      negative_keys, normalised_cams, restrict_to_tags)

LOSS_NAMES = ("c", "c2s", "s2c", "u", "contrast")


class TrainingCrops(torch.utils.data.Dataset):
    """Two views of every image: (strong crop [3, S, S], its valid bool [S, S] (False on
    padding), weak crop [3, S, S], its valid [S, S], multi-hot tags [C])."""

    def __init__(self, dataset: Dataset, crop_size: int, resize_long: tuple[int, int], seed: int):
        self.samples = dataset.samples
        self.num_fg = dataset.num_classes - 1
        self.crop_size, self.resize_long, self.seed = crop_size, tuple(resize_long), seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = load_image(sample.image_path, sample.id)
        strong, strong_valid = augment(image, rng, self.resize_long, self.crop_size)
        weak, weak_valid = weak_view(image, rng, self.crop_size)
        tags = torch.zeros(self.num_fg)
        for c in sample.classes:
            tags[c - 1] = 1
        return strong, strong_valid, weak, weak_valid, tags


def augment(image: np.ndarray, rng: np.random.Generator, resize_long: tuple[int, int],
            crop: int, photometric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The strong view: IRN's training augmentation (random long-side resize, flip, random
    crop, zero padding), then (``photometric``) CSRM's colour jitter and blur on the crop's
    image pixels (:func:`photometric_jitter`). Returns ([3, S, S] normalised, bool [S, S]:
    where the crop holds image pixels)."""
    image, _ = random_resize_flip(image, rng, resize_long)
    return _crop(image, rng, crop, photometric)


def weak_view(image: np.ndarray, rng: np.random.Generator, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak view (CSRM's unlabelled batch: scale 1, random crop, no flip, no colour
    change): the image at its own size, randomly cropped and zero padded to ``crop``.
    Returns ([3, S, S] normalised, bool [S, S] valid)."""
    return _crop(image, rng, crop, False)


def _crop(image: np.ndarray, rng: np.random.Generator, crop: int, photometric: bool):
    window = random_crop_window(rng, *image.shape[:2], crop)
    pixels = np.ascontiguousarray(window.cut(image))
    if photometric:  # after the crop's draws, on its pixels only, as CSRM jitters its crops
        pixels = photometric_jitter(pixels, rng)
    return window.paste_image(pixels), window.valid()


def photometric_jitter(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CSRM's strong-view colour changes (``csrm/data_utils.py`` ``transform``), on uint8
    RGB [H, W, 3]: with probability 0.8 torchvision's ``ColorJitter((0.75, 1.25), (0.75, 1.25),
    (0.75, 1.25), (-0.25, 0.25))`` (brightness, contrast, saturation and hue in a random order,
    through PIL as torchvision does for PIL images), then with probability 0.5 PIL's Gaussian
    blur of radius uniform(0.15, 1.15). Random numbers from ``rng``, so a crop is reproducible."""
    from PIL import Image, ImageEnhance, ImageFilter

    picture = Image.fromarray(pixels)
    if rng.random() < 0.8:
        order = rng.permutation(4)
        brightness, contrast, saturation = rng.uniform(0.75, 1.25, 3)
        hue = rng.uniform(-0.25, 0.25)
        for op in order:
            if op == 0:
                picture = ImageEnhance.Brightness(picture).enhance(brightness)
            elif op == 1:
                picture = ImageEnhance.Contrast(picture).enhance(contrast)
            elif op == 2:
                picture = ImageEnhance.Color(picture).enhance(saturation)
            else:
                picture = shift_hue(picture, hue)
    if rng.random() < 0.5:
        picture = picture.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.15, 1.15)))
    return np.asarray(picture, dtype=np.uint8)


def shift_hue(picture, factor: float):
    """torchvision's ``adjust_hue`` for PIL images: the HSV hue channel shifted by
    ``factor`` (-0.5..0.5) of a turn, wrapping around."""
    from PIL import Image

    hue, saturation, value = picture.convert("HSV").split()
    shifted = ((np.asarray(hue, dtype=np.int16) + int(factor * 255)) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), saturation, value)).convert("RGB")


def denormalise(images: torch.Tensor) -> np.ndarray:
    """Normalised float [B, 3, H, W] -> uint8 [B, H, W, 3] RGB (for the CRF)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    pixels = (images.float() * std + mean).clamp(0, 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def c2s_masks(images: torch.Tensor, cams: torch.Tensor, tags: torch.Tensor, valid: torch.Tensor, params,
              pool: Executor | None) -> torch.Tensor:
    """The teacher's pseudo masks int64 [B, H, W] from relu'd CAMs [B, C, h, w] of crops
    [B, 3, H, W] (255 on the band and on padding)."""
    size = images.shape[2:]
    planes = F.interpolate(normalised_cams(cams.float()), size=size, mode="bilinear", align_corners=False)
    planes = planes.cpu().numpy()
    pixels = denormalise(images) if params.c2s_crf else [None] * len(planes)
    keys = [np.flatnonzero(t.cpu().numpy()) + 1 for t in tags]
    jobs = ([pixels[b], planes[b][k - 1], k, params.c2s_fg, params.c2s_bg, params.c2s_crf]
            for b, k in enumerate(keys))
    masks = list(pool.map(c2s_mask, *zip(*jobs))) if pool is not None else [c2s_mask(*job) for job in jobs]
    valid_np = valid.cpu().numpy()
    return torch.from_numpy(np.stack([ignore_outside(m, v) for m, v in zip(masks, valid_np)]).astype(np.int64))


def contrast_loss(student_rep, teacher_seg, teacher_rep, pseudo, tags, valid, labelled: int, bank: MemoryBank,
                  percent: float, params, generator) -> tuple[torch.Tensor, int]:
    """The pixel contrast of a batch whose first ``labelled`` crops play CSRM's labelled role
    and the rest its unlabelled role, at the decoder's resolution: select anchors /
    prototypes / negatives (:func:`contrast_targets`), push the negatives (the teacher's
    representations) into the bank, then the contrast of the student's representations.
    Returns (loss, number of classes holding anchors)."""
    small = teacher_seg.shape[2:]
    probs = torch.softmax(teacher_seg.float(), dim=1)
    prototype, anchors, negatives = contrast_targets(probs, shrink(pseudo, small), tags, shrink(valid, small).bool(),
                                                     labelled, percent, params)
    teacher_rep = teacher_rep.float()
    bank.push(negative_keys(teacher_rep, negatives), generator)
    loss = pixel_contrast_loss(student_rep.float(), anchors, masked_means(teacher_rep, prototype), bank.queues,
                               params.num_queries, params.num_negatives, params.temperature, generator)
    return loss, int(anchors.flatten(2).any(dim=2).any(dim=0).sum())


def contrast_targets(probs, pseudo, tags, valid, labelled: int, percent: float, params):
    """(prototype, anchors, negatives) bool [B, K, h, w] for a batch of teacher
    probabilities [B, K, h, w]: the first ``labelled`` crops from their class->segmentation
    masks ``pseudo`` int [B, h, w] (:func:`labelled_contrast_selection`), the others from the
    teacher's entropy (:func:`contrast_selection` on its argmax restricted to ``tags``, over
    ``valid`` pixels, ``percent`` % low / high entropy), as U2PL's labelled / unlabelled split."""
    l_sel = labelled_contrast_selection(probs[:labelled], pseudo[:labelled], params.contrast_class_threshold,
                                        params.contrast_low_rank)
    u_probs = probs[labelled:]
    u_sel = contrast_selection(u_probs, restrict_to_tags(u_probs, tags[labelled:]).argmax(dim=1), tags[labelled:],
                               valid[labelled:], percent, params.contrast_class_threshold, params.contrast_low_rank,
                               params.contrast_high_rank)
    return tuple(torch.cat([a, b]) for a, b in zip(l_sel, u_sel))


def shrink(mask: torch.Tensor, size) -> torch.Tensor:
    """A label or bool map [B, H, W] at ``size`` by nearest neighbour (as the reference
    shrinks its masks to the decoder's resolution); int64 out."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


class Trainer:
    """Holds what one training run shares between steps; :meth:`run` trains in place through
    the toolkit's epoch loop (``plabel_kit.toolkit.training.run_epochs``), with the teacher,
    scaler, memory bank and history in its ``latest.pth``."""

    def __init__(self, model, params, dataset: Dataset, workdir: Path, device: torch.device,
                 classifier_is_new: bool, log=print):
        _, world = shard()
        self.model, self.params, self.dataset = model.to(device), params, dataset
        self.workdir, self.device, self.log = Path(workdir), device, log
        self.crops = TrainingCrops(dataset, params.crop_size, params.resize_long, params.seed)
        self.steps_per_epoch = steps_per_epoch(len(self.crops), params.train_batch_size, world)
        self.total_steps = self.steps_per_epoch * params.epochs
        self.warmup_steps = self.steps_per_epoch * params.warmup_epochs
        self.teacher = make_teacher(model)
        backbone, new = model.parameter_groups(classifier_is_new)
        self.optimizer = torch.optim.SGD([
            {"params": backbone, "lr": params.lr},
            {"params": new, "lr": params.lr * params.new_lr_mult},
        ], lr=params.lr, momentum=params.momentum, nesterov=params.nesterov, weight_decay=params.weight_decay)
        self.amp = bool(params.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        num_classes = dataset.num_classes
        self.bank = MemoryBank([params.memory_size_background] + [params.memory_size] * (num_classes - 1),
                               params.representation_dim, device)
        self.history: list[dict] = []

    def state(self) -> dict:
        """What ``latest.pth`` holds beside the student (``model``), optimiser and epoch."""
        return {"teacher": self.teacher.state_dict(), "scaler": self.scaler.state_dict(),
                "bank": self.bank.state_dict(), "history": self.history}

    def load_state(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.scaler.load_state_dict(state["scaler"])
        self.bank.load_state_dict(state["bank"])
        self.history = state["history"]

    def run(self) -> None:
        """Train the remaining epochs; afterwards ``self.teacher`` is the trained network."""
        params = self.params
        with crf_pool(params) as pool:
            run_epochs(self.model, self.crops, self.optimizer,
                       lambda net, batch, step, epoch: self.losses(net, batch, step, epoch, pool),
                       epochs=params.epochs, batch_size=params.train_batch_size, poly_power=params.poly_power,
                       seed=params.seed, num_workers=params.num_workers, workdir=self.workdir, device=self.device,
                       label="CSRM", what="CSRM", log=self.log, loss_takes_step=True, optimiser_step=self.optimise,
                       after_step=lambda step: update_teacher(self.teacher, self.model,
                                                              ema_decay(step, self.warmup_steps)),
                       extra_state=(self.state, self.load_state), reseed_every_epoch=True,
                       # the representation head idles during warm-up
                       find_unused_parameters=True, on_epoch=lambda record: self.history.append(record), describe=describe_epoch)

    def step(self, net, batch, step: int, epoch: int, pool) -> dict:
        """One optimiser step (:meth:`losses`, :meth:`optimise`); returns {"loss": the total,
        then the parts of :meth:`losses`}."""
        total, parts = self.losses(net, batch, step, epoch, pool)
        self.optimise(total)
        return {"loss": float(total.detach()), **parts}

    def optimise(self, total: torch.Tensor) -> None:
        """Backward (through the GradScaler under CUDA autocast), gradient clipping, SGD."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def losses(self, net, batch, step: int, epoch: int, pool) -> tuple[torch.Tensor, dict]:
        """The losses of one step on B images (their strong views take CSRM's labelled role,
        their weak views the unlabelled one): (total, parts): the loss values, the number of
        classes holding contrast anchors and the labelled share of the strong views'
        class->segmentation masks."""
        params, device = self.params, self.device
        strong, strong_valid, weak, weak_valid, tags = (t.to(device) for t in batch)
        n = len(strong)
        images, valid, tags = torch.cat([strong, weak]), torch.cat([strong_valid, weak_valid]), torch.cat([tags, tags])
        generator = torch.Generator().manual_seed(params.seed * 1_000_000_007 + step)
        autocast = torch.autocast(device.type, dtype=torch.float16, enabled=self.amp)
        with torch.no_grad(), autocast:
            teacher_cams = self.teacher.cams(images)
        pseudo = c2s_masks(images, teacher_cams, tags, valid, params, pool).to(device)
        if params.classmix_prob > 0 and float(torch.rand((), generator=generator)) < params.classmix_prob:
            mixed = classmix(images, valid, pseudo, tags, generator)
            images, valid, pseudo, tags = mixed.images, mixed.valid, mixed.masks, mixed.tags
        after_warmup = step >= self.warmup_steps
        if after_warmup:
            with torch.no_grad(), autocast:
                teacher = self.teacher(images)
        with autocast:
            student = net(images)
        size = images.shape[2:]
        seg = F.interpolate(student.seg.float(), size=size, mode="bilinear", align_corners=False)
        losses = {"c": classification_loss(student.logits.float(), tags, params.label_smoothing),
                  "c2s": class_to_segmentation_loss(seg[:n], pseudo[:n], params.label_smoothing)}
        anchor_classes = 0
        if after_warmup:
            teacher_probs = restrict_to_tags(torch.softmax(
                F.interpolate(teacher.seg.float(), size=size, mode="bilinear", align_corners=False), dim=1), tags)
            cams = F.interpolate(student.cam_logits.float(), size=size, mode="bilinear", align_corners=False)
            weight = s2c_weight(step, self.warmup_steps, self.total_steps, *params.s2c_ramp)
            losses["s2c"] = weight * segmentation_to_class_loss(cams, seg[:, :1], teacher_probs,
                                                                params.s2c_confidence, valid, params.label_smoothing)
            losses["u"] = entropy_drop_loss(seg[n:], teacher_probs[n:],
                                            unreliable_percent(epoch, params.epochs, params.unreliable_percent),
                                            valid[n:])
            losses["contrast"], anchor_classes = contrast_loss(
                student.rep, teacher.seg, teacher.rep, pseudo, tags, valid, n, self.bank,
                unreliable_percent(epoch, params.epochs, params.contrast_percent), params, generator)
        total = sum(losses.values())
        labelled = ((pseudo[:n] != IGNORE) & valid[:n]).sum() / valid[:n].sum().clamp_min(1)
        return total, {**{k: float(losses[k].detach()) if k in losses else 0.0 for k in LOSS_NAMES},
                       "anchor_classes": float(anchor_classes), "c2s_labelled": float(labelled)}


def describe_epoch(record: dict) -> str:
    """The log line of an epoch's record: the total, the five losses and the anchors."""
    return (f"loss {record['loss']:.4f} (" + ", ".join(f"{k} {record[k]:.4f}" for k in LOSS_NAMES)
            + f"; {record['anchor_classes']:.2f} classes with contrast anchors per step)")


@contextmanager
def crf_pool(params):
    """A process pool for the class->segmentation CRFs; None without CRF or with one worker.
    Its forked workers run numpy and pydensecrf only, and end with the trainer
    (``exit_with_parent``): a SIGKILLed trainer would otherwise leave them behind."""
    if not params.c2s_crf:
        yield None
        return
    workers = params.crf_workers if params.crf_workers is not None else available_cores()
    if workers <= 1:
        yield None
        return
    with process_pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        yield pool
