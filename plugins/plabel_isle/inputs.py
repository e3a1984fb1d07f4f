"""The input pseudo labels as the combiners see them: re-thresholded from score maps when
asked, gated by the image's tags, and normalised score planes for confidence rules."""
from __future__ import annotations

import numpy as np

from plabel_kit import DataError, PlabelError, PseudoLabel, Sample
from plabel_kit.arrays import resize_scores, scores_to_labels

from .ensemble import gate_by_tags, normalise_planes


def check_thresholds(thresholds, n_inputs: int, who: str) -> list[float | None]:
    """One threshold (or None) per input; None for all when ``thresholds`` is None."""
    if thresholds is None:
        return [None] * n_inputs
    if len(thresholds) != n_inputs:
        raise PlabelError(f"{who}: {len(thresholds)} threshold(s) given for {n_inputs} input label "
                          f"set(s); give one per --in (none = use the input's labels)")
    return list(thresholds)


def _check_keys(keys: np.ndarray, num_classes: int, sample: Sample, where: str):
    bad = [int(k) for k in keys if not 0 <= k < num_classes]
    if bad:
        raise DataError(f"score keys {bad} are not class ids of the {num_classes} classes",
                        path=where, image_id=sample.id)


def foreground_scores(pseudo: PseudoLabel, sample: Sample, num_classes: int, tags: bool,
                      where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalised foreground planes at the image's size, float32 [K, H, W], and their class
    ids int [K]; planes of untagged classes are dropped when ``tags``. None without scores.
    ``where`` names the input in errors (its label set, or its position)."""
    if pseudo.scores is None:
        return None
    _check_keys(pseudo.keys, num_classes, sample, where)
    keep = pseudo.keys != 0
    if tags:
        keep &= np.isin(pseudo.keys, sample.classes)
    size = pseudo.label.shape
    planes = resize_scores(pseudo.scores[keep], size) if keep.any() else np.zeros((0,) + size, np.float32)
    return normalise_planes(planes), pseudo.keys[keep]


def input_label(pseudo: PseudoLabel, sample: Sample, num_classes: int, threshold: float | None,
                tags: bool, where: str) -> np.ndarray:
    """uint8 [H, W]: the input's label, or with ``threshold`` its normalised foreground scores
    against a constant background plane (IRN's rule; a background plane it brings is
    replaced); untagged classes become background when ``tags``."""
    if threshold is None:
        label = pseudo.label
    else:
        scored = foreground_scores(pseudo, sample, num_classes, tags, where)
        if scored is None:
            raise DataError("a background threshold is set for this input, but it has no score "
                            "map for this image", path=where, image_id=sample.id)
        label = scores_to_labels(*scored, threshold)
    return gate_by_tags(label, sample.classes) if tags else label
