"""The ``irnet`` label source: IRNet's class boundaries learned from a CAM set's IR labels,
then the random walk of the CAM scores over boundary affinities (IRN's ``train_irn`` +
``make_sem_seg_labels``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from plabel_kit import LabelSource, PseudoLabel
from plabel_kit.toolkit.checkpoints import load_checkpoint, save_checkpoint
from plabel_kit.toolkit.runtime import is_main_process, log

FINAL = "irn_final.pth"


@dataclass
class Irnet(LabelSource):
    """Reads images and a CAM label set (``cam``: IR labels and CAM scores); writes labels,
    the walked scores (stride 4, keys of the CAM set, divided by their global max) and, in
    ``<out>/work/boundaries/<id>.npy``, the class boundary maps (float16, stride 4; usable
    as ``plabel refine randomwalk --set affinity=boundary --boundaries``).

    Trains IRNet's boundary branch (5 stages of the frozen backbone -> 1 channel) unless
    ``checkpoint`` is given, on the IR labels (the CAM set's labels in ``mode=ir_labels``,
    else computed from its scores): pairs within ``train_radius`` 10 at stride 4, positive
    background, positive same-class, negative different-class, 255 ignored; loss
    ((bg + fg) / 2 + neg) / 2 of the path-max affinity. The backbone is the CAM
    checkpoint's (``<cam>/work/cam_final.pth`` or its producer's ``checkpoint``), else
    ``pretrained`` weights of ``backbone``. Labels: CAM x (1 - boundary) walked 2^``log_steps``
    steps with beta 10 over affinities within radius 5 (sparse operator), divided by the
    global max, background ``threshold`` 0.25. Follows IRNet (Ahn et al., CVPR 2019) with its
    defaults; the displacement branch (instances) is not implemented."""

    inputs: ClassVar[tuple[str, ...]] = ("cam", "checkpoint", "pretrained")
    runtime: ClassVar[tuple[str, ...]] = ("device", "num_workers")
    batch_size: ClassVar[int] = 4

    cam: str | None = None
    checkpoint: str | None = None
    pretrained: str | None = None
    backbone: str = "resnet50_v1c"
    output_stride: int = 16
    epochs: int = 3
    train_batch_size: int = 32
    crop_size: int = 512
    resize_long: tuple[int, int] = (320, 640)
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.0
    poly_power: float = 0.9
    train_radius: int = 10
    radius: int = 5
    beta: float = 10.0
    log_steps: int = 8
    threshold: float = 0.25
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self):
        from plabel_kit import LabelSet

        if not self.cam:
            raise ValueError("irnet needs --cam LABELSET (a CAM label set with scores)")
        self._cam = LabelSet(self.cam)
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4, got {self.crop_size}")
        for name in ("train_radius", "radius", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self._model = None

    def _architecture(self) -> dict:
        """backbone / output stride: the CAM checkpoint's when the CAM set names one."""
        config = self._cam.producer.get("config", {})
        if self._cam.producer.get("type") == "cam" and "backbone" in config:
            return {"backbone": config["backbone"], "output_stride": config.get("output_stride", 16)}
        return {"backbone": self.backbone, "output_stride": self.output_stride}

    def fit(self, dataset, workdir: Path) -> None:
        from plabel_kit.toolkit.runtime import pick_device
        from plabel_kit.stages import train_once

        if self._cam.classes != list(dataset.classes):
            raise ValueError(f"{self.cam}: classes {self._cam.classes} differ from the dataset's {dataset.classes}")
        self._device, self._workdir = pick_device(self.device), Path(workdir)
        path = train_once(self.checkpoint, self._workdir / FINAL, lambda: self._train(dataset, self._workdir))
        self._model = self._load(path)

    def _new_model(self, arch):
        from .model import BoundaryNet

        return BoundaryNet(arch["backbone"], arch["output_stride"])

    def _load(self, path):
        state = load_checkpoint(path, "irnet checkpoint")
        if "architecture" not in state or "boundary" not in state:
            raise ValueError(f"{path}: not an irnet checkpoint")
        model = self._new_model(state["architecture"])
        model.load_state_dict(state["boundary"])
        return model.to(self._device).eval()

    def _train(self, dataset, workdir: Path):
        import torch
        from plabel_kit.toolkit.backbones import load_pretrained

        from .data import IrLabels, PairItems, cam_checkpoint
        from .pairs import path_affinity
        from .train import Schedule, train_affinity

        torch.manual_seed(self.seed)
        arch = self._architecture()
        model = self._new_model(arch)
        weights = cam_checkpoint(self._cam)
        if weights is not None:
            arch = model.backbone.load_cam(weights)
            arch = {"backbone": arch["backbone"], "output_stride": arch["output_stride"]}
        elif self.pretrained:
            load_pretrained(model.backbone.resnet, self.pretrained)
        else:
            raise ValueError(f"{self.cam}: no CAM checkpoint found for the frozen backbone; "
                             f"give --pretrained WEIGHTS")
        log(f"irnet: frozen {arch['backbone']} backbone from {weights or self.pretrained}")
        items = PairItems(dataset, IrLabels(self._cam), workdir / "ir_labels", stride=4, radius=self.train_radius,
                          crop=self.crop_size, resize_long=tuple(self.resize_long), seed=self.seed)
        schedule = Schedule(self.epochs, self.train_batch_size, self.lr, self.weight_decay, self.momentum,
                            self.poly_power, self.seed, self.num_workers)
        radius = self.train_radius
        train_affinity(model, lambda net, images: path_affinity(torch.sigmoid(net(images))[:, 0], radius),
                       [{"params": model.trainable(), "lr": self.lr}], items, schedule, workdir,
                       self._device, "irnet", log)
        if is_main_process():
            save_checkpoint({"boundary": model.state_dict(), "architecture": arch}, workdir / FINAL)

    def predict(self, samples):
        if self._model is None:
            raise RuntimeError("irnet: fit() must run before predict()")
        return [self.walk(sample) for sample in samples]

    def walk(self, sample) -> PseudoLabel:
        """IRN's ``make_sem_seg_labels`` for one sample, with the sparse walk."""
        from plabel_kit.arrays import resize_scores
        from plabel_kit.toolkit.affinity import boundary_affinity
        from plabel_kit.toolkit.inference import normalise
        from plabel_kit.toolkit.walk import grid_size, pool_to_grid, walk_scores

        size = sample.image.shape[:2]
        grid = grid_size(size, 4)
        boundary = self._model.boundary(normalise(sample.image).to(self._device)).astype(np.float64)[:grid[0], :grid[1]]
        self._save_boundary(sample.id, boundary)
        pseudo = self._cam.read(sample.id, size=size)
        keys = np.asarray(pseudo.keys if pseudo.keys is not None else [], np.int64)
        if pseudo.scores is None or not len(keys):
            return PseudoLabel(np.zeros(size, np.uint8))
        fg = keys != 0
        scores, keys = pseudo.scores[fg], keys[fg]
        planes = pool_to_grid(resize_scores(scores.astype(np.float32), size), 4) * (1.0 - boundary)
        label, walked = walk_scores(planes, keys, boundary_affinity(boundary, self.radius), radius=self.radius,
                                    beta=self.beta, steps=2 ** self.log_steps, stride=4, size=size,
                                    threshold=self.threshold, device=str(self._device))
        return PseudoLabel(label, walked.astype(np.float32), keys, stride=4)

    def _save_boundary(self, image_id: str, boundary: np.ndarray):
        folder = self._workdir / "boundaries"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{image_id}.{os.getpid()}.npy"
        np.save(tmp, boundary.astype(np.float16))
        os.replace(tmp, folder / f"{image_id}.npy")

