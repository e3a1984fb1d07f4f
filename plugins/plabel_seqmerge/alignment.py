"""Carrying an annotated image's mask onto another image of its sequence.

- ``none``: resize only (nearest), as the paper;
- ``homography``: features + RANSAC between the annotated image and the target;
- ``flow``: dense optical flow chained along the time-ordered sequence from the
  annotated image to the target, one step per pair of consecutive images;
- ``auto`` (chosen per sequence by the source): ``flow`` where consecutive images are close
  enough for flow to be trusted, else ``homography``.
Each falls back to the next simpler one when it fails (flow -> homography -> none).
Homographies are estimated at a working resolution (longer side <= ``work_size``), flow at
``flow_size``; masks are carried at full resolution.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, NamedTuple

import numpy as np

from .flow import carry_step, identity_coords, inside, sample, step_back
from .homography import HomographyParams, estimate_homography, grey, warp_mask

ALIGNMENTS = ("auto", "none", "homography", "flow")
FALLBACK = {"flow": "homography", "homography": "none"}
CUT, SIZE_CHANGE = "scene cut", "size change"


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


class Step(NamedTuple):
    """One flow step from an image to the next one of its sequence, at the images' full size."""

    coords: np.ndarray  # float32 [H, W, 2]: where each pixel of the next image lies in the current one
    consistent: np.ndarray  # bool [H, W]: forward and backward flow agree there (and it is in frame)
    share: float  # consistent.mean() at the working resolution
    motion: float  # median displacement of the next image's pixels / the longer side


class FlowTracker:
    """Masks carried along sequences by dense flow, one step per pair of consecutive images,
    memoised (least recently used first out).

    ``image_of(sequence_id, position)`` returns uint8 [H, W, 3] of a sequence's image. Flow
    is estimated with the longer side at most ``flow_size`` (0: full size) and applied at
    full size. ``carry(sequence_id, anchor, position, mask)`` chains the annotated image's
    mask from ``anchor`` to ``position`` through every image in between (see
    :mod:`.flow`); ``check`` turns on the forward-backward trust test, after which untrusted
    pixels keep the label at their position. The chain breaks (None from there on)
    where consecutive images differ in size and, with ``min_consistent`` > 0, where fewer
    than that share of a step's pixels pass the trust test (a scene cut). Breaks are
    counted by reason in ``breaks`` and reported to ``on_break(sequence_id, anchor,
    position, reason)``."""

    def __init__(self, image_of: Callable[[str, int], np.ndarray], flow_size: int, check: bool = False,
                 min_consistent: float = 0.0, capacity: int = 64,
                 on_break: Callable[[str, int, int, str], None] | None = None):
        self.image_of = image_of
        self.on_break = on_break
        self.flow_size = flow_size
        self.check = check
        self.min_consistent = min_consistent
        self.capacity = capacity
        self._labels: OrderedDict = OrderedDict()
        self._steps: OrderedDict = OrderedDict()
        self._greys: OrderedDict = OrderedDict()
        self._measures: dict = {}  # step key -> (share, motion), kept after the step is evicted
        self._broken: dict = {}  # (sequence, anchor, position) where a chain broke -> reason

    def _remember(self, store: OrderedDict, key, value, capacity: int | None = None):
        store[key] = value
        store.move_to_end(key)
        while len(store) > (capacity or self.capacity):
            store.popitem(last=False)

    def small_grey(self, sequence_id: str, position: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(grey uint8 [h, w] at the flow's working resolution, full size (H, W)) of one image."""
        key = (sequence_id, position)
        if key not in self._greys:
            image = self.image_of(sequence_id, position)
            small = shrink(grey(image), work_scale(image.shape[:2], self.flow_size))
            self._remember(self._greys, key, (small, image.shape[:2]), 8)
        self._greys.move_to_end(key)
        return self._greys[key]

    def step(self, sequence_id: str, previous: int, position: int) -> Step | None:
        """The flow step from the image at ``previous`` to the one at ``position`` (any two
        images of the sequence, usually neighbours); None when their sizes differ."""
        key = (sequence_id, previous, position)
        if key in self._steps:
            self._steps.move_to_end(key)
            return self._steps[key]
        current, current_size = self.small_grey(sequence_id, previous)
        following, following_size = self.small_grey(sequence_id, position)
        if current_size != following_size:
            found = None
        else:
            coords, consistent = step_back(current, following)
            moved = np.linalg.norm(coords - identity_coords(following.shape), axis=-1)
            share, motion = float(consistent.mean()), float(np.median(moved)) / max(following.shape)
            found = Step(*full_resolution(coords, consistent, following_size), share, motion)
        self._measures[key] = (0.0, float("inf")) if found is None else (found.share, found.motion)
        self._remember(self._steps, key, found, 4)  # full-size flow fields are large
        return found

    def measures(self, sequence_id: str, previous: int, position: int) -> tuple[float, float]:
        """(share of pixels passing the trust test, median displacement / longer side) of a
        step; (0, inf) when the sizes differ."""
        key = (sequence_id, previous, position)
        if key not in self._measures:
            self.step(sequence_id, previous, position)
        return self._measures[key]

    def typical(self, sequence_id: str, length: int, steps: int = 16) -> tuple[float, float]:
        """Medians of :meth:`measures` over up to ``steps`` steps between consecutive images,
        spread evenly over a sequence of ``length`` images ((1, 0) for a single image)."""
        if length < 2:
            return 1.0, 0.0
        starts = np.unique(np.linspace(0, length - 2, min(steps, length - 1)).round().astype(int))
        found = np.array([self.measures(sequence_id, int(k), int(k) + 1) for k in starts])
        return float(np.median(found[:, 0])), float(np.median(found[:, 1]))

    def carry(self, sequence_id: str, anchor: int, position: int, mask: np.ndarray) -> np.ndarray | None:
        """uint8 [H, W]: ``mask`` of the image at ``anchor`` chained onto the image at
        ``position``, or None when the chain broke on the way."""
        if mask.shape != tuple(self.small_grey(sequence_id, anchor)[1]):
            return None
        direction = 1 if position >= anchor else -1
        start, label = anchor, mask
        for known in range(position, anchor, -direction):  # nearest memoised link
            key = (sequence_id, anchor, known)
            if key in self._labels:
                start, label = known, self._labels[key]
                self._labels.move_to_end(key)
                break
        for following in range(start + direction, position + direction, direction):
            if label is not None:
                label = self._extend(sequence_id, anchor, following - direction, following, label)
            self._remember(self._labels, (sequence_id, anchor, following), label)
        return label

    def _extend(self, sequence_id: str, anchor: int, previous: int, position: int,
                label: np.ndarray) -> np.ndarray | None:
        """The label carried onto ``previous`` moved one step on, or None where the chain breaks."""
        step = self.step(sequence_id, previous, position)
        reason = SIZE_CHANGE if step is None else CUT if step.share < self.min_consistent else None
        if reason is not None:
            self._broken[(sequence_id, anchor, position)] = reason
            if self.on_break is not None:
                self.on_break(sequence_id, anchor, position, reason)
            return None
        keep = ~step.consistent & inside(step.coords, label.shape) if self.check else None
        return carry_step(label, step.coords, keep)

    def breaks(self) -> dict[str, int]:
        """Chains broken so far, by reason."""
        return dict(Counter(self._broken.values()))
