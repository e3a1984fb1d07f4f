"""Pure array functions shared by every stage (no I/O)."""
from __future__ import annotations

import numpy as np

from .types import IGNORE


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: uint8 [n, 3]; entry 255 is VOC's void colour."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    if n > IGNORE:
        palette[IGNORE] = (224, 224, 192)
    return palette


def resize_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float [K, h, w] to [K, H, W] with ``size`` = (H, W)."""
    if scores.shape[1:] == tuple(size):
        return scores.astype(np.float32, copy=False)
    import cv2

    height, width = size
    return np.stack([cv2.resize(np.asarray(p, dtype=np.float32), (width, height),
                                interpolation=cv2.INTER_LINEAR) for p in scores])


def foreground_planes(scores: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop a background plane (key 0) if present: returns fg scores [K', H, W] and keys [K']."""
    keys = np.asarray(keys)
    keep = keys != 0
    return scores[keep], keys[keep]


def scores_to_labels(scores: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Background threshold as IRN: a constant plane ``threshold`` in front of the
    foreground planes, then argmax. scores float [K, H, W] (a key-0 plane is ignored),
    keys int [K]; returns uint8 [H, W] class ids (0 where background wins)."""
    fg, fg_keys = foreground_planes(scores, keys)
    if len(fg_keys) == 0:
        return np.zeros(scores.shape[1:], dtype=np.uint8)
    winner = np.argmax(fg, axis=0)
    best = np.take_along_axis(fg, winner[None], axis=0)[0]
    labels = np.asarray(fg_keys, dtype=np.uint8)[winner]
    # ties go to background, as argmax over [t, fg...] picks the first maximum
    labels[best <= threshold] = 0
    return labels


def uncertain_band(fg_labels: np.ndarray, bg_labels: np.ndarray) -> np.ndarray:
    """IRN's ``cam_to_ir_label`` combination: fg where the high-threshold labels say a class,
    0 where the low-threshold labels also say background, 255 elsewhere. uint8 [H, W] in/out."""
    out = fg_labels.copy()
    out[(fg_labels == 0) & (bg_labels != 0)] = IGNORE
    return out
