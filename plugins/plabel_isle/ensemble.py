"""Pure array functions of the ensembles (no I/O). Shapes: S inputs, C dataset classes
(background = 0), K score planes, [H, W] image pixels; labels are uint8 with 255 = ignore."""
from __future__ import annotations

import numpy as np

from plabel_kit.types import IGNORE

OVERLAP_RULES = ("score", "confidence", "ignore")
TIE_RULES = ("ignore", "first")


def gate_by_tags(label: np.ndarray, tags) -> np.ndarray:
    """uint8 [H, W] -> uint8 [H, W]: foreground ids not among ``tags`` become background 0;
    255 and tagged ids are kept."""
    allowed = np.zeros(256, dtype=bool)
    allowed[[0, IGNORE, *tags]] = True
    out = label.copy()
    out[~allowed[label]] = 0
    return out


def normalise_planes(scores: np.ndarray) -> np.ndarray:
    """float [K, H, W] -> float32 [K, H, W]: negatives clipped to 0, each plane divided by its
    own maximum (CAM practice), so that sources of different scales compare; all-zero planes
    stay 0."""
    planes = np.maximum(np.asarray(scores, dtype=np.float32), 0)
    peak = planes.max(axis=(1, 2), initial=0)
    return planes / np.where(peak > 0, peak, 1)[:, None, None]


def class_overlap(label: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union (int64 [C] each) of a label map with ground truth,
    both uint8 [H, W]. Ground-truth 255 pixels are left out; a 255 prediction on a labelled
    pixel counts in that class's union (a miss), as in plabel_kit.metrics."""
    valid = gt != IGNORE
    g = gt[valid]
    p = label[valid]
    inter = np.bincount(g[p == g], minlength=num_classes)[:num_classes]
    truth = np.bincount(g, minlength=num_classes)[:num_classes]
    predicted = np.bincount(p[p != IGNORE], minlength=num_classes)[:num_classes]
    return inter.astype(np.int64), (truth + predicted - inter).astype(np.int64)


def claims_of(labels: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """bool [C, H, W]: pixel (y, x) is claimed by class c when c's chosen source (``chosen``
    int [C], -1 = none, entry 0 = background is never used) labels it c. labels uint8 [S, H, W]."""
    claims = np.zeros((len(chosen),) + labels.shape[1:], dtype=bool)
    for c in range(1, len(chosen)):
        if chosen[c] >= 0:
            claims[c] = labels[chosen[c]] == c
    return claims


def merge_claims(labels: np.ndarray, chosen: np.ndarray, priority: np.ndarray, rule: str,
                 confidence: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """ISLE's class-wise copy: every class takes its pixels from its chosen source.

    labels uint8 [S, H, W]; chosen int [C] (source per class, -1 = none); priority int [C],
    a permutation of 0..C-1 (higher wins a ``score`` contest); ``rule`` settles pixels two
    classes claim: ``score`` (higher priority), ``confidence`` (higher ``confidence`` float
    [C, H, W], row c = class c's normalised score in its chosen source; exact ties go by
    priority) or ``ignore`` (255). Unclaimed pixels are background, or 255 where every input
    is 255. Returns (uint8 [H, W], number of contested pixels). The output at a pixel is 0,
    255, or a class whose chosen source says that class there - never a sum of ids."""
    if rule not in OVERLAP_RULES:
        raise ValueError(f"overlap rule must be one of {OVERLAP_RULES}, not {rule!r}")
    claims = claims_of(labels, chosen)
    count = claims.sum(axis=0)
    out = np.zeros(labels.shape[1:], dtype=np.uint8)
    out[(labels == IGNORE).all(axis=0)] = IGNORE
    single = count == 1
    out[single] = claims[:, single].argmax(axis=0)
    contested = count > 1
    n_contested = int(contested.sum())
    if n_contested:
        if rule == "ignore":
            out[contested] = IGNORE
        else:
            candidates = claims[:, contested]  # [C, N]
            if rule == "confidence":
                if confidence is None:
                    raise ValueError("the confidence rule needs confidence maps")
                level = np.where(candidates, confidence[:, contested], -np.inf)
                candidates &= level == level.max(axis=0)
            ranked = np.where(candidates, np.asarray(priority)[:, None], -1)
            out[contested] = ranked.argmax(axis=0)
    return out, n_contested


def majority_vote(labels: np.ndarray, num_classes: int, ties: str = "ignore") -> tuple[np.ndarray, int]:
    """Pixel-wise majority of labels uint8 [S, H, W]; 255 votes do not count.

    A pixel nobody voted for stays 255. A tie between classes is 255 with ``ties='ignore'``;
    with ``ties='first'`` it goes to the tied class named by the earliest input.
    Returns (uint8 [H, W], number of tied pixels)."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, not {ties!r}")
    votes = np.stack([(labels == c).sum(axis=0) for c in range(num_classes)])  # [C, H, W]
    best = votes.max(axis=0)
    winners = (votes == best) & (best > 0)
    out = np.where(best > 0, votes.argmax(axis=0), IGNORE).astype(np.uint8)
    tied = winners.sum(axis=0) > 1
    if ties == "ignore":
        out[tied] = IGNORE
    else:
        for label in labels[::-1]:  # earliest input last, so it decides
            cast = np.minimum(label, num_classes - 1)[None].astype(np.int64)
            backs_a_winner = tied & (label != IGNORE) & np.take_along_axis(winners, cast, 0)[0]
            out[backs_a_winner] = label[backs_a_winner]
    return out, int(tied.sum())


def fuse_max(planes: list[np.ndarray], keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the maximum over inputs: planes float [K_i, H, W] with class ids keys [K_i]
    -> (float32 [K, H, W], sorted union of the keys [K])."""
    union = np.unique(np.concatenate([np.asarray(k, dtype=np.int64) for k in keys])) if keys \
        else np.zeros(0, np.int64)
    shape = planes[0].shape[1:] if planes else (0, 0)
    fused = np.zeros((len(union),) + tuple(shape), dtype=np.float32)
    for p, k in zip(planes, keys):
        for plane, key in zip(p, k):
            row = int(np.searchsorted(union, key))
            np.maximum(fused[row], plane, out=fused[row])
    return fused, union
