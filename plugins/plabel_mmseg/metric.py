"""mIoU and frequency-weighted IoU as an mmseg metric (mmseg's IoUMetric has no fwIoU)."""
from __future__ import annotations

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from plabel_kit.metrics import confusion_matrix, scores_from_confusion


@METRICS.register_module()
class FwIoUMetric(BaseMetric):
    """Dataset-level confusion matrix -> ``mIoU``, ``fwIoU`` (seed 000's formula), ``aAcc``
    and ``IoU.<class>``, in percent as mmseg reports them; ground-truth 255 is ignored.

    The matrix and the scores are plabel_kit.metrics', so a segmenter's score here and
    ``plabel evaluate`` of its predicted label set agree."""

    default_prefix = ""

    def process(self, data_batch, data_samples):
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0).cpu().numpy()
            gt = sample["gt_sem_seg"]["data"].squeeze(0).cpu().numpy()
            self.results.append(confusion_matrix(gt, pred, num_classes))

    def compute_metrics(self, results):
        scores = scores_from_confusion(np.sum(results, axis=0))
        classes = self.dataset_meta["classes"]
        metrics = {"mIoU": 100 * scores["miou"], "fwIoU": 100 * scores["fwiou"],
                   "aAcc": 100 * scores["pixel_accuracy"]}
        metrics.update({f"IoU.{name}": 100 * float(iou) for name, iou in zip(classes, scores["iou"])})
        print_log("per-class IoU: " + ", ".join(f"{name} {100 * iou:.2f}"
                                                for name, iou in zip(classes, scores["iou"])),
                  logger="current")
        return metrics
