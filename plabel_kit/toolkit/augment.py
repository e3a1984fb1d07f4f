"""The seeded crop augmentation of IRN's training scripts (random long-side resize, horizontal
flip, random crop with zero padding), for images and, optionally, label maps aligned with them.

Deterministic given the ``rng`` (``numpy.random.Generator``): a trainer seeds it from (seed,
epoch, index) so that a resumed run draws what an unbroken one would. Every function draws in
the order of IRN's ``imutils`` (``random_resize_long``, ``random_lr_flip``, ``random_crop``,
https://github.com/jiwoon-ahn/irn): the long side, the flip, then the crop window (source
corner, then destination corner), so a caller that draws more afterwards (CSRM's colour
jitter) keeps its stream."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .inference import normalise


@dataclass(frozen=True)
class CropWindow:
    """Where a random ``size`` x ``size`` crop of an h x w image comes from (``top``, ``left``)
    and where it lands in the zero-padded output (``dst_top``, ``dst_left``); ``height`` x
    ``width`` = min(size, h) x min(size, w) pixels are copied."""

    top: int
    left: int
    dst_top: int
    dst_left: int
    height: int
    width: int
    size: int

    def cut(self, array: np.ndarray) -> np.ndarray:
        """The copied part of ``array`` [h, w, ...]: [height, width, ...]."""
        return array[self.top:self.top + self.height, self.left:self.left + self.width]

    def paste(self, piece: np.ndarray, fill) -> np.ndarray:
        """``piece`` [height, width, ...] on a ``fill`` canvas [size, size, ...] of its dtype."""
        out = np.full((self.size, self.size) + piece.shape[2:], fill, piece.dtype)
        out[self.dst_top:self.dst_top + self.height, self.dst_left:self.dst_left + self.width] = piece
        return out

    def paste_image(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 RGB pixels [height, width, 3] -> normalised float32 [3, size, size], zero
        (the ImageNet mean after normalisation) on the padding, as IRN pads."""
        out = torch.zeros(3, self.size, self.size)
        out[:, self.dst_top:self.dst_top + self.height, self.dst_left:self.dst_left + self.width] = \
            normalise(np.ascontiguousarray(pixels))
        return out

    def valid(self) -> torch.Tensor:
        """bool [size, size]: True where the output holds image pixels, False on padding."""
        out = torch.zeros(self.size, self.size, dtype=torch.bool)
        out[self.dst_top:self.dst_top + self.height, self.dst_left:self.dst_left + self.width] = True
        return out


def random_crop_window(rng, height: int, width: int, size: int) -> CropWindow:
    """A random ``size`` crop of an ``height`` x ``width`` image (IRN's ``random_crop``): four
    draws from ``rng``, the source corner (top, left), then the destination corner."""
    top, left = rng.integers(0, max(height - size, 0) + 1), rng.integers(0, max(width - size, 0) + 1)
    dst_top, dst_left = rng.integers(0, max(size - height, 0) + 1), rng.integers(0, max(size - width, 0) + 1)
    return CropWindow(int(top), int(left), int(dst_top), int(dst_left), min(size, height), min(size, width), size)


def random_resize_flip(image: np.ndarray, rng, resize_long, label: np.ndarray | None = None,
                       label_interpolation=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, label) with the longer side resized to a random length in ``resize_long``
    (inclusive; bilinear for the image), then both flipped left-right with probability 0.5.
    Two draws from ``rng``. image uint8 [H, W, 3]; label (optional) [H, W] or [H, W, C],
    resized with ``label_interpolation``: None = nearest at pixel centres
    (``cv2.INTER_NEAREST_EXACT``, which equals IRN's PIL nearest; ``INTER_NEAREST`` is half a
    pixel off). The flipped arrays are views."""
    import cv2

    height, width = image.shape[:2]
    scale = rng.integers(resize_long[0], resize_long[1] + 1) / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        interpolation = cv2.INTER_NEAREST_EXACT if label_interpolation is None else label_interpolation
        resized = cv2.resize(label, size, interpolation=interpolation)
        label = resized.reshape(resized.shape[:2] + label.shape[2:])  # cv2 drops a single channel
    if rng.random() < 0.5:
        image = image[:, ::-1]
        label = None if label is None else label[:, ::-1]
    return image, label


def random_resize_flip_crop(image: np.ndarray, rng, resize_long, crop: int) -> torch.Tensor:
    """image uint8 [H, W, 3] RGB -> normalised float32 [3, crop, crop]: the longer side resized
    to a random length in ``resize_long`` (inclusive), flipped with probability 0.5, then a
    random ``crop`` x ``crop`` window (zero-padded where the image is smaller, as IRN)."""
    image, _ = random_resize_flip(image, rng, resize_long)
    window = random_crop_window(rng, *image.shape[:2], crop)
    return window.paste_image(window.cut(image))


def random_resize_flip_crop_pair(image: np.ndarray, label: np.ndarray, rng, resize_long, crop: int, *, fill,
                                 label_interpolation=None) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`random_resize_flip_crop` of an image and a label map aligned with it, as IRN's
    and PSA's affinity training: -> (normalised float32 [3, crop, crop], label [crop, crop] or
    [crop, crop, C] of the label's dtype, ``fill`` on the padding). The label (uint8 [H, W], or
    planes [H, W, C]) is resized with ``label_interpolation`` (:func:`random_resize_flip`)."""
    image, label = random_resize_flip(image, rng, resize_long, label, label_interpolation)
    window = random_crop_window(rng, *label.shape[:2], crop)
    return window.paste_image(window.cut(image)), window.paste(window.cut(label), fill)
