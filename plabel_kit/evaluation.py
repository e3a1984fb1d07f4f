"""Scoring label sets against a dataset's ground truth (I/O around :mod:`metrics`)."""
from __future__ import annotations

import math

import numpy as np

from .arrays import foreground_planes, resize_scores
from .datasets import Dataset
from .errors import DataError, PlabelError
from .labelset import LabelSet, dataset_identity, identity_differences
from .metrics import SWEEP_THRESHOLDS, confusion_matrix, scores_from_confusion
from .progress import track


def evaluate(dataset: Dataset, labels: LabelSet, *, sweep: bool = False,
             thresholds=SWEEP_THRESHOLDS, progress: bool = True, strict: bool = False) -> dict:
    """Dataset-level scores of ``labels`` on every image that has ground truth.

    With ``sweep``, the label set's score maps are also thresholded at each background
    threshold (IRN's rule) and the best threshold is reported. ``other_images`` lists the
    scored ids whose image differs from the one the label set was made from (its manifest's
    identity); ``strict`` refuses to score then."""
    if labels.classes != dataset.classes:
        raise PlabelError(f"{labels.path}: classes {labels.classes} differ from the dataset's "
                          f"{dataset.classes}")
    other_images = image_mismatches(dataset, labels)
    if strict and other_images:
        more = f" (and {len(other_images) - 1} more)" if len(other_images) > 1 else ""
        raise PlabelError(f"{labels.path} was made from other images than {dataset.source}: "
                          f"{other_images[0]}{more}; its scores would not be about this dataset")
    n = dataset.num_classes
    confusion = np.zeros((n, n + 1), dtype=np.int64)
    sweep_confusion = np.zeros((len(thresholds), n, n + 1), dtype=np.int64) if sweep else None
    evaluated, missing, no_gt = 0, [], 0
    for sample in track(dataset.samples, "evaluating", enabled=progress):
        if sample.mask_path is None:
            no_gt += 1
            continue
        if sample.id not in labels:
            missing.append(sample.id)
            continue
        gt = sample.mask
        pred = labels.read_label(sample.id, size=gt.shape)
        confusion += confusion_matrix(gt, pred, n)
        if sweep:
            scored = labels.read_scores(sample.id)
            if scored is None:
                raise DataError("--sweep needs score maps, and this image has none",
                                path=labels.scores_path(sample.id), image_id=sample.id)
            scores, keys, _ = scored
            fg, fg_keys = foreground_planes(resize_scores(scores, gt.shape), keys)
            if len(fg_keys):
                winner = np.argmax(fg, axis=0)
                top = np.take_along_axis(fg, winner[None], axis=0)[0]
                winner_ids = fg_keys.astype(np.uint8)[winner]
            for k, t in enumerate(thresholds):
                swept = (np.where(top > t, winner_ids, 0).astype(np.uint8) if len(fg_keys)
                         else np.zeros(gt.shape, np.uint8))
                sweep_confusion[k] += confusion_matrix(gt, swept, n)
        evaluated += 1
        sample._image = sample._mask = None
    if evaluated == 0:
        raise PlabelError(f"nothing to evaluate: {len(missing)} image(s) lack a label in "
                          f"{labels.path} and {no_gt} lack ground truth in {dataset.source}")
    result = _summary(scores_from_confusion(confusion), dataset.classes)
    selected_on = set((labels.manifest.get("summary") or {}).get("labelled", {}).get("ids") or ())
    result["scored_on_selection_images"] = len(selected_on & set(dataset.ids) - set(missing))
    result.update({"label_set": str(labels.path), "dataset": dataset.describe(),
                   "images": evaluated, "missing_labels": missing, "without_ground_truth": no_gt,
                   "other_images": other_images,
                   "confusion": confusion.tolist()})
    if sweep:
        mious = [scores_from_confusion(c)["miou"] for c in sweep_confusion]
        best = int(np.nanargmax(mious))
        result["sweep"] = {"thresholds": list(thresholds), "miou": mious,
                           "best_threshold": thresholds[best], "best_miou": mious[best],
                           "best": _summary(scores_from_confusion(sweep_confusion[best]),
                                            dataset.classes)}
    return result


def image_mismatches(dataset: Dataset, labels: LabelSet) -> list[str]:
    """One line per id to be scored (it has ground truth and a label) whose image is not the
    one the label set was made from. Empty when the set records no images (written before
    manifests did, or imported) or an image is unreadable here (its mask still scores)."""
    recorded = (labels.manifest.get("dataset") or {}).get("identity")
    if not recorded:
        return []
    ids = [s.id for s in dataset.samples if s.mask_path is not None and s.id in recorded and s.id in labels]
    return identity_differences(recorded, dataset_identity(dataset, ids, missing_ok=True))


def _clean(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _summary(scores: dict, classes: list[str]) -> dict:
    return {
        "classes": [{"name": name, "iou": _clean(scores["iou"][i]),
                     "precision": _clean(scores["precision"][i]),
                     "recall": _clean(scores["recall"][i]), "gt_pixels": int(scores["gt_pixels"][i])}
                    for i, name in enumerate(classes)],
        "miou": _clean(scores["miou"]), "fwiou": _clean(scores["fwiou"]),
        "pixel_accuracy": _clean(scores["pixel_accuracy"]),
    }


def render_table(result: dict, title: str | None = None):
    """A rich table: one row per class, then mIoU / fwIoU / pixel accuracy."""
    from rich.table import Table

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    table = Table(title=title or f"{result['label_set']} ({result['images']} images)")
    for column in ("class", "IoU", "precision", "recall", "GT pixels"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result["classes"]:
        table.add_row(row["name"], pct(row["iou"]), pct(row["precision"]), pct(row["recall"]),
                      str(row["gt_pixels"]))
    table.add_section()
    table.add_row("mIoU", pct(result["miou"]), "", "", "")
    table.add_row("fwIoU", pct(result["fwiou"]), "", "", "")
    table.add_row("pixel accuracy", pct(result["pixel_accuracy"]), "", "", "")
    return table
