"""Data exchanged between components (shapes as in DESIGN.md).

- image:  uint8 [H, W, 3] RGB
- scores: float32 [K, H/stride, W/stride], ``keys`` int [K] = dataset class id of each plane
          (0 = background when present)
- label:  uint8 [H, W], class ids, 255 = ignore / uncertain
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

IGNORE = 255


@dataclass
class Sample:
    """One image of a dataset. ``image`` and ``mask`` are loaded on first access."""

    id: str
    classes: tuple[int, ...]  # image-level foreground class ids (background implied)
    image_path: str
    mask_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _load_image: Callable[["Sample"], np.ndarray] | None = field(default=None, repr=False)
    _load_mask: Callable[["Sample"], np.ndarray | None] | None = field(default=None, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)
    _mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray:
        """uint8 [H, W, 3] RGB."""
        if self._image is None:
            self._image = self._load_image(self)
        return self._image

    @property
    def mask(self) -> np.ndarray | None:
        """uint8 [H, W] ground truth class ids with 255 = ignore, or None."""
        if self._mask is None and self.mask_path is not None:
            self._mask = self._load_mask(self)
        return self._mask

    @property
    def subject(self) -> str | None:
        return self.meta.get("subject")

    @property
    def time(self):
        return self.meta.get("time")


@dataclass
class PseudoLabel:
    """A pseudo label for one image: a label map and, when the producer has them, scores."""

    label: np.ndarray  # uint8 [H, W], 255 = ignore
    scores: np.ndarray | None = None  # float32 [K, h, w]
    keys: np.ndarray | None = None  # int [K]
    stride: int = 1  # scores are at 1/stride of the label's resolution

    def __post_init__(self):
        if self.label.dtype != np.uint8 or self.label.ndim != 2:
            raise ValueError(f"label must be uint8 [H, W], got {self.label.dtype} {self.label.shape}")
        if (self.scores is None) != (self.keys is None):
            raise ValueError("scores and keys come together")
        if self.scores is not None:
            self.keys = np.asarray(self.keys, dtype=np.int64).reshape(-1)
            if self.scores.ndim != 3 or self.scores.shape[0] != len(self.keys):
                raise ValueError(f"scores must be [K, h, w] with K = len(keys) = {len(self.keys)}, "
                                 f"got {self.scores.shape}")
