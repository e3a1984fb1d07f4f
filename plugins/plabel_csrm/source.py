"""The ``csrm`` label source: train CSRM (or load a finished checkpoint), then label every
image from the EMA teacher's CAM or segmentation branch."""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from plabel_kit import LabelSource, PseudoLabel
from plabel_kit.arrays import scores_to_labels
from plabel_kit.toolkit.checkpoints import check_classes
from plabel_kit.toolkit.runtime import is_main_process, log

FINAL = "csrm_final.pth"


def require_crf(parameter: str) -> None:
    """ValueError naming ``parameter`` when the dense CRF (pydensecrf) cannot be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"{parameter}=true needs the dense CRF (pydensecrf: pip install pydensecrf2), which "
                         f"cannot be imported ({exc}); install it or --set {parameter}=false") from None


def load_checkpoint(path, device="cpu"):
    """(CsrmNet in eval mode, architecture dict, the whole checkpoint) from a ``csrm_final.pth``."""
    from plabel_kit.toolkit.checkpoints import load_checkpoint as load_file

    from .model import build_from_architecture

    state = load_file(path, "plabel CSRM checkpoint (csrm_final.pth)")
    if state.get("kind") != "csrm":
        raise ValueError(f"{path}: not a plabel CSRM checkpoint (csrm_final.pth)")
    model = build_from_architecture(state["architecture"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["architecture"], state


@dataclass
class Csrm(LabelSource):
    """Reads images and image-level tags; writes the EMA teacher's score maps (float16) and
    labels. Follows CSRM (David, Pedrini & Dias, VISAPP 2025) with its VOC defaults.

    Training (skipped with ``checkpoint``, a finished ``csrm_final.pth``; checkpoints per
    epoch in ``<out>/work``, an interrupted run resumes): one network with a classification
    branch (CAMs), a DeepLabV3+ segmentation branch (C+1 classes) and a representation head
    on an mmseg backbone (``cam``'s presets); an EMA teacher (a copy during the
    ``warmup_epochs``, then decay min(1 - 1/(1 + step - warmup), 0.99)); five losses:
    classification (label smoothing), class->segmentation against the teacher's CAM masks
    (IRN thresholds ``c2s_fg`` / ``c2s_bg``, dense CRF with ``c2s_crf``, 255 band),
    segmentation->class where the teacher is confident (weight ramped by ``s2c_ramp``),
    U2PL's entropy-drop loss and a memory-bank pixel contrast; every image enters a step
    twice, as the reference's labelled and unlabelled batches: a strong view (resize, flip,
    crop, colour jitter, blur) takes class->segmentation and the contrast with anchors from
    its class->segmentation mask, a weak view (crop only) takes the entropy-drop loss and the
    contrast under U2PL's entropy rule; ClassMix; CUDA autocast
    (``amp``); gradient clipping. Warm start from ``cam_checkpoint`` (a ``cam`` source's
    ``cam_final.pth``: backbone and classifier) or ``pretrained`` (a local ResNet state dict).

    Labels: ``output=cam``: multi-scale CAMs of the tagged classes (each plane divided by its
    max), background ``threshold`` 0.4; ``output=seg``: the segmentation branch's
    probabilities of background + tagged classes (key 0 = background), argmax. ``crf``
    refines the label map with the dense CRF label recipe. Torchrun: DDP training (rank 0
    writes checkpoints), labelling sharded by rank."""

    inputs: ClassVar[tuple[str, ...]] = ("cam_checkpoint", "pretrained", "checkpoint")
    batch_size: ClassVar[int] = 8

    # network
    backbone: str = "resnet50_v1c"
    output_stride: int = 16
    decoder_channels: int = 256
    skip_channels: int = 48
    aspp_dilations: tuple[int, ...] = (1, 6, 12, 18)
    representation_dim: int = 256
    dropout: float = 0.1
    # inputs
    cam_checkpoint: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    # schedule
    epochs: int = 15
    warmup_epochs: int = 1
    train_batch_size: int = 32
    crop_size: int = 512
    resize_long: tuple[int, int] = (320, 640)
    lr: float = 0.007
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    new_lr_mult: float = 10.0
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    # losses
    label_smoothing: float = 0.1
    c2s_fg: float = 0.30
    c2s_bg: float = 0.05
    c2s_crf: bool = True
    s2c_confidence: float = 0.5
    s2c_ramp: tuple[float, float] = (0.1, 1.0)
    unreliable_percent: float = 20.0
    contrast_percent: float = 20.0
    contrast_class_threshold: float = 0.3
    contrast_low_rank: int = 3
    contrast_high_rank: int = 20
    num_queries: int = 256
    num_negatives: int = 50
    temperature: float = 0.5
    memory_size: int = 30000
    memory_size_background: int = 50000
    classmix_prob: float = 0.5
    crf_workers: int | None = None
    # labels
    output: str = "cam"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    threshold: float = 0.4
    crf: bool = True
    device: str = "auto"

    def __post_init__(self):
        from plabel_kit.toolkit.backbones import check_architecture

        check_architecture(self.backbone, self.output_stride)
        if self.output not in ("cam", "seg"):
            raise ValueError("output must be 'cam' or 'seg'")
        if self.cam_checkpoint and self.pretrained:
            raise ValueError("give cam_checkpoint or pretrained, not both (a cam checkpoint holds a backbone)")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {self.epochs} / "
                             f"{self.warmup_epochs}")
        if not self.scales:
            raise ValueError("scales must not be empty")
        for name in ("c2s_fg", "c2s_bg", "s2c_confidence", "threshold", "classmix_prob", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in 0..1, got {getattr(self, name)}")
        if min(self.num_queries, self.num_negatives, self.memory_size, self.memory_size_background) < 1:
            raise ValueError("num_queries, num_negatives and the memory sizes must be >= 1")
        for name in ("crf", "c2s_crf"):
            if getattr(self, name):
                require_crf(name)
        self._model = None
        self._state = {}

    # ---- training ------------------------------------------------------------------

    def fit(self, dataset, workdir: Path) -> None:
        from plabel_kit.toolkit.runtime import pick_device
        from plabel_kit.stages import train_once

        device = pick_device(self.device)
        path = train_once(self.checkpoint, Path(workdir) / FINAL, lambda: self._train(dataset, Path(workdir), device))
        self._use(path, dataset.classes, device)

    def _use(self, path, classes, device):
        model, arch, state = load_checkpoint(path, device)
        check_classes(path, arch, classes)
        self._model, self._arch = model, arch
        self._state = {k: state.get(k) for k in ("history", "warm_start", "device")}

    def _train(self, dataset, workdir: Path, device):
        import torch

        from .model import CsrmNet, architecture_of
        from .train import Trainer

        torch.manual_seed(self.seed)
        warm = bool(self.cam_checkpoint or self.pretrained)
        model = CsrmNet(self.backbone, dataset.num_classes - 1, self.output_stride, self.decoder_channels,
                        self.skip_channels, tuple(self.aspp_dilations), self.representation_dim, self.dropout,
                        frozen_stem=warm, norm_eval=warm)
        if self.cam_checkpoint:
            self._load_cam(model, dataset.classes)
        elif self.pretrained:
            from plabel_kit.toolkit.backbones import load_pretrained

            load_pretrained(model.backbone, self.pretrained, log=log)
        trainer = Trainer(model, self, dataset, workdir, device, classifier_is_new=not self.cam_checkpoint, log=log)
        trainer.run()
        if is_main_process():
            from plabel_kit.toolkit.checkpoints import save_checkpoint

            warm_start = "cam_checkpoint" if self.cam_checkpoint else "pretrained" if self.pretrained else "none"
            save_checkpoint({"kind": "csrm", "model": trainer.teacher.state_dict(),
                             "architecture": architecture_of(self, dataset.classes), "history": trainer.history,
                             "warm_start": warm_start, "device": str(device)}, workdir / FINAL)

    def _load_cam(self, model, classes):
        from plabel_kit.toolkit.cam import load_cam_checkpoint as load_cam

        cam, arch = load_cam(self.cam_checkpoint)
        if (arch["backbone"], arch["output_stride"]) != (self.backbone, self.output_stride):
            raise ValueError(f"{self.cam_checkpoint} holds a {arch['backbone']} at output stride "
                             f"{arch['output_stride']}; use --set backbone={arch['backbone']} "
                             f"--set output_stride={arch['output_stride']}")
        check_classes(self.cam_checkpoint, arch, classes)
        model.backbone.load_state_dict(cam.backbone.state_dict())
        model.classifier.load_state_dict(cam.classifier.state_dict())
        log(f"warm start from the CAM checkpoint {self.cam_checkpoint}")

    # ---- inference -----------------------------------------------------------------

    def scores(self, sample) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [K, H, W], int64 keys [K]): CAMs of the tagged classes (``output=cam``) or
        probabilities of background + tagged classes (``output=seg``)."""
        import torch

        from plabel_kit.toolkit.inference import multiscale_cam, normalise

        from .infer import multiscale_segmentation

        classes = list(sample.classes)
        height, width = sample.image.shape[:2]
        if self.output == "cam" and not classes:
            return np.zeros((0, height, width), np.float32), np.zeros(0, np.int64)
        device = next(self._model.parameters()).device
        image = normalise(sample.image).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.amp and device.type == "cuda"):
            if self.output == "cam":
                planes = multiscale_cam(self._model, image, [c - 1 for c in classes], tuple(self.scales),
                                        self.flip, self.output_stride)
                keys = classes
            else:
                planes = multiscale_segmentation(self._model, image, classes, tuple(self.scales), self.flip)
                keys = [0, *classes]
        return planes.float().cpu().numpy(), np.asarray(keys, dtype=np.int64)

    def predict(self, samples):
        if self._model is None:
            raise RuntimeError("csrm: fit() must run before predict()")
        scored = [self.scores(s) for s in samples]
        labels = [scores_to_labels(sc, keys, self.threshold) if self.output == "cam"
                  else keys.astype(np.uint8)[np.argmax(sc, axis=0)] for sc, keys in scored]
        if self.crf:
            labels = self._crf(samples, labels, [keys[keys != 0] for _, keys in scored])
        return [PseudoLabel(label, sc, keys) for label, (sc, keys) in zip(labels, scored)]

    def _crf(self, samples, labels, keys) -> list[np.ndarray]:
        """The dense CRF label recipe on every label map, over a process pool when there are
        several images and cores."""
        from plabel_kit.toolkit.crf import crf_label_map

        images = [np.ascontiguousarray(s.image) for s in samples]
        pool = self._pool(len(samples))
        if pool is None:
            return [crf_label_map(i, l, k) for i, l, k in zip(images, labels, keys)]
        return list(pool.map(crf_label_map, images, labels, keys))

    def _pool(self, jobs: int):
        """The CRF process pool (made at the first call with several jobs and cores, then
        kept); None for one job or one worker."""
        from plabel_kit.toolkit.runtime import available_cores, exit_with_parent, process_pool

        workers = min(jobs, self.crf_workers if self.crf_workers is not None else available_cores())
        if workers <= 1:
            return None
        pool = self.__dict__.get("_executor")
        if pool is None:
            pool = process_pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),))
            weakref.finalize(self, pool.shutdown)
            self.__dict__["_executor"] = pool
        return pool

    def summary(self) -> dict:
        """How the network was trained: warm start, device, per-epoch losses and seconds."""
        history = self._state.get("history") or []
        out = {"trained_here": not self.checkpoint, "warm_start": self._state.get("warm_start"),
               "train_device": self._state.get("device"), "epochs_trained": len(history),
               "output": self.output, "crf": self.crf}
        if history:
            out["seconds_per_epoch"] = round(float(np.mean([h["seconds"] for h in history])), 2)
            out["final_loss"] = history[-1]["loss"]
            out["contrast_per_epoch"] = [h.get("contrast", 0.0) for h in history]
            out["history"] = history
        return out
