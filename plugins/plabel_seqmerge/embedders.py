"""Embedders for sequencing: ``thumbnail`` (training-free) and ``cam_features`` (a trained
``cam`` classifier's backbone, global average pooled, as SChISM pools ResNet-50)."""
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
