"""PSA's AffinityNet training labels (Ahn & Kwak, CVPR 2018; ``infer_cls.py`` and
``voc12/data.py: VOC12AffDataset`` of ``jiwoon-ahn/psa``).

Per image, the CAM planes (each divided by its max) get PSA's background plane
(1 - max)^alpha twice, at a low alpha (4: a strong background) and a high alpha (32: a weak
one), and each stack goes through the dense CRF's softmax recipe (``plabel_kit.toolkit.crf``).
A training crop's two CRF marginal stacks are averaged over each 8 x 8 cell; a cell is the
low-alpha argmax class where that is a foreground class (confident foreground), background
where the high-alpha argmax is background (confident background), 255 otherwise and where
the crop is padding.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from plabel_kit import DataError
from plabel_kit.datasets import load_image
from plabel_kit.labelset import write_atomic
from plabel_kit.toolkit.augment import random_resize_flip_crop_pair

from .data import PairItems
from .pairs import IGNORE, pair_labels

#: PSA's ``infer_cls.py`` defaults (``--low_alpha``, ``--high_alpha``)
LOW_ALPHA, HIGH_ALPHA = 4.0, 32.0


def psa_crf_planes(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, low_alpha: float = LOW_ALPHA,
                   high_alpha: float = HIGH_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """PSA's ``_crf_with_alpha`` at both alphas. image uint8 [H, W, 3]; scores float [K, H, W]
    (CAM planes; a key-0 plane is dropped), keys int [K] -> (marginals float32 [2, n, H, W]:
    low alpha, high alpha; keys int64 [n] = 0 followed by the foreground keys)."""
    from plabel_kit.toolkit.crf import crf_scores, psa_background
    from plabel_kit.arrays import foreground_planes

    foreground, fg_keys = foreground_planes(np.asarray(scores, np.float32), np.asarray(keys, np.int64))
    image = np.ascontiguousarray(image, dtype=np.uint8)
    stacks = [crf_scores(image, np.concatenate([psa_background(foreground, alpha), foreground]).astype(np.float32))
              for alpha in (low_alpha, high_alpha)]
    return np.stack(stacks), np.concatenate([[0], fg_keys]).astype(np.int64)


def psa_cell_labels(planes: np.ndarray, keys: np.ndarray, stride: int) -> np.ndarray:
    """PSA's label of each ``stride`` x ``stride`` cell of a training crop. planes float
    [S, S, 2n]: the low-alpha CRF marginals, then the high-alpha ones (0 where the crop is
    padding); keys int [n] (keys[0] = 0). Returns uint8 [S / stride, S / stride]: the
    low-alpha class where it is foreground, 0 where the high-alpha argmax is background,
    255 elsewhere and in cells that are all padding (``VOC12AffDataset.__getitem__``)."""
    size, width, channels = planes.shape
    n = len(keys)
    if channels != 2 * n or size % stride or width % stride:
        raise ValueError(f"planes {list(planes.shape)} do not hold 2 x {n} planes on a multiple of {stride}")
    pooled = planes.reshape(size // stride, stride, width // stride, stride, channels).mean(axis=(1, 3))
    low, high = pooled[..., :n].argmax(axis=-1), pooled[..., n:].argmax(axis=-1)
    label = np.asarray(keys, np.uint8)[low]
    label[low == 0] = IGNORE
    label[high == 0] = 0
    label[pooled.max(axis=-1) < 1e-5] = IGNORE
    return label


class PsaLabels:
    """The two CRF marginal stacks of ``psa_crf_planes`` for the images of a CAM label set
    (its score maps, resized to the image)."""

    def __init__(self, label_set, low_alpha: float = LOW_ALPHA, high_alpha: float = HIGH_ALPHA):
        self.label_set, self.alphas = label_set, (float(low_alpha), float(high_alpha))

    def __call__(self, image_id: str, image: np.ndarray, image_path=None) -> tuple[np.ndarray, np.ndarray]:
        from plabel_kit.arrays import resize_scores

        if image_id not in self.label_set:
            raise DataError(f"no label for this image in {self.label_set.path}", path=image_path, image_id=image_id)
        scores = self.label_set.read_scores(image_id)
        if scores is None:
            raise DataError(f"{self.label_set.path} has no scores for this image: PSA's AffinityNet labels are "
                            f"made from CAM scores (or use affinity_labels=irn)",
                            path=self.label_set.label_path(image_id), image_id=image_id)
        planes = resize_scores(scores[0].astype(np.float32), image.shape[:2])
        return psa_crf_planes(image, planes, scores[1], *self.alphas)


class PsaPairItems(PairItems):
    """``PairItems`` with PSA's labels: (image [3, S, S], pair labels uint8 [3, D, S/8, S/8]).
    The CRF marginals are cached per image in ``cache`` (``<id>.npz``, uint8 = marginal x 255)
    and go through the same random resize (bilinear), flip and crop (zero-padded) as the
    image before the cells are pooled."""

    def crf_planes(self, sample, image) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [2n, H, W] marginals x 255, int64 keys [n]), computed once per image."""
        path = self.cache / f"{sample.id}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return data["planes"], data["keys"]
        marginals, keys = self.labels(sample.id, image, sample.image_path)
        planes = np.round(np.clip(marginals, 0, 1) * 255).astype(np.uint8).reshape(-1, *marginals.shape[2:])
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, planes=planes, keys=keys)
        write_atomic(path, buffer.getvalue())  # a concurrent rank or a kill never leaves half a file
        return planes, keys

    def __getitem__(self, index):
        import cv2

        sample = self.samples[index]
        image = load_image(sample.image_path, sample.id)
        planes, keys = self.crf_planes(sample, image)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        hwc = np.ascontiguousarray(np.moveaxis(planes, 0, -1), dtype=np.float32) / 255.0
        tensor, hwc = random_resize_flip_crop_pair(image, hwc, rng, self.resize_long, self.crop, fill=0.0,
                                                   label_interpolation=cv2.INTER_LINEAR)
        return tensor, torch.from_numpy(pair_labels(psa_cell_labels(hwc, keys, self.stride), self.radius))


def psa_pair_items(dataset, label_set, cache: Path, **kwargs) -> PsaPairItems:
    """``PsaPairItems`` over ``dataset`` with the labels of the CAM set ``label_set``;
    ``low_alpha`` / ``high_alpha`` (PSA's 4 / 32) and ``PairItems``' keywords."""
    alphas = kwargs.pop("low_alpha", LOW_ALPHA), kwargs.pop("high_alpha", HIGH_ALPHA)
    return PsaPairItems(dataset, PsaLabels(label_set, *alphas), cache, **kwargs)
