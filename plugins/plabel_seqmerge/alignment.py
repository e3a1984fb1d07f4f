"""Carrying an annotated image's mask onto another image of its sequence.

- ``none``: resize only (nearest), as the paper;
- ``homography``: features + RANSAC between the annotated image and the target;
- ``flow``: dense optical flow chained along the time-ordered sequence from the
  annotated image to the target.
Each falls back to the next simpler one when it fails (flow -> homography -> none).
Estimation runs at a working resolution (longer side <= ``work_size``); masks are carried
at full resolution.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np

from .flow import carry_along, chain, identity_coords, sample, step_back
from .homography import HomographyParams, estimate_homography, grey, warp_mask

ALIGNMENTS = ("none", "homography", "flow")
FALLBACK = {"flow": "homography", "homography": "none"}


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w] -> [H, W] (``size`` = (H, W)), nearest neighbour."""
    import cv2

    if mask.shape == tuple(size):
        return mask.copy()
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def work_scale(size: tuple[int, int], work_size: int) -> float:
    """Factor (<= 1) that brings the longer side of ``size`` (H, W) to ``work_size``."""
    return min(1.0, work_size / max(size)) if work_size > 0 else 1.0


def shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 [H, W(, 3)] resized by ``scale`` (area averaging); unchanged at 1."""
    import cv2

    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def _scaling(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def _pixel_scales(full: tuple[int, int], small: tuple[int, int]) -> tuple[float, float]:
    return small[1] / full[1], small[0] / full[0]


def carry_homography(annotated: np.ndarray, mask: np.ndarray, target: np.ndarray,
                     params: HomographyParams, work_size: int) -> np.ndarray | None:
    """uint8 [H, W] mask of ``annotated`` (uint8 [h, w, 3], mask [h, w]) warped onto
    ``target`` (uint8 [H, W, 3]); 255 outside the annotated frame; None when no plausible
    homography is found."""
    small_a = shrink(annotated, work_scale(annotated.shape[:2], work_size))
    small_t = shrink(target, work_scale(target.shape[:2], work_size))
    matrix = estimate_homography(small_a, small_t, params)
    if matrix is None:
        return None
    to_small = _scaling(*_pixel_scales(annotated.shape[:2], small_a.shape[:2]))
    from_small = np.linalg.inv(_scaling(*_pixel_scales(target.shape[:2], small_t.shape[:2])))
    return warp_mask(mask, from_small @ matrix @ to_small, target.shape[:2])


def full_resolution(coords: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A chain computed at working resolution (coords [h, w, 2] into the annotated image's
    working frame, valid [h, w]) brought to full size ``size`` (H, W), which the target
    and the annotated image share: coords [H, W, 2] into the annotated image, valid [H, W]."""
    if coords.shape[:2] == tuple(size):
        return coords, valid
    sx, sy = _pixel_scales(size, coords.shape[:2])
    grid = identity_coords(size)  # pixel centres: x_small = (x_full + 0.5) * s - 0.5
    positions = np.stack([(grid[..., 0] + 0.5) * sx - 0.5, (grid[..., 1] + 0.5) * sy - 0.5], axis=-1)
    up = sample(coords, positions.astype(np.float32), border=-1.0)
    ok = sample(valid.astype(np.uint8), positions.astype(np.float32), nearest=True).astype(bool)
    full = np.stack([(up[..., 0] + 0.5) / sx - 0.5, (up[..., 1] + 0.5) / sy - 0.5], axis=-1)
    return full.astype(np.float32), ok


class FlowTracker:
    """Chains of dense flow along sequences, memoised (least recently used first out).

    ``image_of(sequence_id, position)`` returns uint8 [H, W, 3] of a sequence's image;
    ``track(sequence_id, anchor, position)`` returns the chain (coords, valid) from the
    annotated image at ``anchor`` to the image at ``position`` at working resolution, or
    None when the chain broke on the way: images of different sizes, or fewer than
    ``min_tracked`` of the pixels still trusted."""

    def __init__(self, image_of: Callable[[str, int], np.ndarray], work_size: int, min_tracked: float,
                 capacity: int = 32):
        self.image_of = image_of
        self.work_size = work_size
        self.min_tracked = min_tracked
        self.capacity = capacity
        self._chains: OrderedDict = OrderedDict()
        self._greys: OrderedDict = OrderedDict()

    def _remember(self, store: OrderedDict, key, value):
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.capacity:
            store.popitem(last=False)

    def small_grey(self, sequence_id: str, position: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(grey uint8 [h, w] at working resolution, full size (H, W)) of one image."""
        key = (sequence_id, position)
        if key not in self._greys:
            image = self.image_of(sequence_id, position)
            small = shrink(grey(image), work_scale(image.shape[:2], self.work_size))
            self._remember(self._greys, key, (small, image.shape[:2]))
        self._greys.move_to_end(key)
        return self._greys[key]

    def track(self, sequence_id: str, anchor: int, position: int):
        direction = 1 if position >= anchor else -1
        start, state = anchor, None
        for known in range(position, anchor - direction, -direction):  # nearest memoised link
            if (sequence_id, anchor, known) in self._chains:
                start, state = known, self._chains[(sequence_id, anchor, known)]
                self._chains.move_to_end((sequence_id, anchor, known))
                break
        else:
            small, _ = self.small_grey(sequence_id, anchor)
            state = (identity_coords(small.shape), np.ones(small.shape, dtype=bool))
            self._remember(self._chains, (sequence_id, anchor, anchor), state)
        for following in range(start + direction, position + direction, direction):
            if state is not None:
                state = self._step(sequence_id, anchor, following - direction, following, state)
            self._remember(self._chains, (sequence_id, anchor, following), state)
        return state

    def _step(self, sequence_id: str, anchor: int, previous: int, position: int, state):
        """The chain extended from the image at ``previous`` to the one at ``position``."""
        current, current_size = self.small_grey(sequence_id, previous)
        following, following_size = self.small_grey(sequence_id, position)
        if current_size != following_size:
            return None
        step, consistent = step_back(current, following)
        coords, valid = chain(*state, step, consistent, self.small_grey(sequence_id, anchor)[0].shape)
        return (coords, valid) if valid.mean() >= self.min_tracked else None

    def carry(self, sequence_id: str, anchor: int, position: int, mask: np.ndarray) -> np.ndarray | None:
        """uint8 [H, W] ``mask`` of the annotated image carried onto the image at
        ``position`` (255 where untrusted), or None when the chain broke."""
        chained = self.track(sequence_id, anchor, position)
        if chained is None:
            return None
        _, size = self.small_grey(sequence_id, position)
        if mask.shape != tuple(size):
            return None
        coords, valid = full_resolution(*chained, size)
        return carry_along(mask, coords, valid)
