"""Trivial label sources: the floor every real method must clear, and the oracle.

- ``background``: every pixel background.
- ``whole_image``: every pixel the image's one tagged class (background if untagged;
  255 where several classes are tagged, since nothing says which pixel is which).
- ``ground_truth``: the dataset's own masks (upper bound; stands in for an annotator).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plabel_kit import DataError, LabelSource, PseudoLabel, hookimpl
from plabel_kit.types import IGNORE


@dataclass
class Background(LabelSource):
    """Reads image sizes; writes all-background labels. No paper: the trivial floor."""

    batch_size = 16

    def predict(self, samples):
        return [PseudoLabel(np.zeros(s.image.shape[:2], np.uint8)) for s in samples]


@dataclass
class WholeImage(LabelSource):
    """Reads image-level tags; labels the whole image with its single tag.

    ``multi`` decides images with several tags: ``ignore`` (255) or ``first`` (lowest id)."""

    multi: str = "ignore"
    batch_size = 16

    def __post_init__(self):
        if self.multi not in ("ignore", "first"):
            raise ValueError(f"multi must be 'ignore' or 'first', not {self.multi!r}")

    def predict(self, samples):
        out = []
        for s in samples:
            if not s.classes:
                value = 0
            elif len(s.classes) == 1 or self.multi == "first":
                value = s.classes[0]
            else:
                value = IGNORE
            out.append(PseudoLabel(np.full(s.image.shape[:2], value, np.uint8)))
        return out


@dataclass
class GroundTruth(LabelSource):
    """Reads the dataset's masks; writes them unchanged (oracle / simulated annotator)."""

    batch_size = 16

    def predict(self, samples):
        missing = [s for s in samples if s.mask is None]
        if missing:
            raise DataError("ground_truth needs a mask and this image has none",
                            path=missing[0].image_path, image_id=missing[0].id)
        return [PseudoLabel(s.mask.copy()) for s in samples]


@hookimpl
def register_label_sources(register):
    register(Background, name="background")
    register(WholeImage, name="whole_image")
    register(GroundTruth, name="ground_truth")
