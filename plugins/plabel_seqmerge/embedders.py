"""Embedders for sequencing: ``thumbnail`` (training-free), ``backbone`` (a local pretrained
ResNet checkpoint, e.g. ImageNet ResNet-50 as SChISM uses, last stage global average pooled
at 224 x 224) and ``cam_features`` (a trained ``cam`` classifier's backbone, pooled alike)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from plabel_kit import Embedder


def colour_histogram(image: np.ndarray, bins: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [bins**3]: joint HSV histogram, L1-normalised, square
    rooted (Hellinger), so that the cosine of two blocks is their Bhattacharyya coefficient."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # H in 0..179, S and V in 0..255
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [bins] * 3, [0, 180, 0, 256, 0, 256]).reshape(-1)
    return np.sqrt(hist / max(float(hist.sum()), 1.0)).astype(np.float32)


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [side * side * 3]: area-averaged thumbnail, zero-mean,
    so that the cosine of two thumbnails measures layout rather than overall brightness."""
    import cv2

    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    return small - small.mean()


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass
class Thumbnail(Embedder):
    """Reads images; writes one vector per image: a joint HSV colour histogram (``bins``^3,
    L1-normalised, square rooted) next to a ``side`` x ``side`` colour thumbnail
    (zero-mean), each block L2-normalised. Training-free baseline for SChISM's sequencing
    (Sara Mousavi et al.), which uses ImageNet ResNet-50 features instead."""

    bins: int = 8
    side: int = 16

    def __post_init__(self):
        if self.bins < 2 or self.side < 2:
            raise ValueError("bins and side must be >= 2")

    def embed(self, samples) -> np.ndarray:
        rows = [np.concatenate([_unit(colour_histogram(s.image, self.bins)), _unit(thumbnail(s.image, self.side))])
                for s in samples]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.bins ** 3 + 3 * self.side ** 2),
                                                                       np.float32)


@dataclass
class CamFeatures(Embedder):
    """Reads images and a trained ``cam`` checkpoint (``cam_final.pth`` in the cam label
    set's ``work`` folder); writes the global average pool of the classifier's backbone
    features, one vector per image, as SChISM pools an ImageNet ResNet-50. Images are
    resized so that their longer side is ``size`` (0 = as they are)."""

    inputs: ClassVar[tuple[str, ...]] = ("checkpoint",)
    runtime: ClassVar[tuple[str, ...]] = ("device",)

    checkpoint: str | None = None
    size: int = 256
    device: str = "auto"

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("cam_features needs checkpoint=PATH (a cam label set's work/cam_final.pth)")
        if self.size < 0:
            raise ValueError("size must be >= 0")
        self._model = None

    def _load(self):
        from plabel_kit.toolkit.cam import load_cam_checkpoint as load_checkpoint
        from plabel_kit.toolkit.runtime import pick_device

        if self._model is None:
            self._model, _ = load_checkpoint(self.checkpoint, pick_device(self.device))
        return self._model

    def _prepared(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] resized so that the longer side is ``size`` (unchanged at 0)."""
        import cv2

        if not self.size:
            return image
        scale = self.size / max(image.shape[:2])
        shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

    def embed(self, samples) -> np.ndarray:
        import torch

        from plabel_kit.toolkit.inference import normalise

        model = self._load()
        device = next(model.parameters()).device
        images = [normalise(self._prepared(s.image)) for s in samples]
        rows: list = [None] * len(images)
        by_shape: dict = {}
        for k, image in enumerate(images):  # one forward pass per image size
            by_shape.setdefault(tuple(image.shape), []).append(k)
        with torch.no_grad():
            for indices in by_shape.values():
                batch = torch.stack([images[k] for k in indices]).to(device)
                pooled = model.features(batch).mean(dim=(2, 3)).float().cpu().numpy()
                for k, row in zip(indices, pooled):
                    rows[k] = row
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


@dataclass
class BackboneFeatures(Embedder):
    """Reads images and a local pretrained ResNet state dict (``pretrained``: torchvision,
    mmpretrain or mmseg layout, loaded as ``cam`` loads its ``pretrained``); writes the global
    average pool of the last stage, one vector per image (2048 values for ResNet-50), as
    SChISM (Sara Mousavi et al., github.com/saramsv/SChISM) embeds with an ImageNet
    ResNet-50. Images are resized to ``size`` x ``size`` (SChISM: 224) and normalised with
    ImageNet statistics; the backbone keeps its classification strides (output stride 32,
    7 x 7 at 224) and runs in eval mode, ``batch`` images per forward pass."""

    inputs: ClassVar[tuple[str, ...]] = ("pretrained",)
    runtime: ClassVar[tuple[str, ...]] = ("device", "batch")

    pretrained: str | None = None
    backbone: str = "resnet50"
    size: int = 224
    device: str = "auto"
    batch: int = 16

    def __post_init__(self):
        from pathlib import Path

        if not self.pretrained:
            raise ValueError("backbone needs pretrained=PATH (a local ResNet state dict, e.g. torchvision's "
                             "ImageNet resnet50 weights)")
        if not Path(self.pretrained).is_file():
            raise ValueError(f"pretrained {self.pretrained}: no such file")
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        from plabel_kit.toolkit.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} unknown (known: {', '.join(BACKBONES)})")
        self._model = None

    @property
    def channels(self) -> int:
        from plabel_kit.toolkit.backbones import BACKBONES

        return BACKBONES[self.backbone][1]

    def _load(self):
        """The backbone at output stride 32 (torchvision's and Keras's ResNet layout) with the
        weights of ``pretrained``; DataError naming the file when they do not fit it whole."""
        if self._model is not None:
            return self._model
        import pickle

        import mmseg.models  # noqa: F401  (fills mmseg's MODELS registry)
        from mmseg.registry import MODELS

        from plabel_kit import DataError
        from plabel_kit.toolkit.backbones import BACKBONES, load_pretrained
        from plabel_kit.toolkit.runtime import log, pick_device

        config = dict(BACKBONES[self.backbone][0], num_stages=4, out_indices=(3,), strides=(1, 2, 2, 2),
                      dilations=(1, 1, 1, 1), norm_cfg=dict(type="BN", requires_grad=False), norm_eval=True,
                      style="pytorch")
        model = MODELS.build(config)
        try:
            missing, _ = load_pretrained(model, self.pretrained, log=log)
        except ValueError as exc:  # stem or shapes of another architecture, not a dict
            message = str(exc).removeprefix(f"{self.pretrained}: ")
            raise DataError(f"cannot load as {self.backbone} weights: {message}", path=self.pretrained) from None
        except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # torch.load of something else
            raise DataError(f"not a torch checkpoint ({type(exc).__name__}: {exc})", path=self.pretrained) from None
        if missing:
            raise DataError(f"not {self.backbone} weights: {len(missing)} backbone keys missing (e.g. {missing[0]})",
                            path=self.pretrained)
        model.eval()  # mmseg's ResNet.train() returns None: no chaining
        self._model = model.to(pick_device(self.device))
        return self._model

    def _prepared(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] resized to ``size`` x ``size`` (SChISM's ``cv2.resize`` to 224)."""
        import cv2

        if image.shape[:2] == (self.size, self.size):
            return image
        shrink = max(image.shape[:2]) > self.size
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def embed(self, samples) -> np.ndarray:
        import torch

        from plabel_kit.toolkit.inference import normalise

        if not len(samples):
            return np.zeros((0, self.channels), np.float32)
        model = self._load()
        device = next(model.parameters()).device
        rows = []
        with torch.inference_mode():
            for start in range(0, len(samples), self.batch):
                batch = torch.stack([normalise(self._prepared(s.image)) for s in samples[start:start + self.batch]])
                features = model(batch.to(device))
                features = features[-1] if isinstance(features, (tuple, list)) else features
                rows.append(features.mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(rows).astype(np.float32)

    def close(self) -> None:
        self._model = None
