"""Dense optical flow (OpenCV DIS) between consecutive images, and carrying a label map
from one image to the next with it.

A mask is chained frame by frame (the plain flow chain of mask propagation): for every
pixel of the next image, the flow from the next image back to the current one says where
it was; the pixel takes the label carried there (nearest). Pixels whose match lies outside
the current frame show content entering the view and get background. With the trust test
on, pixels whose forward and backward flows disagree (occlusions, mismatches) keep the
label carried at their position instead.

Flow: Kroeger et al., "Fast optical flow using dense inverse search", ECCV 2016, as
``cv2.DISOpticalFlow`` (medium preset). Trust test: Sundaram et al., "Dense point
trajectories by GPU-accelerated large displacement optical flow", ECCV 2010.
"""
from __future__ import annotations

import numpy as np


def _dis():
    import cv2

    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def dense_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float32 [H, W, 2]: for each pixel p of ``source``, the displacement to its match in
    ``target`` (both uint8 [H, W] grey, same size)."""
    return _dis().calc(source, target, None)


def identity_coords(size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 2]: each pixel's own (x, y)."""
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def sample(field: np.ndarray, coords: np.ndarray, nearest: bool = False, border=0) -> np.ndarray:
    """``field`` [h, w(, C)] read at float (x, y) ``coords`` [H, W, 2]: bilinear, or nearest
    for labels; positions outside the field read ``border``."""
    import cv2

    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(field, coords[..., 0], coords[..., 1], interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def inside(coords: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: ``coords`` [H, W, 2] (x, y) lie within a frame of ``size`` (H, W)."""
    return ((coords[..., 0] >= 0) & (coords[..., 0] <= size[1] - 1)
            & (coords[..., 1] >= 0) & (coords[..., 1] <= size[0] - 1))


def step_back(current: np.ndarray, following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of ``following`` lies in ``current`` (grey uint8 [H, W], same size):
    (coords float32 [H, W, 2] (x, y), consistent bool [H, W]). Consistent: the backward flow
    b (following -> current) and the forward flow f read at its end nearly cancel,
    |b + f|^2 <= 0.01 (|b|^2 + |f|^2) + 0.5 (Sundaram et al., ECCV 2010), and the end lies
    in the frame."""
    backward = dense_flow(following, current)
    forward = sample(dense_flow(current, following), identity_coords(following.shape) + backward)
    coords = identity_coords(following.shape) + backward
    mismatch = np.sum((backward + forward) ** 2, axis=-1)
    tolerance = 0.01 * (np.sum(backward ** 2, axis=-1) + np.sum(forward ** 2, axis=-1)) + 0.5
    return coords, (mismatch <= tolerance) & inside(coords, current.shape)


def carry_step(label: np.ndarray, coords: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W]: the label map carried onto the current image (``label`` [H, W]) moved
    onto the next one: read at ``coords`` [H, W, 2] (where each next-image pixel lies in the
    current image; nearest); pixels whose match lies outside the current frame are content
    entering the view and get background (0). Where ``keep`` [H, W] is true (pixels failing
    the trust test, when it is on), the label at the same position is kept instead."""
    moved = sample(label, coords, nearest=True, border=0)
    if keep is not None:
        moved = np.where(keep, label, moved)
    return moved.astype(np.uint8)
