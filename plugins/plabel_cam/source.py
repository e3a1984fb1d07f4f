"""The ``cam`` label source (IRNet's CAM step: ``train_cam`` + ``make_cam`` + ``eval_cam`` /
``cam_to_ir_label``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from plabel_kit import LabelSource, PseudoLabel
from plabel_kit.arrays import scores_to_labels
from plabel_kit.toolkit.runtime import is_main_process, log, pick_device

FINAL = "cam_final.pth"


@dataclass
class Cam(LabelSource):
    """Reads images and image-level tags; writes class activation maps (float16, full
    resolution, one plane per tagged class, each divided by its max) and labels.

    Trains the classifier first unless ``checkpoint`` is given (checkpoints in
    ``<out>/work``; an interrupted training resumes). ``mode=threshold`` labels by a constant
    background plane (``threshold``, IRN's CAM eval uses 0.15); ``mode=ir_labels`` makes IRN's
    training labels: fg at ``fg_threshold`` 0.30 and bg at ``bg_threshold`` 0.05, each refined
    by the dense CRF ``label`` recipe, 255 where they disagree. Follows IRNet (Ahn et al.,
    CVPR 2019) with its defaults; ``backbone=resnet18_small`` is the CPU-sized variant.

    ``frozen_stages``: backbone stages kept fixed in training (weights, batch-norm statistics,
    no gradient): -1 none, 0 the stem, k the stem and stages 1..k. None (the default) = 2 with
    ``pretrained`` weights, as IRN's ``resnet50_cam`` (conv1/bn1 frozen, ``layer2``'s output
    detached: only ``layer3``, ``layer4`` and the classifier learn), and -1 from scratch."""

    inputs: ClassVar[tuple[str, ...]] = ("checkpoint", "pretrained")
    batch_size: ClassVar[int] = 8
    runtime: ClassVar[tuple[str, ...]] = ("device", "num_workers")

    backbone: str = "resnet50_v1c"
    output_stride: int = 16
    pretrained: str | None = None
    checkpoint: str | None = None
    frozen_stages: int | None = None
    epochs: int = 5
    train_batch_size: int = 16
    crop_size: int = 512
    resize_long: tuple[int, int] = (320, 640)
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.0
    poly_power: float = 0.9
    classifier_lr_mult: float = 10.0
    seed: int = 0
    num_workers: int = 0
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    mode: str = "threshold"
    threshold: float = 0.15
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    device: str = "auto"

    def __post_init__(self):
        from plabel_kit.toolkit.backbones import check_architecture, check_frozen_stages

        check_architecture(self.backbone, self.output_stride)
        if self.frozen_stages is not None:
            check_frozen_stages(self.frozen_stages)
        if self.mode not in ("threshold", "ir_labels"):
            raise ValueError("mode must be 'threshold' or 'ir_labels'")
        if not self.scales:
            raise ValueError("scales must not be empty")
        self._model = None
        self._classes = None

    # ---- training ------------------------------------------------------------------

    def fit(self, dataset, workdir: Path) -> None:
        from plabel_kit.stages import train_once

        device = pick_device(self.device)
        path = train_once(self.checkpoint, Path(workdir) / FINAL, lambda: self._train(dataset, Path(workdir), device))
        self._use(path, dataset.classes, device)

    def _use(self, path, classes, device):
        from plabel_kit.toolkit.cam import load_cam_checkpoint
        from plabel_kit.toolkit.checkpoints import check_classes

        model, arch = load_cam_checkpoint(path, device)
        check_classes(path, arch, classes)
        self._model, self._classes, self._arch = model, list(classes), arch

    def _train(self, dataset, workdir: Path, device):
        import torch

        from plabel_kit.toolkit.backbones import load_pretrained
        from plabel_kit.toolkit.cam import CamNet, save_cam_checkpoint

        from .train import TrainConfig, train

        torch.manual_seed(self.seed)
        pretrained = bool(self.pretrained)
        model = CamNet(self.backbone, dataset.num_classes - 1, self.output_stride, norm_eval=pretrained,
                       frozen_stages=self.training_frozen_stages())
        if pretrained:
            load_pretrained(model.backbone, self.pretrained, log=log)
        config = TrainConfig(self.epochs, self.train_batch_size, self.crop_size, tuple(self.resize_long),
                             self.lr, self.weight_decay, self.momentum, self.poly_power,
                             self.classifier_lr_mult, self.seed, self.num_workers)
        train(model, dataset, config, workdir, device, log=log)
        if is_main_process():
            architecture = {"backbone": self.backbone, "output_stride": self.output_stride,
                            "classes": dataset.classes}
            save_cam_checkpoint(model, architecture, workdir / FINAL)

    def training_frozen_stages(self) -> int:
        """``frozen_stages``, or its default: 2 (IRN's) with pretrained weights, else -1."""
        if self.frozen_stages is not None:
            return self.frozen_stages
        return 2 if self.pretrained else -1

    # ---- inference -----------------------------------------------------------------

    def scores(self, sample) -> np.ndarray:
        """float32 [K, H, W] CAMs of the sample's tagged classes (K may be 0)."""
        from plabel_kit.toolkit.inference import multiscale_cam, normalise

        if not sample.classes:
            return np.zeros((0, *sample.image.shape[:2]), np.float32)
        device = next(self._model.parameters()).device
        image = normalise(sample.image).to(device)
        cams = multiscale_cam(self._model, image, [c - 1 for c in sample.classes], tuple(self.scales),
                              self.flip, self.output_stride)
        return cams.cpu().numpy()

    def predict(self, samples):
        if self._model is None:
            raise RuntimeError("cam: fit() must run before predict()")
        out = []
        for sample in samples:
            scores = self.scores(sample)
            keys = np.asarray(sample.classes, dtype=np.int64)
            if self.mode == "threshold":
                label = scores_to_labels(scores, keys, self.threshold)
            else:
                from plabel_kit.toolkit.cam import ir_labels

                label = ir_labels(sample.image, scores, keys, self.fg_threshold, self.bg_threshold)
            out.append(PseudoLabel(label, scores, keys))
        return out

