"""Merging a carried manual mask with an image's CAM labels (seed 000, Equation 1), pure.

All label maps are uint8 [H, W] class ids with 255 = ignore; 0 = background.
"""
from __future__ import annotations

import numpy as np

from plabel_kit.arrays import resize_scores
from plabel_kit.types import IGNORE

MERGES = ("paper", "confident", "none")


def is_class(label: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixel names a foreground class (not background 0, not ignore 255)."""
    return (label != 0) & (label != IGNORE)


def merge_paper(carried: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Equation 1: start from the carried mask; a pixel takes the CAM class where CAM
    assigns a class and the carried mask does not (carried 0 or 255)."""
    out = carried.copy()
    take = is_class(cam) & ~is_class(carried)
    out[take] = cam[take]
    return out


def score_of_label(cam: np.ndarray, scores: np.ndarray | None, keys: np.ndarray | None) -> np.ndarray:
    """float32 [H, W]: the normalised score of the class each CAM pixel is labelled with
    (scores float [K, h, w], resized to the label's size; keys int [K]); 0 where the class
    has no score plane; 1 on every labelled pixel when the label set has no scores."""
    if scores is None or keys is None:
        return np.ones(cam.shape, dtype=np.float32)
    scores = resize_scores(scores, cam.shape)
    score = np.zeros(cam.shape, dtype=np.float32)
    for plane, key in zip(scores, np.asarray(keys)):
        here = cam == key
        score[here] = plane[here]
    return score


def confident_cam(cam: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: ``cam`` labels whose ``score`` [H, W] reaches their class's threshold
    (``thresholds`` float [C] by class id; inf = the class never enters), 0 elsewhere."""
    limit = np.full(cam.shape, np.inf, dtype=np.float32)
    classes = is_class(cam)
    limit[classes] = np.asarray(thresholds, dtype=np.float32)[cam[classes]]
    return np.where(classes & (score >= limit), cam, 0).astype(np.uint8)


def precision_counts(cam: np.ndarray, score: np.ndarray, truth: np.ndarray, grid: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """For each class c and threshold t of ``grid`` [T]: (labelled int64 [C, T] = CAM pixels of
    class c with score >= t, correct int64 [C, T] = those the ``truth`` [H, W] also calls c).
    Truth 255 pixels are left out."""
    labelled = np.zeros((num_classes, len(grid)), dtype=np.int64)
    correct = np.zeros_like(labelled)
    judged = is_class(cam) & (truth != IGNORE)
    classes, scores, right = cam[judged], score[judged], cam[judged] == truth[judged]
    for k, t in enumerate(grid):
        passed = scores >= t
        labelled[:, k] = np.bincount(classes[passed], minlength=num_classes)[:num_classes]
        correct[:, k] = np.bincount(classes[passed & right], minlength=num_classes)[:num_classes]
    return labelled, correct


def class_thresholds(labelled: np.ndarray, correct: np.ndarray, grid: np.ndarray,
                     min_precision: float) -> np.ndarray:
    """float [C]: per class the lowest threshold of ``grid`` [T] at which the CAM's pixels
    are right at least ``min_precision`` of the time (counts [C, T] from
    :func:`precision_counts`); inf where no threshold reaches it; ``grid[0]`` where the
    class was never measured. Background (0) gets inf."""
    thresholds = np.full(labelled.shape[0], np.inf)
    for c in range(1, labelled.shape[0]):
        if labelled[c, 0] == 0:
            thresholds[c] = grid[0]
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            precise = (correct[c] / labelled[c]) >= min_precision
        precise &= labelled[c] > 0
        if precise.any():
            thresholds[c] = grid[int(np.argmax(precise))]
    return thresholds


def merge_confident(carried: np.ndarray, cam: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Equation 1 with only confident CAM pixels: those whose ``score`` [H, W] (see
    :func:`score_of_label`) reaches their class's threshold (float [C])."""
    return merge_paper(carried, confident_cam(cam, score, thresholds))


def merge(carried: np.ndarray, cam: np.ndarray, how: str, score: np.ndarray | None = None,
          thresholds: np.ndarray | None = None) -> np.ndarray:
    """Dispatch on ``how`` (paper | confident | none); ``none`` returns the carried mask;
    ``confident`` needs ``score`` and ``thresholds``."""
    if how == "paper":
        return merge_paper(carried, cam)
    if how == "confident":
        return merge_confident(carried, cam, score, thresholds)
    if how == "none":
        return carried.copy()
    raise ValueError(f"merge must be one of {', '.join(MERGES)}")
