"""IR labels from a CAM label set, and augmented (image, pair labels) training items."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plabel_kit import DataError
from plabel_kit.datasets import Dataset, load_image
from plabel_kit.labelset import write_atomic
from plabel_kit.toolkit.augment import random_resize_flip_crop_pair

from .pairs import IGNORE, pair_labels


def cam_checkpoint(label_set) -> Path | None:
    """The CAM checkpoint that made ``label_set``: ``<set>/work/cam_final.pth`` or the
    producer's ``checkpoint``; None when the set is no CAM set or the file is gone."""
    producer = label_set.producer
    if producer.get("type") != "cam":
        return None
    for path in (Path(label_set.path) / "work" / "cam_final.pth", producer.get("config", {}).get("checkpoint")):
        if path and Path(path).is_file():
            return Path(path)
    return None


class IrLabels:
    """IRN's training labels (255 = unsure) per image: the CAM set's labels when it was made
    with ``mode=ir_labels``, else ``plabel_kit.toolkit.cam.ir_labels`` of its scores (thresholds
    0.30 / 0.05 + CRF, or the set's own ``fg_threshold`` / ``bg_threshold``)."""

    def __init__(self, label_set):
        self.label_set = label_set
        config = label_set.producer.get("config", {})
        self.stored = label_set.producer.get("type") == "cam" and config.get("mode") == "ir_labels"
        self.thresholds = (config.get("fg_threshold", 0.30), config.get("bg_threshold", 0.05))

    def __call__(self, image_id: str, image: np.ndarray, image_path=None) -> np.ndarray:
        """uint8 [H, W] for the image uint8 [H, W, 3]."""
        from plabel_kit.arrays import resize_scores

        if image_id not in self.label_set:
            raise DataError(f"no label for this image in {self.label_set.path}", path=image_path, image_id=image_id)
        size = image.shape[:2]
        if self.stored:
            return self.label_set.read_label(image_id, size)
        scores = self.label_set.read_scores(image_id)
        if scores is None:
            raise DataError(f"{self.label_set.path} has no scores for this image and is no ir_labels CAM set",
                            path=self.label_set.label_path(image_id), image_id=image_id)
        from plabel_kit.toolkit.cam import ir_labels

        planes, keys = resize_scores(scores[0].astype(np.float32), size), np.asarray(scores[1], np.int64)
        return ir_labels(image, planes, keys, *self.thresholds)


class PairItems(torch.utils.data.Dataset):
    """(image [3, S, S], pair labels uint8 [3, D, S/stride, S/stride]) per image for one
    epoch's draws; the draws depend only on (seed, epoch, index), so training resumes
    exactly. IR labels computed from scores are cached as PNGs in ``cache``."""

    def __init__(self, dataset: Dataset, labels: IrLabels, cache: Path, *, stride: int, radius: int,
                 crop: int, resize_long, seed: int):
        if crop % stride:
            raise ValueError(f"crop_size {crop} must be a multiple of {stride}")
        self.samples, self.labels, self.cache = dataset.samples, labels, Path(cache)
        self.stride, self.radius, self.crop, self.resize_long, self.seed = stride, radius, crop, resize_long, seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def ir_label(self, sample, image) -> np.ndarray:
        import cv2

        if self.labels.stored:
            return self.labels(sample.id, image, sample.image_path)
        path = self.cache / f"{sample.id}.png"
        if path.is_file():
            return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label = self.labels(sample.id, image, sample.image_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, cv2.imencode(".png", label)[1].tobytes())  # a concurrent rank never reads half
        return label

    def __getitem__(self, index):
        sample = self.samples[index]
        image = load_image(sample.image_path, sample.id)
        label = self.ir_label(sample, image)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        tensor, label = random_resize_flip_crop_pair(image, label, rng, self.resize_long, self.crop, fill=IGNORE)
        return tensor, torch.from_numpy(pair_labels(cell_centres(label, self.stride), self.radius))


def cell_centres(label: np.ndarray, stride: int) -> np.ndarray:
    """The label at the centre of each ``stride`` x ``stride`` cell (pixel stride // 2 of the
    cell): IRN's ``pil_rescale(label, 1 / stride, 0)``, PIL's nearest resampling, which
    samples at (i + 0.5) * stride. ``cv2.INTER_NEAREST`` would take each cell's top-left
    pixel instead. uint8 [H, W] with H, W multiples of ``stride`` -> [H / stride, W / stride]."""
    return np.ascontiguousarray(label[stride // 2::stride, stride // 2::stride])
