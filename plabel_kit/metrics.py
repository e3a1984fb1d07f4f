"""Segmentation metrics from a dataset-level int64 confusion matrix.

``confusion[i, j]`` counts pixels of ground-truth class i predicted as class j; the extra
last column counts pixels the prediction left unlabelled (255), which cost recall but
are no class's false positive. Ground-truth 255 pixels are ignored.
"""
from __future__ import annotations

import numpy as np

from .types import IGNORE

SWEEP_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 17))  # 0.05 .. 0.80


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C+1] for uint8 gt and pred [H, W]; pred ids >= C other than 255 are an error."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and g.max() >= num_classes:
        raise ValueError(f"ground truth holds class id {int(g.max())} >= {num_classes} classes")
    unlabelled = p == IGNORE
    if (p[~unlabelled] >= num_classes).any():
        raise ValueError(f"prediction holds class id {int(p[~unlabelled].max())} >= {num_classes} classes")
    p[unlabelled] = num_classes
    counts = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).astype(np.int64)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """Per-class IoU, precision, recall; mIoU; frequency-weighted IoU; pixel accuracy.

    With n_ij = pixels of class i predicted as j and t_i = sum_j n_ij (all GT pixels of
    class i, unlabelled predictions included): IoU_i = n_ii / (t_i + sum_j n_ji - n_ii);
    mIoU = mean over classes present in GT or prediction; fwIoU = (sum_k t_k)^-1 sum_i t_i IoU_i
    (seed 000, after Long et al.). Classes absent from both have IoU NaN and are skipped.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    num_classes = confusion.shape[0]
    tp = np.diag(confusion[:, :num_classes]).astype(np.float64)
    gt_total = confusion.sum(axis=1).astype(np.float64)  # t_i
    pred_total = confusion[:, :num_classes].sum(axis=0).astype(np.float64)  # sum_j n_ji
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(pred_total > 0, tp / pred_total, np.nan)
        recall = np.where(gt_total > 0, tp / gt_total, np.nan)
    present = ~np.isnan(iou)
    total = gt_total.sum()
    return {
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "fwiou": float((gt_total[present] * iou[present]).sum() / total) if total else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "gt_pixels": gt_total.astype(np.int64),
    }
