"""Dense optical flow (OpenCV DIS) chained along a time-ordered sequence.

A chain carries coordinates: for every pixel of the current image, where it lies in the
annotated image (``coords`` float32 [H, W, 2], (x, y)) and whether that is still trusted
(``valid`` bool [H, W]). Each step to the next image composes the chain with the flow
from the next image back to the current one; pixels failing the forward-backward check
(occlusions, mismatches) or leaving the frame stop being trusted.
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


def chain(coords: np.ndarray, valid: np.ndarray, step: np.ndarray, consistent: np.ndarray,
          annotated_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Compose a chain (coords [h, w, 2] into the annotated image, valid [h, w] of the
    current image) with one step (coords [H, W, 2] into the current image, consistent
    [H, W] of the next image): returns the next image's (coords [H, W, 2], valid [H, W])."""
    composed = sample(coords, step, border=-1.0)
    still = sample(valid.astype(np.uint8), step, nearest=True).astype(bool)
    return composed, consistent & still & inside(composed, annotated_size)


def carry_along(mask: np.ndarray, coords: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: the annotated image's ``mask`` [h, w] read at ``coords`` [H, W, 2]
    (nearest), 255 where the chain is not trusted."""
    carried = sample(mask, coords, nearest=True, border=255)
    carried[~valid] = 255
    return carried
